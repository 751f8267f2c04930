"""Servicers: translate protos <-> daemon modules, nothing more. One module per
proto service; ``register_all`` adds every service this daemon implements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grpc import aio

from switchman_daemon.managed_config import ConfigEditor
from switchman_shared.config_schema import Config

if TYPE_CHECKING:
    from switchman_daemon.app import Daemon


def register_all(server: aio.Server, daemon: Daemon) -> None:
    from switchman_shared.proto_gen.switchman.v1 import (
        budgets_pb2_grpc,
        daemon_pb2_grpc,
        ledger_pb2_grpc,
        models_pb2_grpc,
        policy_pb2_grpc,
        providers_pb2_grpc,
        stats_pb2_grpc,
        teamkeys_pb2_grpc,
    )

    from .budgets import BudgetServicer
    from .daemon_service import DaemonServicer
    from .ledger import LedgerServicer
    from .models import ModelServicer
    from .policy import PolicyServicer
    from .providers import ProviderServicer
    from .stats import StatsServicer
    from .teamkeys import TeamKeyServicer

    def current() -> Config:  # the live config, read at call time
        assert daemon.ctx is not None
        return daemon.ctx.config

    async def apply(cfg: Config) -> None:
        await daemon.apply_config(cfg)
        if daemon.keepalive is not None:  # e.g. keep-alive turned off: drop what it kept
            daemon.keepalive.config_applied()

    editor = ConfigEditor(daemon.data_dir, current, apply)
    providers_pb2_grpc.add_ProviderServiceServicer_to_server(
        ProviderServicer(daemon, editor), server)
    models_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(daemon, editor), server)
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyServicer(daemon, editor), server)
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(LedgerServicer(daemon), server)
    stats_pb2_grpc.add_StatsServiceServicer_to_server(StatsServicer(daemon), server)
    budgets_pb2_grpc.add_BudgetServiceServicer_to_server(BudgetServicer(daemon), server)
    teamkeys_pb2_grpc.add_TeamKeyServiceServicer_to_server(TeamKeyServicer(daemon), server)
    daemon_pb2_grpc.add_DaemonServiceServicer_to_server(DaemonServicer(daemon, editor), server)
