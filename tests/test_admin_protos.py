"""The generated stubs are current, and every RPC has an access decision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from switchman_daemon.admin.auth import ACCESS, READ, WRITE
from switchman_shared.proto_gen.switchman.v1 import (
    budgets_pb2,
    daemon_pb2,
    ledger_pb2,
    models_pb2,
    policy_pb2,
    providers_pb2,
    stats_pb2,
    teamkeys_pb2,
)

ROOT = Path(__file__).resolve().parent.parent
MODULES = (budgets_pb2, daemon_pb2, ledger_pb2, models_pb2, policy_pb2, providers_pb2,
           stats_pb2, teamkeys_pb2)


def test_generated_code_matches_the_protos() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_rpc_is_in_the_access_table() -> None:
    methods = {f"/{svc.full_name}/{m.name}" for mod in MODULES
               for svc in mod.DESCRIPTOR.services_by_name.values() for m in svc.methods}
    assert methods == set(ACCESS)
    assert set(ACCESS.values()) <= {READ, WRITE}


def test_one_proto_per_domain() -> None:
    names = sorted(p.stem for p in (ROOT / "shared/proto/switchman/v1").glob("*.proto"))
    assert names == ["budgets", "daemon", "ledger", "models", "policy", "providers", "stats",
                     "teamkeys"]
    for mod in MODULES:
        assert mod.DESCRIPTOR.package == "switchman.v1"
        assert len(mod.DESCRIPTOR.services_by_name) == 1
