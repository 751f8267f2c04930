"""Run a real daemon (or any aiohttp app) on 127.0.0.1 in a background thread,
so synchronous SDK clients can talk to it over real HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from switchman_daemon.app import Daemon
from switchman_daemon.config import load_config


class LoopThread:
    """An asyncio loop in a daemon thread; ``run(coro)`` executes on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class RunningDaemon:
    def __init__(self, tmp: Path, overrides: dict[str, Any] | None = None,
                 config_path: Path | None = None, host: str = "127.0.0.1") -> None:
        ov: dict[str, Any] = {"sim": {"time_scale": 0.0}}
        if overrides:
            for k, v in overrides.items():
                ov[k] = {**ov.get(k, {}), **v} if isinstance(v, dict) else v
        self.config = load_config(config_path, overrides=ov)
        self.daemon = Daemon(self.config, tmp / "data")
        self.lt = LoopThread()
        try:
            self.port = self.lt.run(self.daemon.start(host, 0))
        except BaseException:
            self.lt.run(self.daemon.stop())
            self.lt.close()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ctx(self) -> Any:
        return self.daemon.ctx

    def ledger_rows(self, settle_s: float = 3.0) -> list[dict[str, Any]]:
        """Ledger rows once in-flight requests have closed: a client can read the
        last byte a moment before the daemon's handler records the close."""
        deadline = time.monotonic() + settle_s
        while True:
            self.ctx.ledger.flush()
            rows = self.ctx.ledger.rows()
            if all(r["status"] != "open" for r in rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)

    def stop(self) -> None:
        self.lt.run(self.daemon.stop())
        self.lt.close()


class RunningApp:
    """Any aiohttp application (fake upstreams, the simulator) on 127.0.0.1."""

    def __init__(self, make_app: Callable[[], web.Application]) -> None:
        self.lt = LoopThread()

        async def start() -> tuple[web.AppRunner, int]:
            runner = web.AppRunner(make_app(), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner, runner.addresses[0][1]

        self.runner, self.port = self.lt.run(start())
        self.app = self.runner.app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.lt.run(self.runner.cleanup())
        self.lt.close()
