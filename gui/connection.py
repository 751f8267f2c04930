"""The console's link to the daemon: discovery, (re)connection, calls, the live
stats stream, and starting a daemon that is not running.

Everything the console knows comes through here, over gRPC (``AdminClient`` from
switchman_shared). Calls run on ``Worker`` threads; results, errors and stream
updates arrive on the GUI thread as callbacks or Qt signals.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from PySide6.QtCore import QObject, QTimer, Signal

from switchman_gui.errors import as_admin_error, describe, is_unavailable, is_unimplemented
from switchman_gui.worker import ErrCallback, OkCallback, Worker
from switchman_shared.admin_client import AdminClient
from switchman_shared.admin_discovery import default_data_dir
from switchman_shared.admin_errors import AdminError
from switchman_shared.proto_gen.switchman.v1 import daemon_pb2, stats_pb2

log = logging.getLogger("switchman.gui")

DISCONNECTED, CONNECTING, CONNECTED, STARTING = "disconnected", "connecting", "connected", \
    "starting"
RECONNECT_MS = 2000
HEALTH_MS = 5000


class StatsStream:
    """StatsService.Watch on a daemon thread; each update is posted to the GUI thread."""

    def __init__(self, client: AdminClient, post: Callable[[Callable[[Any], None] | None, Any],
                                                           None],
                 on_update: Callable[[Any], None], on_error: Callable[[Any], None]) -> None:
        self._client, self._post = client, post
        self._on_update, self._on_error = on_update, on_error
        self._stop = threading.Event()
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, name="switchman-stats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._call = self._client.stats.Watch(
                    stats_pb2.WatchRequest(interval_s=1.0, max_decisions=30))
                for update in self._call:
                    if self._stop.is_set():
                        return
                    self._post(self._on_update, update)
            except grpc.RpcError as e:
                if self._stop.is_set() or e.code() == grpc.StatusCode.CANCELLED:
                    return
                err = as_admin_error(e)
                self._post(self._on_error, err)
                if is_unimplemented(err) or is_unavailable(err):
                    return
            except Exception as e:  # e.g. the channel was closed under us
                if not self._stop.is_set():
                    self._post(self._on_error, as_admin_error(e))
                return
            self._stop.wait(2.0)  # the stream ended or failed: resubscribe shortly


class Connection(QObject):
    """Finds and keeps a connection to the local daemon; the pages' only way to it."""

    state_changed = Signal(str, str)  # state, detail
    connected = Signal(object)  # daemon_pb2.StatusReply
    disconnected = Signal(str)
    status = Signal(object)  # daemon_pb2.StatusReply, refreshed periodically
    stats = Signal(object)  # stats_pb2.StatsUpdate
    message = Signal(str, str)  # text, level ("error" | "info")
    daemon_missing = Signal(str)  # no daemon found at all (offer to start one)

    def __init__(self, data_dir: str | os.PathLike[str] | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.data_dir = Path(data_dir) if data_dir else None
        self.worker = Worker(self)
        self.client: AdminClient | None = None
        self.state = DISCONNECTED
        self.last_status: daemon_pb2.StatusReply | None = None
        self._stream: StatsStream | None = None
        self._connecting = False
        self._missing_reported = False
        self._last_error = ""
        self._started_proc: subprocess.Popen[bytes] | None = None
        # clients dropped while calls may still use them; closed once idle (closing a
        # gRPC channel under a call in flight can crash the process)
        self._retired: list[tuple[AdminClient, StatsStream | None]] = []
        self._closed = False
        self._retry = QTimer(self)
        self._retry.setInterval(RECONNECT_MS)
        self._retry.timeout.connect(self.try_connect)
        self._health = QTimer(self)
        self._health.setInterval(HEALTH_MS)
        self._health.timeout.connect(self._check_health)

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Connect now and keep retrying (every 2 s) while the daemon is away."""
        self._retry.start()
        self.try_connect()

    def close(self) -> None:
        self._closed = True
        self._retry.stop()
        self._health.stop()
        self._drop_client()
        self.worker.wait(10000)
        self._close_retired(force=True)

    def try_connect(self) -> None:
        if self.client is not None or self._connecting or self._closed:
            return
        self._connecting = True
        if self.state not in (STARTING, CONNECTING):
            self._set_state(CONNECTING, "looking for the daemon")
        data_dir = self.data_dir

        def attempt() -> tuple[AdminClient, daemon_pb2.StatusReply]:
            client = AdminClient.connect(data_dir, timeout=10.0)
            try:
                return client, client.status()
            except BaseException:
                client.close()
                raise

        self.worker.submit(attempt, self._on_connected, self._on_connect_failed)

    def _on_connected(self, result: tuple[AdminClient, daemon_pb2.StatusReply]) -> None:
        self._connecting = False
        client, status = result
        if self._closed:
            client.close()
            return
        self.client, self.last_status = client, status
        self._missing_reported = False
        self._last_error = ""
        self._set_state(CONNECTED, f"switchman {status.version} · {status.proxy_url}")
        self._stream = StatsStream(client, self.worker.dispatcher.post, self.stats.emit,
                                   self._on_stream_error)
        self._stream.start()
        self._health.start()
        self.connected.emit(status)

    def _on_connect_failed(self, e: BaseException) -> None:
        self._connecting = False
        err = as_admin_error(e)
        state = STARTING if self.state == STARTING else DISCONNECTED
        if state == STARTING and self._started_proc is not None \
                and self._started_proc.poll() is not None:
            state = DISCONNECTED
            err = AdminError(err.kind, "the daemon exited right after starting; see "
                             f"{self.log_path()}")
        self._set_state(state, err.message)
        if err.message != self._last_error and state != STARTING:
            self._last_error = err.message
            self.message.emit(describe(err), "error")
        if "no running switchman daemon" in err.message and not self._missing_reported:
            self._missing_reported = True
            self.daemon_missing.emit(err.message)

    def _check_health(self) -> None:
        if self.client is None:
            return
        client = self.client

        def ok(s: daemon_pb2.StatusReply) -> None:
            self.last_status = s
            self.status.emit(s)

        def failed(e: BaseException) -> None:
            if client is self.client and is_unavailable(e):
                self.lost(e)

        self.worker.submit(client.status, ok, failed)

    def lost(self, e: BaseException) -> None:
        """The daemon went away: drop the client and keep trying to reconnect."""
        if self.client is None:
            return
        self._drop_client()
        msg = describe(e)
        self._last_error = as_admin_error(e).message
        self._set_state(DISCONNECTED, "connection lost; reconnecting")
        self.message.emit(msg, "error")
        self.disconnected.emit(msg)
        self._retry.start()

    def _drop_client(self) -> None:
        self._health.stop()
        stream, client = self._stream, self.client
        self._stream, self.client = None, None
        if stream is not None:
            stream.stop()
        if client is not None:
            self._retired.append((client, stream))
            self._close_retired()

    def _close_retired(self, force: bool = False) -> None:
        busy = self.worker.pending > 0
        keep = []
        for client, stream in self._retired:
            if force and stream is not None:
                stream.join(5.0)
            if not force and (busy or (stream is not None and stream.alive())):
                keep.append((client, stream))
            else:
                client.close()
        self._retired = keep
        if keep:
            QTimer.singleShot(200, self._close_retired)

    def _on_stream_error(self, err: AdminError) -> None:
        if is_unavailable(err):
            self.lost(err)
        else:
            self.report(err, "watch live stats")

    def _set_state(self, state: str, detail: str) -> None:
        self.state = state
        self.state_changed.emit(state, detail)

    # -- calls --------------------------------------------------------------------

    def call(self, fn: Callable[[AdminClient], Any], on_ok: OkCallback | None = None, *,
             action: str = "", on_err: ErrCallback | None = None, quiet: bool = False) -> bool:
        """Run ``fn(client)`` off the UI thread. Errors are reported (unless ``quiet``)
        and passed to ``on_err``. False if there is no connection (reported too)."""
        client = self.client
        if client is None:
            err = AdminError("unavailable", "not connected to the daemon yet")
            if not quiet:
                self.report(err, action)
            if on_err is not None:
                on_err(err)
            return False

        def failed(e: BaseException) -> None:
            err = as_admin_error(e)
            if is_unavailable(err) and client is self.client:
                self.lost(err)
            elif not quiet:
                self.report(err, action)
            if on_err is not None:
                on_err(err)

        self.worker.submit(lambda: fn(client), on_ok, failed)
        return True

    def report(self, e: BaseException, action: str = "") -> None:
        """Show a failure to the user (the single error path)."""
        self.message.emit(describe(e, action), "error")

    def info(self, text: str) -> None:
        self.message.emit(text, "info")

    # -- starting a daemon ----------------------------------------------------------

    def log_path(self) -> Path:
        return default_data_dir(self.data_dir) / "daemon.log"

    def start_daemon(self) -> None:
        """``switchman daemon`` as a detached process; then connect to it."""
        log_file = self.log_path()
        log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "switchman_daemon.cli", "daemon"]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = (subprocess.DETACHED_PROCESS  # type: ignore[attr-defined]
                                       | subprocess.CREATE_NEW_PROCESS_GROUP)
        else:
            kwargs["start_new_session"] = True
        with open(log_file, "ab") as out:
            out.write(f"\n--- started by the console at {time.ctime()} ---\n".encode())
            out.flush()
            self._started_proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=subprocess.STDOUT, **kwargs)
        self._set_state(STARTING, "starting the daemon")
        self.info(f"Starting the daemon (log: {log_file})")
        self._retry.start()
        QTimer.singleShot(500, self.try_connect)
