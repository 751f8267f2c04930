"""ProviderService: provider list with key status; keys go in, never out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from switchman_daemon import provider_keys
from switchman_daemon.managed_config import ConfigEditor
from switchman_shared.proto_gen.switchman.v1 import providers_pb2 as pb
from switchman_shared.proto_gen.switchman.v1 import providers_pb2_grpc

if TYPE_CHECKING:
    from switchman_daemon.app import Daemon
    from switchman_shared.config_schema import ProviderConfig

_SOURCE = {"keyring": pb.KEY_SOURCE_KEYRING, "env": pb.KEY_SOURCE_ENV,
           "none": pb.KEY_SOURCE_NONE}


def _key_status(st: provider_keys.KeyStatus) -> pb.KeyStatus:
    return pb.KeyStatus(set=st.set, masked=st.masked, fingerprint=st.fingerprint,
                        source=_SOURCE[st.source], ref=st.ref)


def _provider(name: str, pc: ProviderConfig, st: provider_keys.KeyStatus) -> pb.Provider:
    return pb.Provider(name=name, kind=pc.kind, base_url=pc.base_url,
                       simulated=pc.base_url == "sim", needs_key=provider_keys.needs_key(pc),
                       key=_key_status(st), formats=pc.wire_formats())


class ProviderServicer(providers_pb2_grpc.ProviderServiceServicer):
    def __init__(self, daemon: Daemon, editor: ConfigEditor) -> None:
        self.daemon = daemon
        self.editor = editor

    def _one(self, name: str, st: provider_keys.KeyStatus) -> pb.Provider:
        return _provider(name, self.editor.config.providers[name], st)

    async def ListProviders(self, request: pb.ListProvidersRequest, context: Any
                            ) -> pb.ListProvidersReply:
        cfg = self.editor.config
        return pb.ListProvidersReply(providers=[
            _provider(n, pc, provider_keys.status(pc)) for n, pc in cfg.providers.items()])

    async def SetKey(self, request: pb.SetKeyRequest, context: Any) -> pb.Provider:
        st = await provider_keys.set_key(self.editor, request.provider, request.key)
        return self._one(request.provider, st)

    async def TestKey(self, request: pb.TestKeyRequest, context: Any) -> pb.TestKeyReply:
        assert self.daemon.ctx is not None
        r = await provider_keys.test_key(
            self.editor.config, self.daemon.ctx.upstreams, request.provider,
            request.key if request.HasField("key") else None)
        return pb.TestKeyReply(ok=r.ok, message=r.message, http_status=r.http_status,
                               latency_ms=r.latency_ms)

    async def RemoveKey(self, request: pb.RemoveKeyRequest, context: Any) -> pb.Provider:
        st = await provider_keys.remove_key(self.editor, request.provider)
        return self._one(request.provider, st)
