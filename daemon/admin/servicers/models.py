"""ModelService: the pool's models (prices, limits, capabilities), pools, aliases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from switchman_daemon.managed_config import ConfigEditor, dump
from switchman_daemon.models import ModelInfo, UnknownModel
from switchman_shared.proto_gen.switchman.v1 import models_pb2 as pb
from switchman_shared.proto_gen.switchman.v1 import models_pb2_grpc

if TYPE_CHECKING:
    from switchman_daemon.app import Daemon

_SPEC_OPTIONALS = ("upstream_id", "catalog", "enabled", "input", "output", "cache_read",
                   "cache_write_5m", "cache_write_1h", "min_cache_prefix", "context_window",
                   "max_output", "tools", "vision", "thinking", "quality")


def model_msg(m: ModelInfo, pools: dict[str, list[str]]) -> pb.Model:
    p = m.prices
    return pb.Model(
        name=m.name, provider=m.provider, upstream_id=m.upstream_id,
        prices=pb.Prices(input=p.input, output=p.output, cache_read=p.cache_read,
                         cache_write_5m=p.cache_write_5m, cache_write_1h=p.cache_write_1h),
        context_window=m.context_window, max_output=m.max_output,
        min_cache_prefix=m.min_cache_prefix,
        capabilities=pb.Capabilities(tools=m.tools, vision=m.vision, thinking=m.thinking),
        quality=m.quality, enabled=m.enabled,
        pools=[name for name, members in pools.items() if m.name in members])


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, daemon: Daemon, editor: ConfigEditor) -> None:
        self.daemon = daemon
        self.editor = editor

    def _model(self, name: str) -> pb.Model:
        assert self.daemon.ctx is not None
        reg = self.daemon.ctx.registry
        if name not in reg.models:
            raise UnknownModel(name)
        return model_msg(reg.models[name], reg.pools)

    async def ListModels(self, request: pb.ListModelsRequest, context: Any
                         ) -> pb.ListModelsReply:
        assert self.daemon.ctx is not None
        reg = self.daemon.ctx.registry
        return pb.ListModelsReply(models=[
            model_msg(m, reg.pools) for m in reg.models.values()
            if m.enabled or request.include_disabled])

    async def ListPools(self, request: pb.ListPoolsRequest, context: Any) -> pb.ListPoolsReply:
        assert self.daemon.ctx is not None
        reg = self.daemon.ctx.registry
        cfg = self.editor.config
        return pb.ListPoolsReply(
            pools=[pb.Pool(name=n, models=ms, default=n == reg.default_pool)
                   for n, ms in reg.pools.items()],
            default_pool=reg.default_pool or "", aliases=dict(cfg.aliases))

    async def UpsertModel(self, request: pb.UpsertModelRequest, context: Any) -> pb.Model:
        spec = request.model
        if not spec.name or not spec.provider:
            raise ValueError("a model needs a name and a provider")
        entry: dict[str, Any] = {"provider": spec.provider}
        for f in _SPEC_OPTIONALS:
            if spec.HasField(f):
                entry[f] = getattr(spec, f)
        await self.editor.change({"models": {spec.name: entry}})
        return self._model(spec.name)

    async def SetModelEnabled(self, request: pb.SetModelEnabledRequest, context: Any
                              ) -> pb.Model:
        cfg = self.editor.config
        if request.name not in cfg.models:
            raise UnknownModel(request.name)
        entry = {**dump(cfg)["models"][request.name], "enabled": request.enabled}
        await self.editor.change({"models": {request.name: entry}})
        return self._model(request.name)

    async def UpsertPool(self, request: pb.UpsertPoolRequest, context: Any) -> pb.Pool:
        p = request.pool
        if not p.name:
            raise ValueError("a pool needs a name")
        delta: dict[str, Any] = {"pools": {p.name: {"models": list(p.models),
                                                    "default": p.default}}}
        if p.default:  # one default pool: clear the flag elsewhere
            for name, pc in self.editor.config.pools.items():
                if pc.default and name != p.name:
                    delta["pools"][name] = {"models": list(pc.models), "default": False}
        await self.editor.change(delta)
        assert self.daemon.ctx is not None
        reg = self.daemon.ctx.registry
        return pb.Pool(name=p.name, models=reg.pools[p.name], default=reg.default_pool == p.name)

    async def SetAlias(self, request: pb.SetAliasRequest, context: Any) -> pb.SetAliasReply:
        if not request.pattern or not request.target:
            raise ValueError("an alias needs a pattern and a target")
        cfg = self.editor.config
        if request.target not in cfg.models and request.target not in cfg.pools:
            raise UnknownModel(request.target)
        await self.editor.change({"aliases": {request.pattern: request.target}})
        return pb.SetAliasReply(aliases=dict(self.editor.config.aliases))
