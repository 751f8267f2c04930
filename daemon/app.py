"""Daemon assembly: config -> registry, router, upstreams, ledger, simulator ->
one aiohttp application, and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from switchman_daemon import paths
from switchman_daemon.admin.server import AdminServer
from switchman_daemon.budgets import Budgets
from switchman_daemon.config import ConfigError
from switchman_daemon.errors import ApiError
from switchman_daemon.jobs import JobRunner, start_jobs
from switchman_daemon.keepalive_runner import KeepAliveRunner
from switchman_daemon.ledger import Ledger
from switchman_daemon.ledger_addon import LedgerAddon
from switchman_daemon.logs import AccessLogAddon, new_request_id, request_id
from switchman_daemon.metrics import METRICS, Metrics, metrics_handler
from switchman_daemon.models import ModelRegistry
from switchman_daemon.providers.upstream import Upstream, make_session
from switchman_daemon.proxy.flow import Addon, Flow
from switchman_daemon.proxy.gate import BudgetAddon, Gate
from switchman_daemon.proxy.handlers import CTX, add_routes, guess_format, refuse
from switchman_daemon.proxy.origin import BrowserGuard, add_cors_headers, guarded
from switchman_daemon.proxy.relay import Relay
from switchman_daemon.rollups import Rollups
from switchman_daemon.routing.observer import RoutingObserver
from switchman_daemon.routing.router import Router
from switchman_daemon.savings import SavingsAddon
from switchman_daemon.stats import StatsHub
from switchman_daemon.teamkeys import TeamKeys
from switchman_shared.catalog import catalog_version, load_catalog
from switchman_shared.config_schema import Config, ProviderConfig

log = logging.getLogger("switchman.daemon")


def _base_url(pc: ProviderConfig, sim_base: str | None) -> str | None:
    """Where a provider lives: its URL, or the built-in simulator's (None when
    the simulator is off). The OpenAI SDK convention puts /v1 in base URLs."""
    if pc.base_url != "sim":
        return pc.base_url
    if sim_base is None:
        return None
    return sim_base if pc.kind == "anthropic" else sim_base + "/v1"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """A server TLS context from a PEM cert chain and key, or None for plain HTTP."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise ConfigError("[daemon] tls_cert and tls_key must be set together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.path.expanduser(cert), os.path.expanduser(key))
    except (OSError, ssl.SSLError) as e:
        # the message names the files, never their contents
        raise ConfigError(f"cannot load TLS cert/key ({cert}, {key}): {e}") from None
    return ctx


def _local_tz() -> str:
    """The machine's IANA zone name (charts bucket days at local midnight)."""
    try:
        link = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in link:
            return link.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    return os.environ.get("TZ") or "UTC"


@dataclass
class DaemonContext:
    """Everything a request handler needs, built once at start."""

    config: Config
    registry: ModelRegistry
    router: Router
    upstreams: dict[str, Upstream]
    ledger: Ledger
    gate: Gate
    teamkeys: TeamKeys
    budgets: Budgets
    stats: StatsHub
    addons: list[Addon] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=time.time)
    relay: Relay = field(init=False)

    def __post_init__(self) -> None:
        self.relay = Relay(self)

    @property
    def body_limit(self) -> int:
        return int(self.config.daemon.max_body_mb * 1024 * 1024)

    def open_flow(self, flow: Flow) -> None:
        for a in self.addons:
            try:
                a.flow_opened(flow)
            except Exception:
                log.exception("addon %s failed on open", type(a).__name__)

    def close_flow(self, flow: Flow) -> None:
        for a in self.addons:
            try:
                a.flow_closed(flow)
            except Exception:
                log.exception("addon %s failed on close", type(a).__name__)


