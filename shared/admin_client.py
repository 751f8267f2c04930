"""The one typed admin client, shared by the console and the CLI.

``AdminClient.connect(data_dir)`` finds the running daemon through its data
dir (admin.json + admin.token), attaches the bearer token to every call, and
turns gRPC failures into ``AdminError(kind, message)``. The methods the CLI
needs are wrapped here; anything else is reachable through the raw stubs
(``client.providers``, ``client.models``, ...), which carry the token too.

``AsyncAdminClient`` is the grpc.aio twin for code running on an asyncio loop;
``await client.call(client.stats.Watch(req))`` style use goes through
``AsyncAdminClient.call`` / ``AsyncAdminClient.stream`` for the same errors.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2
from grpc import aio

from switchman_shared import admin_errors as k
from switchman_shared.admin_discovery import Endpoint, discover
from switchman_shared.admin_errors import AdminError
from switchman_shared.proto_gen.switchman.v1 import (
    budgets_pb2,
    budgets_pb2_grpc,
    daemon_pb2,
    daemon_pb2_grpc,
    ledger_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    providers_pb2,
    providers_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
    teamkeys_pb2,
    teamkeys_pb2_grpc,
)

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 30.0


def to_admin_error(e: grpc.RpcError) -> AdminError:
    """The AdminError a failed call stands for (kind from trailing metadata)."""
    code = e.code() if hasattr(e, "code") else None
    kind = ""
    trailers = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == k.ERROR_KIND_KEY:
            kind = value if isinstance(value, str) else value.decode()
    if not kind:
        kind = code.name.lower() if isinstance(code, grpc.StatusCode) else k.INTERNAL
        if kind not in k.KINDS:
            kind = k.UNAVAILABLE if code == grpc.StatusCode.DEADLINE_EXCEEDED else k.INTERNAL
    message = (e.details() if hasattr(e, "details") else None) or str(e)
    if code == grpc.StatusCode.UNAVAILABLE and kind == k.UNAVAILABLE:
        message = f"cannot reach the switchman daemon ({message})"
    return AdminError(kind, message)


def _with_token(details: Any, token: str) -> Any:
    md = [*(details.metadata or ()), ("authorization", f"Bearer {token}")]
    return details._replace(metadata=md)


class _SyncDetails:
    # grpc.ClientCallDetails is an abstract class without _replace; this is the
    # usual namedtuple-shaped stand-in.
    def __init__(self, d: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = d.method
        self.timeout = d.timeout
        self.metadata = metadata
        self.credentials = d.credentials
        self.wait_for_ready = getattr(d, "wait_for_ready", None)
        self.compression = getattr(d, "compression", None)


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def _details(self, d: grpc.ClientCallDetails) -> Any:
        return _SyncDetails(d, [*(d.metadata or ()), self._md])

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any,
                              request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any,
                               request: Any) -> Any:
        return continuation(self._details(details), request)


class _Stubs:
    """One stub per service on ``channel``."""

    def _make_stubs(self, channel: Any) -> None:
        self.providers = providers_pb2_grpc.ProviderServiceStub(channel)
        self.models = models_pb2_grpc.ModelServiceStub(channel)
        self.policy = policy_pb2_grpc.PolicyServiceStub(channel)
        self.budgets = budgets_pb2_grpc.BudgetServiceStub(channel)
        self.teamkeys = teamkeys_pb2_grpc.TeamKeyServiceStub(channel)
        self.ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        self.stats = stats_pb2_grpc.StatsServiceStub(channel)
        self.daemon = daemon_pb2_grpc.DaemonServiceStub(channel)


class AdminClient(_Stubs):
    """Synchronous admin client (CLI; GUI worker threads)."""

    def __init__(self, endpoint: Endpoint, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._raw = grpc.insecure_channel(endpoint.address)
        self.channel = grpc.intercept_channel(self._raw, _TokenInterceptor(endpoint.token))
        self._make_stubs(self.channel)

    @classmethod
    def connect(cls, data_dir: str | os.PathLike[str] | None = None,
                timeout: float = DEFAULT_TIMEOUT_S) -> AdminClient:
        return cls(discover(Path(data_dir) if data_dir else None), timeout)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: Callable[..., T], request: Any) -> T:
        """``method(request)`` on a stub, with the timeout and AdminError mapping."""
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise to_admin_error(e) from None

    def stream(self, method: Callable[..., Iterator[T]], request: Any) -> Iterator[T]:
        try:
            yield from method(request)
        except grpc.RpcError as e:
            raise to_admin_error(e) from None

    # -- the CLI's verbs ---------------------------------------------------------

    def status(self) -> daemon_pb2.StatusReply:
        return self.call(self.daemon.Status, daemon_pb2.StatusRequest())

    def list_providers(self) -> list[providers_pb2.Provider]:
        return list(self.call(self.providers.ListProviders,
                              providers_pb2.ListProvidersRequest()).providers)

    def set_key(self, provider: str, key: str) -> providers_pb2.Provider:
        return self.call(self.providers.SetKey,
                         providers_pb2.SetKeyRequest(provider=provider, key=key))

    def test_key(self, provider: str) -> providers_pb2.TestKeyReply:
        return self.call(self.providers.TestKey, providers_pb2.TestKeyRequest(provider=provider))

    def remove_key(self, provider: str) -> providers_pb2.Provider:
        return self.call(self.providers.RemoveKey,
                         providers_pb2.RemoveKeyRequest(provider=provider))

    def get_policy(self) -> policy_pb2.Policy:
        return self.call(self.policy.GetPolicy, policy_pb2.GetPolicyRequest())

    def set_objective(self, cost: float | None = None, quality: float | None = None,
                      latency: float | None = None) -> policy_pb2.Policy:
        """Change only the given weights."""
        weights = {"cost": cost, "quality": quality, "latency": latency}
        given = {n: v for n, v in weights.items() if v is not None}
        if not given:
            raise AdminError(k.INVALID_ARGUMENT, "give at least one weight")
        req = policy_pb2.SetPolicyRequest(
            policy=policy_pb2.Policy(objective=policy_pb2.Objective(**given)),
            update_mask=field_mask_pb2.FieldMask(paths=[f"objective.{n}" for n in given]))
        return self.call(self.policy.SetPolicy, req)

    def set_policy(self, *, cost: float | None = None, quality: float | None = None,
                   latency: float | None = None, cascade: bool | None = None,
                   cascade_quality_floor: float | None = None,
                   cascade_max_cost_ratio: float | None = None,
                   keepalive: bool | None = None) -> policy_pb2.Policy:
        """Change only the given settings, in one SetPolicy call: objective weights,
        the cascade (on/off, quality floor, max cost ratio) and cache keep-alive."""
        p = policy_pb2.Policy()
        paths: list[str] = []
        for name, v in (("cost", cost), ("quality", quality), ("latency", latency)):
            if v is not None:
                setattr(p.objective, name, v)
                paths.append(f"objective.{name}")
        for name, v in (("enabled", cascade), ("quality_floor", cascade_quality_floor),
                        ("max_cost_ratio", cascade_max_cost_ratio)):
            if v is not None:
                setattr(p.cascade, name, v)
                paths.append(f"cascade.{name}")
        if keepalive is not None:
            p.keepalive = keepalive
            paths.append("keepalive")
        if not paths:
            raise AdminError(k.INVALID_ARGUMENT, "give at least one setting to change")
        req = policy_pb2.SetPolicyRequest(policy=p,
                                          update_mask=field_mask_pb2.FieldMask(paths=paths))
        return self.call(self.policy.SetPolicy, req)

    def set_rules(self, rules: list[dict[str, str]]) -> policy_pb2.Policy:
        """Replace the routing rules (ordered; the first match wins). Each rule:
        name, match_model, match_client, match_role, route_to."""
        req = policy_pb2.SetPolicyRequest(
            policy=policy_pb2.Policy(rules=[policy_pb2.Rule(**r) for r in rules]),
            update_mask=field_mask_pb2.FieldMask(paths=["rules"]))
        return self.call(self.policy.SetPolicy, req)

    def list_models(self, include_disabled: bool = False) -> list[models_pb2.Model]:
        return list(self.call(self.models.ListModels, models_pb2.ListModelsRequest(
            include_disabled=include_disabled)).models)

    def export_config(self) -> str:
        return self.call(self.daemon.ExportConfig, daemon_pb2.ExportConfigRequest()).toml

    def import_config(self, toml_text: str, dry_run: bool = False
                      ) -> daemon_pb2.ImportConfigReply:
        return self.call(self.daemon.ImportConfig,
                         daemon_pb2.ImportConfigRequest(toml=toml_text, dry_run=dry_run))

    def stats_snapshot(self, since: float = 0.0) -> stats_pb2.StatsUpdate:
        """The first message of the Watch stream (a full snapshot)."""
        call = self.stats.Watch(stats_pb2.WatchRequest(since=since), timeout=self.timeout)
        try:
            return next(iter(call))
        except grpc.RpcError as e:
            raise to_admin_error(e) from None
        finally:
            call.cancel()

    def shutdown(self) -> None:
        self.call(self.daemon.Shutdown, daemon_pb2.ShutdownRequest())

    # -- budgets, team keys, rollups ---------------------------------------------

    def set_budget(self, scope: str, period: str, *, subject: str = "",
                   soft_usd: float = 0.0, hard_usd: float = 0.0, timezone: str = "",
                   budget_id: str = "") -> budgets_pb2.Budget:
        """Create a budget (or replace ``budget_id``). ``scope``: global, team_key or
        session (no ``subject`` = each key/session separately); ``period``: daily,
        weekly, monthly or total; a limit of 0 = none; no ``timezone`` = the
        daemon's local zone."""
        names = {"scope": (budgets_pb2.BudgetScope, "BUDGET_SCOPE_", scope),
                 "period": (budgets_pb2.BudgetPeriod, "BUDGET_PERIOD_", period)}
        values: dict[str, int] = {}
        for field, (enum, prefix, name) in names.items():
            choices = [n[len(prefix):].lower() for n in enum.keys()  # noqa: SIM118
                       if not n.endswith("UNSPECIFIED")]
            if name.lower() not in choices:
                raise AdminError(k.INVALID_ARGUMENT,
                                 f"unknown budget {field} {name!r} ({', '.join(choices)})")
            values[field] = enum.Value(prefix + name.upper())
        b = budgets_pb2.Budget(id=budget_id, scope_id=subject, soft_usd=soft_usd,
                               hard_usd=hard_usd, timezone=timezone, **values)
        return self.call(self.budgets.SetBudget, budgets_pb2.SetBudgetRequest(budget=b))

    def list_budgets(self) -> list[budgets_pb2.Budget]:
        return list(self.call(self.budgets.ListBudgets,
                              budgets_pb2.ListBudgetsRequest()).budgets)

    def remove_budget(self, budget_id: str) -> None:
        self.call(self.budgets.RemoveBudget, budgets_pb2.RemoveBudgetRequest(id=budget_id))

    def budget_status(self, ids: list[str] | None = None) -> list[budgets_pb2.BudgetStatus]:
        """Status rows (one per budget, or per key/session of a template budget)."""
        return list(self.call(self.budgets.GetStatus,
                              budgets_pb2.GetBudgetStatusRequest(ids=ids or [])).statuses)

    def issue_team_key(self, name: str, owner: str, pools: list[str] | None = None,
                       expires_at: float = 0.0) -> teamkeys_pb2.IssueTeamKeyReply:
        """A new team key; ``reply.plaintext`` is the only time the key is shown."""
        return self.call(self.teamkeys.Issue, teamkeys_pb2.IssueTeamKeyRequest(
            name=name, owner=owner, allowed_pools=pools or [], expires_at=expires_at))

    def list_team_keys(self, include_revoked: bool = False) -> list[teamkeys_pb2.TeamKey]:
        return list(self.call(self.teamkeys.List, teamkeys_pb2.ListTeamKeysRequest(
            include_revoked=include_revoked)).keys)

    def revoke_team_key(self, key_id: str) -> teamkeys_pb2.TeamKey:
        return self.call(self.teamkeys.Revoke, teamkeys_pb2.RevokeTeamKeyRequest(id=key_id))

    def get_rollups(self, resolution: int = stats_pb2.RESOLUTION_HOUR, since: float = 0.0,
                    until: float = 0.0) -> list[stats_pb2.Rollup]:
        return list(self.call(self.stats.GetRollups, stats_pb2.GetRollupsRequest(
            resolution=resolution, since=since, until=until)).rollups)

    def replay_preview(self, days: float = 7.0,
                       objectives: list[tuple[float, float, float]] | None = None,
                       max_requests: int = 5000) -> policy_pb2.ReplayPreviewReply:
        """What the last ``days`` of recorded traffic would have cost under each
        (cost, quality, latency) objective (None = the current one plus a sweep),
        replayed in the daemon; quality is predicted, not measured."""
        req = policy_pb2.ReplayPreviewRequest(
            days=days, max_requests=max_requests,
            objectives=[policy_pb2.Objective(cost=c, quality=q, latency=lat)
                        for c, q, lat in objectives or ()])
        return self.call(self.policy.ReplayPreview, req)


class _AioToken(aio.UnaryUnaryClientInterceptor, aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any,
                                    request: Any) -> Any:
        return await continuation(_with_token(details, self._token), request)

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any,
                                     request: Any) -> Any:
        return await continuation(_with_token(details, self._token), request)


class AsyncAdminClient(_Stubs):
    """grpc.aio admin client; create and use it on one running event loop."""

    def __init__(self, endpoint: Endpoint, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.channel = aio.insecure_channel(endpoint.address,
                                            interceptors=[_AioToken(endpoint.token)])
        self._make_stubs(self.channel)

    @classmethod
    def connect(cls, data_dir: str | os.PathLike[str] | None = None,
                timeout: float = DEFAULT_TIMEOUT_S) -> AsyncAdminClient:
        return cls(discover(Path(data_dir) if data_dir else None), timeout)

    async def close(self) -> None:
        await self.channel.close()

    async def call(self, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except grpc.RpcError as e:
            raise to_admin_error(e) from None

    async def stream(self, call: AsyncIterator[T]) -> AsyncIterator[T]:
        try:
            async for item in call:
                yield item
        except grpc.RpcError as e:
            raise to_admin_error(e) from None
