"""Fixtures for admin-plane tests: an in-memory keyring and a running daemon
with its admin server, plus a client bound to its data dir."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import keyring
import pytest

from switchman_shared.admin_client import AdminClient
from tests.support.memory_keyring import MemoryKeyring
from tests.support.running import RunningDaemon


@pytest.fixture
def mem_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    kr = MemoryKeyring()
    keyring.set_keyring(kr)
    try:
        yield kr
    finally:
        keyring.set_keyring(previous)


@pytest.fixture
def admin_daemon(tmp_path: Path, mem_keyring: MemoryKeyring) -> Iterator[RunningDaemon]:
    d = RunningDaemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def client(admin_daemon: RunningDaemon) -> Iterator[AdminClient]:
    c = AdminClient.connect(admin_daemon.daemon.data_dir)
    try:
        yield c
    finally:
        c.close()


def raw_channel(d: RunningDaemon) -> grpc.Channel:
    """A channel with no token attached."""
    info = json.loads((d.daemon.data_dir / "admin.json").read_text())
    return grpc.insecure_channel(info["address"])
