"""The floor for a Python proxy: aiohttp server + one pooled aiohttp ClientSession,
body forwarded as bytes, streamed responses relayed chunk by chunk.

Run: python passthrough.py UPSTREAM_BASE [--port 0]; prints ``READY <port>``.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

UP = web.AppKey("up", aiohttp.ClientSession)
BASE = web.AppKey("base", str)


async def handle(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    up = request.app[UP]
    async with up.post(request.app[BASE] + request.path, data=body,
                       headers={"content-type": "application/json"}) as u:
        ct = u.headers.get("content-type", "application/json")
        if not ct.startswith("text/event-stream"):
            return web.Response(status=u.status, body=await u.read(),
                                headers={"content-type": ct})
        resp = web.StreamResponse(status=u.status,
                                  headers={"content-type": ct, "cache-control": "no-cache"})
        await resp.prepare(request)
        async for chunk in u.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def main(base: str, port: int) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[BASE] = base.rstrip("/")
    app[UP] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                    skip_auto_headers=("User-Agent",))
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    asyncio.run(main(a.base, a.port))