class Daemon:
    """The running daemon. ``await start()`` binds the port; ``await stop()`` drains."""

    def __init__(self, config: Config, data_dir: Path | None = None, *,
                 admin: bool = True) -> None:
        self.config = config
        self.data_dir = paths.data_dir(data_dir)
        self.ctx: DaemonContext | None = None
        self._admin_enabled = admin
        self.admin: AdminServer | None = None
        # Set by serve_forever; the admin Shutdown call ends the process through it.
        self.on_shutdown_request: Callable[[], None] | None = None
        self._retired: set[aiohttp.ClientSession] = set()
        self._retired_tasks: set[asyncio.Future[None]] = set()
        self._runner: web.AppRunner | None = None
        self._sim_runner: web.AppRunner | None = None
        self.port: int | None = None
        self.sim_port: int | None = None
        self.jobs: JobRunner | None = None
        self.rollups: Rollups | None = None
        self.keepalive: KeepAliveRunner | None = None

    async def _start_sim(self) -> str:
        from switchman_daemon.sim import create_sim_app

        app = create_sim_app(time_scale=self.config.sim.time_scale)
        self._sim_runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._sim_runner.setup()
        site = web.TCPSite(self._sim_runner, "127.0.0.1", self.config.sim.port)
        await site.start()
        self.sim_port = self._sim_runner.addresses[0][1]
        return f"http://127.0.0.1:{self.sim_port}"

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        cfg = self.config
        tls = _tls_context(cfg.daemon.tls_cert, cfg.daemon.tls_key)  # fail before binding
        sim_base: str | None = None
        if cfg.sim.enabled and any(p.base_url == "sim" for p in cfg.providers.values()):
            sim_base = await self._start_sim()
        upstreams: dict[str, Upstream] = {}
        for name, pc in cfg.providers.items():
            base = _base_url(pc, sim_base)
            if base is not None:
                upstreams[name] = Upstream(name, pc, base, make_session(pc, cfg.daemon))
        registry = ModelRegistry(cfg)
        owner = paths.instance_id(self.data_dir)
        ledger = Ledger(cfg.ledger.url or paths.ledger_url(self.data_dir), owner=owner)
        recovered = ledger.recover_interrupted()
        if recovered:
            log.warning("marked %d request(s) left open by a previous run as interrupted",
                        recovered)
        ledger.start()
        listen_host = host or cfg.daemon.host
        if cfg.daemon.local_open and not _is_loopback(listen_host):
            raise ConfigError(
                f"refusing to listen on {listen_host} in local-open mode: anyone on the "
                "network could spend your budget. Set [daemon] local_open = false (team "
                "keys required) or bind to 127.0.0.1.")
        teamkeys = TeamKeys(ledger.engine)
        budgets = Budgets(ledger.engine, owner=owner,  # shared (in the DB) unless SQLite
                          journal=ledger.hold)  # estimates survive a crash in the ledger
        stats = StatsHub()
        ctx = self.ctx = DaemonContext(cfg, registry, Router(cfg, registry), upstreams, ledger,
                                       gate=Gate(teamkeys, budgets, cfg.daemon.local_open),
                                       teamkeys=teamkeys, budgets=budgets, stats=stats)
        # close-hook order matters: savings and budgets read the finished flow,
        # the routing observer consumes the body, the ledger and stats record all
        # keep-alive after the observer: it reads the prefix chain the observer built
        self.keepalive = KeepAliveRunner(ctx)
        ctx.addons += [SavingsAddon(lambda: ctx.router), RoutingObserver(lambda: ctx.router),
                       self.keepalive,
                       BudgetAddon(budgets), LedgerAddon(ledger), stats,
                       ctx.metrics, AccessLogAddon()]
        self.rollups = Rollups(ledger.engine, tz=_local_tz())
        self._catalog_version = catalog_version()
        self.jobs = start_jobs(ledger.engine, budgets, rollups=self.rollups, teamkeys=teamkeys,
                               cache_expiry=lambda: ctx.router.tracker.sweep(),
                               price_refresh=self.refresh_prices, owner=owner)

        def refuse_browser(request: web.Request, err: ApiError) -> web.StreamResponse:
            rid = new_request_id()
            request_id.set(rid)
            return refuse(ctx, guess_format(request), err, rid, time.perf_counter(),
                          kind="browser_origin")

        guard = BrowserGuard(cfg.daemon.allowed_origins, check_host=cfg.daemon.local_open)
        app = web.Application(
            client_max_size=self.ctx.body_limit + 1024,
        )
        app[CTX] = self.ctx
        app[METRICS] = ctx.metrics
        # the guard wraps every route, unknown paths and /metrics included
        add_routes(app, lambda h: guarded(guard, refuse_browser, h),
                   extra={"/metrics": metrics_handler})
        if guard.allowed:
            app.on_response_prepare.append(add_cors_headers)
        if tls is None and not _is_loopback(listen_host):
            log.warning(
                "serving plain HTTP on non-loopback address %s: team keys and prompts cross "
                "the network unencrypted. Set [daemon] tls_cert/tls_key, or bind 127.0.0.1 "
                "behind a TLS-terminating reverse proxy (see README, Security)", listen_host)
        # handler_cancellation: a client that goes away cancels its handler, which
        # closes the upstream request instead of letting it run to the end.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, auto_decompress=False
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or cfg.daemon.host,
                           cfg.daemon.port if port is None else port, backlog=1024,
                           ssl_context=tls)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.keepalive.start()  # idles unless [routing] keepalive is on
        if self._admin_enabled:
            self.admin = AdminServer(self)
            await self.admin.start()
        log.info("switchman listening on %s://%s:%s (%d models, providers: %s)",
                 "https" if tls else "http", host or cfg.daemon.host, self.port,
                 len(registry.models),
                 ", ".join(sorted(upstreams)))
        return self.port

    async def apply_config(self, cfg: Config) -> None:
        """Swap in a changed config while serving: a new registry and router;
        upstream sessions kept for unchanged providers, opened for new or
        changed ones, closed for removed ones. Daemon/sim/ledger settings need
        a restart."""
        ctx = self.ctx
        assert ctx is not None
        registry = ModelRegistry(cfg)  # raises ValueError before anything changes
        # the engine's learned state (caches, sessions, latency) survives a config change
        old_router = ctx.router
        router = Router(cfg, registry, tracker=old_router.tracker, latency=old_router.latency,
                        quality=old_router.quality)
        if self.sim_port is None and cfg.sim.enabled and any(
                p.base_url == "sim" for p in cfg.providers.values()):
            await self._start_sim()
        sim_base = f"http://127.0.0.1:{self.sim_port}" if self.sim_port else None
        old = ctx.upstreams
        upstreams: dict[str, Upstream] = {}
        for name, pc in cfg.providers.items():
            prev = old.get(name)
            if prev is not None and prev.config == pc:
                upstreams[name] = prev
                continue
            base = _base_url(pc, sim_base)
            if base is not None:
                upstreams[name] = Upstream(name, pc, base, make_session(pc, cfg.daemon))
        # one assignment each, no await between them: handlers never see a mix
        self.config = ctx.config = cfg
        ctx.registry, ctx.router, ctx.upstreams = registry, router, upstreams
        for name, up in old.items():
            if upstreams.get(name) is not up:
                # Closing a session cuts its in-flight streams; retire it and
                # close it once those can have finished (or at stop()).
                self._retired.add(up.session)
                asyncio.get_running_loop().call_later(
                    cfg.daemon.upstream_read_timeout_s, self._close_retired, up.session)

    def _close_retired(self, session: aiohttp.ClientSession) -> None:
        if session in self._retired:
            self._retired.discard(session)
            task = asyncio.ensure_future(session.close())
            self._retired_tasks.add(task)
            task.add_done_callback(self._retired_tasks.discard)

    def request_shutdown(self) -> None:
        if self.on_shutdown_request is not None:
            self.on_shutdown_request()

    async def refresh_prices(self) -> bool:
        """Re-read the shipped price catalog (an upgrade may have replaced it);
        when its version changed, rebuild the registry so new prices apply."""
        load_catalog.cache_clear()
        version = catalog_version()
        if version == self._catalog_version or self.ctx is None:
            return False
        log.info("price catalog changed (%s -> %s); reloading model prices",
                 self._catalog_version, version)
        self._catalog_version = version
        await self.apply_config(self.ctx.config)
        return True

    async def stop(self) -> None:
        if self.keepalive is not None:
            await self.keepalive.stop()
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        for session in list(self._retired):
            await session.close()
        self._retired.clear()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.jobs is not None:
            self.jobs.shutdown()
            self.jobs = None
        if self.ctx is not None:
            self.ctx.teamkeys.flush_touches()
        if self.ctx is not None:
            for up in self.ctx.upstreams.values():
                await up.session.close()
            await asyncio.to_thread(self.ctx.budgets.close)  # drain settles, then the engine
            self.ctx.ledger.stop()
        if self._sim_runner is not None:
            await self._sim_runner.cleanup()


def tune_gc() -> None:
    """Fewer, cheaper cyclic collections for a long-running proxy: the objects
    built at start-up (config, catalog, aiohttp, gRPC, the quality model) are
    moved out of the collector's sight, and the young generation may grow
    further before a pass. Requests free their objects by reference counting;
    the default threshold (700) ran a collection every few requests and cost
    about 5% of the per-request CPU (tests/bench/bench_proxy.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the daemon's main coroutine on uvloop where it is installed (libuv's
    loop: ~10% more requests per core, tests/bench), else asyncio's own loop.
    SWITCHMAN_EVENT_LOOP=asyncio opts out."""
    if os.environ.get("SWITCHMAN_EVENT_LOOP", "auto") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


async def serve_forever(daemon: Daemon, host: str | None, port: int | None) -> None:
    stop = asyncio.Event()
    daemon.on_shutdown_request = stop.set
    await daemon.start(host, port)
    tune_gc()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await daemon.stop()
