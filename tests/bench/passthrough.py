"""The floor for a Python proxy: aiohttp server + one pooled aiohttp ClientSession,
body forwarded as bytes, streamed responses relayed chunk by chunk.

With ``--floor DB``, also the least bookkeeping a router must do per request:
parse the JSON body (the model field decides the route), read usage from a
non-streamed answer, and write one row per request to a SQLite WAL ledger from
a batching writer thread. That is the "feature floor" subject of
bench_proxy.py: what the targets leave for routing, budgets and stats.

Run: python passthrough.py UPSTREAM_BASE [--port 0] [--floor DB]; prints ``READY <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import sqlite3
import threading
import time

import aiohttp
import orjson
from aiohttp import web

UP = web.AppKey("up", aiohttp.ClientSession)
BASE = web.AppKey("base", str)
LEDGER = web.AppKey("ledger", queue.SimpleQueue)


def ledger_writer(path: str, q: queue.SimpleQueue) -> None:
    db = sqlite3.connect(path, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, started_at REAL, "
               "ended_at REAL, model TEXT, status INTEGER, input_tokens INTEGER, "
               "output_tokens INTEGER, latency_ms REAL)")
    while True:
        rows = [q.get()]
        time.sleep(0.05)  # batch like the daemon's writer
        while not q.empty():
            rows.append(q.get_nowait())
        db.executemany("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?)", rows)
        db.commit()


async def handle(request: web.Request) -> web.StreamResponse:
    t0 = time.time()
    body = await request.read()
    ledger = request.app.get(LEDGER)
    model = orjson.loads(body).get("model") if ledger is not None else None
    up = request.app[UP]
    async with up.post(request.app[BASE] + request.path, data=body,
                       headers={"content-type": "application/json"}) as u:
        ct = u.headers.get("content-type", "application/json")
        if not ct.startswith("text/event-stream"):
            data = await u.read()
            if ledger is not None:
                usage = orjson.loads(data).get("usage") or {}
                t1 = time.time()
                ledger.put((os.urandom(16).hex(), t0, t1, model, u.status,
                            usage.get("prompt_tokens") or usage.get("input_tokens") or 0,
                            usage.get("completion_tokens") or usage.get("output_tokens") or 0,
                            (t1 - t0) * 1000.0))
            return web.Response(status=u.status, body=data, headers={"content-type": ct})
        resp = web.StreamResponse(status=u.status,
                                  headers={"content-type": ct, "cache-control": "no-cache"})
        await resp.prepare(request)
        async for chunk in u.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        if ledger is not None:
            t1 = time.time()
            ledger.put((os.urandom(16).hex(), t0, t1, model, u.status, 0, 0, (t1 - t0) * 1000.0))
        return resp


async def main(base: str, port: int, floor: str | None) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[BASE] = base.rstrip("/")
    if floor:
        q: queue.SimpleQueue = queue.SimpleQueue()
        app[LEDGER] = q
        threading.Thread(target=ledger_writer, args=(floor, q), daemon=True).start()
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
    ap.add_argument("--floor", default=None, help="SQLite ledger path: the feature floor")
    a = ap.parse_args()
    try:  # the daemon's own loop (switchman_daemon.app.run_loop): same footing
        import uvloop
    except ImportError:
        asyncio.run(main(a.base, a.port, a.floor))
    else:
        uvloop.run(main(a.base, a.port, a.floor))
