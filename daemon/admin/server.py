"""The admin gRPC server: grpc.aio in the daemon's own event loop.

Transport: a Unix socket ``<data_dir>/admin.sock`` (0600) where the platform
has AF_UNIX and the path fits in sockaddr_un, else 127.0.0.1 on a random port.
Either way ``<data_dir>/admin.json`` records {transport, address, pid} for
clients, and ``<data_dir>/admin.token`` (0600, created once per install) holds
the bearer token every call must present.

Health: there is no grpc.health.v1 service (it would add the
grpcio-health-checking dependency for one probe); ``DaemonService.Status`` is
the health probe.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from grpc import aio

from switchman_daemon.admin.auth import AdminInterceptor
from switchman_daemon.admin.servicers import register_all
from switchman_shared.admin_discovery import ENDPOINT_FILE, SOCKET_FILE, TOKEN_FILE

if TYPE_CHECKING:
    from switchman_daemon.app import Daemon

log = logging.getLogger("switchman.admin")

_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 104 (macOS) / 108 (Linux) bytes


def load_or_create_token(data_dir: Path) -> str:
    """The per-install admin token; created 0600 on first use, reused afterwards."""
    path = data_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text("utf-8").strip()
        if token:
            _chmod_private(path)
            return token
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    _chmod_private(path)
    return token


def _chmod_private(path: Path) -> None:
    try:
        os.chmod(path, 0o600)
    except OSError:  # e.g. Windows ACL-only filesystems
        log.debug("could not chmod %s", path)


def _write_endpoint(data_dir: Path, transport: str, address: str) -> None:
    path = data_dir / ENDPOINT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"transport": transport, "address": address,
                               "pid": os.getpid()}), "utf-8")
    os.replace(tmp, path)


class AdminServer:
    """Starts and stops the admin plane for one Daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.data_dir = daemon.data_dir
        self.token = load_or_create_token(self.data_dir)
        self.transport = ""
        self.address = ""
        self._server: aio.Server | None = None

    async def start(self) -> str:
        """Bind and serve; returns the gRPC target clients dial."""
        server = aio.server(interceptors=[AdminInterceptor(self.token)])
        register_all(server, self.daemon)
        sock = self.data_dir / SOCKET_FILE
        if hasattr(socket, "AF_UNIX") and len(str(sock.resolve())) <= _SUN_PATH_MAX:
            sock.unlink(missing_ok=True)  # a stale socket from a crashed run
            # bind with a private umask so the socket never exists world-accessible
            old = os.umask(0o177)
            try:
                server.add_insecure_port(f"unix:{sock.resolve()}")
                await server.start()
            finally:
                os.umask(old)
            _chmod_private(sock)
            self.transport, self.address = "unix", f"unix:{sock.resolve()}"
        else:
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self.transport, self.address = "tcp", f"127.0.0.1:{port}"
        self._server = server
        _write_endpoint(self.data_dir, self.transport, self.address)
        log.info("admin plane on %s", self.address)
        return self.address

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is None:
            return
        await self._server.stop(grace)
        self._server = None
        (self.data_dir / ENDPOINT_FILE).unlink(missing_ok=True)
        if self.transport == "unix":
            (self.data_dir / SOCKET_FILE).unlink(missing_ok=True)
