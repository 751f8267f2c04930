"""Background work for the console: gRPC calls never run on the UI thread.

``Worker.submit(fn, on_ok, on_err)`` runs ``fn`` on a QThreadPool thread and
delivers its result (or the exception) back on the GUI thread through a queued
Qt signal, the way Electrum's QtEventListener and Anki's QueryOp do it. The
callbacks therefore always run on the GUI thread and may touch widgets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal, Slot

log = logging.getLogger("switchman.gui")

OkCallback = Callable[[Any], None]
ErrCallback = Callable[[BaseException], None]


class _Delivery:
    __slots__ = ("callback", "value")

    def __init__(self, callback: Callable[[Any], None] | None, value: Any) -> None:
        self.callback = callback
        self.value = value


class Dispatcher(QObject):
    """Lives on the GUI thread; runs callbacks handed over from other threads."""

    _deliver = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._deliver.connect(self._run, Qt.ConnectionType.QueuedConnection)

    def post(self, callback: Callable[[Any], None] | None, value: Any) -> None:
        """Call ``callback(value)`` on the GUI thread (safe from any thread)."""
        self._deliver.emit(_Delivery(callback, value))

    @Slot(object)
    def _run(self, d: _Delivery) -> None:
        if d.callback is None:
            return
        try:
            d.callback(d.value)
        except Exception:  # a bug in a page must not take the console down
            log.exception("console callback failed")


class _Task(QRunnable):
    def __init__(self, fn: Callable[[], Any], dispatcher: Dispatcher,
                 on_ok: OkCallback | None, on_err: ErrCallback | None,
                 done: Callable[[], None]) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._fn, self._d, self._ok, self._err, self._done = fn, dispatcher, on_ok, on_err, done

    def run(self) -> None:
        try:
            result = self._fn()
        except BaseException as e:  # delivered, never raised on a pool thread
            self._d.post(self._err, e)
        else:
            self._d.post(self._ok, result)
        finally:
            self._fn = None  # type: ignore[assignment]  # drop closures (they may hold input)
            self._done()


class Worker(QObject):
    """A small pool for blocking calls; results come back on the GUI thread."""

    def __init__(self, parent: QObject | None = None, max_threads: int = 4) -> None:
        super().__init__(parent)
        self.dispatcher = Dispatcher(self)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        self._lock = threading.Lock()
        self._pending = 0

    def submit(self, fn: Callable[[], Any], on_ok: OkCallback | None = None,
               on_err: ErrCallback | None = None) -> None:
        with self._lock:
            self._pending += 1
        self.pool.start(_Task(fn, self.dispatcher, on_ok, on_err, self._finished))

    def _finished(self) -> None:
        with self._lock:
            self._pending -= 1

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def wait(self, timeout_ms: int = 5000) -> bool:
        return self.pool.waitForDone(timeout_ms)
