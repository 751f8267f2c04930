"""TeamKeyService: issue, list and revoke team keys over ``ctx.teamkeys``.

The plaintext exists only in the Issue reply: it is never logged, stored or put
in any other message. ``spend_usd`` is the ledger's all-time sum of ``cost_usd``
for the key. An empty ``allowed_pools`` means every pool and model.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from switchman_daemon.ledger import queries
from switchman_daemon.teamkeys import TeamKeyInfo, TeamKeys
from switchman_shared.proto_gen.switchman.v1 import teamkeys_pb2 as pb
from switchman_shared.proto_gen.switchman.v1 import teamkeys_pb2_grpc

if TYPE_CHECKING:
    from switchman_daemon.app import Daemon


def key_msg(info: TeamKeyInfo, spend_usd: float = 0.0) -> pb.TeamKey:
    return pb.TeamKey(
        id=info.id, name=info.name, owner=info.owner, allowed_pools=list(info.pools or ()),
        expires_at=info.expires_at or 0.0, created_at=info.created_at,
        last_used_at=info.last_used_at or 0.0, spend_usd=spend_usd,
        revoked=info.revoked_at is not None, prefix=info.prefix)


class TeamKeyServicer(teamkeys_pb2_grpc.TeamKeyServiceServicer):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    @property
    def _keys(self) -> TeamKeys:
        assert self.daemon.ctx is not None
        return self.daemon.ctx.teamkeys

    @property
    def _engine(self) -> Any:
        assert self.daemon.ctx is not None
        return self.daemon.ctx.ledger.engine

    async def Issue(self, request: pb.IssueTeamKeyRequest, context: Any
                    ) -> pb.IssueTeamKeyReply:
        pools = [p.strip() for p in request.allowed_pools if p.strip()]
        info, plaintext = await asyncio.to_thread(
            self._keys.issue, request.name, request.owner, pools or None,
            request.expires_at or None)
        return pb.IssueTeamKeyReply(key=key_msg(info), plaintext=plaintext)

    async def List(self, request: pb.ListTeamKeysRequest, context: Any
                   ) -> pb.ListTeamKeysReply:
        def load() -> tuple[list[TeamKeyInfo], dict[str, float]]:
            keys = self._keys.list(include_revoked=request.include_revoked)
            return keys, queries.spend_by_team_key(self._engine, [k.id for k in keys])

        keys, spend = await asyncio.to_thread(load)
        return pb.ListTeamKeysReply(keys=[key_msg(k, spend.get(k.id, 0.0)) for k in keys])

    async def Revoke(self, request: pb.RevokeTeamKeyRequest, context: Any) -> pb.TeamKey:
        def run() -> tuple[TeamKeyInfo | None, dict[str, float]]:
            self._keys.revoke(request.id)  # False when already revoked: still fine
            info = self._keys.get(request.id)
            return info, queries.spend_by_team_key(self._engine, [request.id])

        info, spend = await asyncio.to_thread(run)
        if info is None:
            raise LookupError(f"no team key {request.id!r}")
        return key_msg(info, spend.get(info.id, 0.0))
