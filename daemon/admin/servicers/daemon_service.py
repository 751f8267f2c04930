"""DaemonService: status (the health probe), config export/import, shutdown."""

from __future__ import annotations

import asyncio
import os
import time
import tomllib
from typing import TYPE_CHECKING, Any

from switchman_daemon import __version__
from switchman_daemon.config import ConfigError
from switchman_daemon.ledger import queries
from switchman_daemon.managed_config import (
    RESTART_SECTIONS,
    ConfigEditor,
    changed_sections,
    export_toml,
)
from switchman_shared.proto_gen.switchman.v1 import daemon_pb2 as pb
from switchman_shared.proto_gen.switchman.v1 import daemon_pb2_grpc

if TYPE_CHECKING:
    from switchman_daemon.app import Daemon

_ACTIVE_WINDOW_S = 300.0


class DaemonServicer(daemon_pb2_grpc.DaemonServiceServicer):
    def __init__(self, daemon: Daemon, editor: ConfigEditor) -> None:
        self.daemon = daemon
        self.editor = editor

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusReply:
        d = self.daemon
        assert d.ctx is not None
        ctx = d.ctx
        active = await asyncio.to_thread(queries.active_sessions, ctx.ledger.engine,
                                         time.time() - _ACTIVE_WINDOW_S)
        host = ctx.config.daemon.host
        return pb.StatusReply(
            version=__version__, started_at=ctx.started_at,
            uptime_s=time.time() - ctx.started_at,
            proxy_url=f"http://{host}:{d.port}", providers=sorted(ctx.upstreams),
            models=len(ctx.registry.visible()), sessions_active=active,
            local_open=ctx.config.daemon.local_open, data_dir=str(d.data_dir),
            pid=os.getpid())

    async def ExportConfig(self, request: pb.ExportConfigRequest, context: Any
                           ) -> pb.ExportConfigReply:
        return pb.ExportConfigReply(toml=export_toml(self.editor.config))

    async def ImportConfig(self, request: pb.ImportConfigRequest, context: Any
                           ) -> pb.ImportConfigReply:
        try:
            data = tomllib.loads(request.toml)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"invalid TOML: {e}") from None
        old = self.editor.config
        new = await self.editor.change(data, dry_run=request.dry_run)
        changed = changed_sections(old, new)
        return pb.ImportConfigReply(
            changed=changed, restart_required=any(s in RESTART_SECTIONS for s in changed))

    async def Shutdown(self, request: pb.ShutdownRequest, context: Any) -> pb.ShutdownReply:
        # after this reply is sent: the stop event ends serve_forever
        asyncio.get_running_loop().call_later(0.1, self.daemon.request_shutdown)
        return pb.ShutdownReply()
