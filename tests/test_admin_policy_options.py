"""The opt-in routing features (cascade, cache keep-alive) over a real gRPC
channel to a real daemon: GetPolicy reports them, SetPolicy changes them live
by update_mask path, bad values are refused, and a restart keeps them."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
from google.protobuf import field_mask_pb2

from switchman_daemon.managed_config import with_managed
from switchman_shared.admin_client import AdminClient
from switchman_shared.admin_errors import AdminError
from switchman_shared.proto_gen.switchman.v1 import policy_pb2
from tests.support.memory_keyring import MemoryKeyring
from tests.support.running import RunningDaemon


def _managed(d: RunningDaemon) -> dict:
    return tomllib.loads((d.daemon.data_dir / "managed.toml").read_text())


def test_defaults_are_reported(client: AdminClient) -> None:
    p = client.get_policy()
    assert p.HasField("cascade")
    assert (p.cascade.enabled, p.cascade.quality_floor, p.cascade.max_cost_ratio) == \
        (False, 0.5, 0.5)
    assert p.keepalive is False


def test_set_get_live_and_persisted_across_a_restart(
        tmp_path: Path, mem_keyring: MemoryKeyring) -> None:
    d = RunningDaemon(tmp_path)
    try:
        with AdminClient.connect(d.daemon.data_dir) as c:
            p = c.set_policy(cascade=True, cascade_quality_floor=0.3, keepalive=True)
            assert p.cascade.enabled and p.cascade.quality_floor == 0.3 and p.keepalive
            assert p.cascade.max_cost_ratio == 0.5  # not in the mask: unchanged
            assert (p.objective.cost, p.objective.quality) == (0.5, 0.5)
            got = c.get_policy()
            assert got == p
            # live: the config every request reads, and the keep-alive runner
            r = d.ctx.config.routing
            assert r.cascade.enabled and r.cascade.quality_floor == 0.3 and r.keepalive
            assert d.daemon.keepalive.enabled
            # only what was changed is stored
            assert _managed(d)["routing"] == {
                "cascade": {"enabled": True, "quality_floor": 0.3}, "keepalive": True}

            p = c.set_policy(cascade_max_cost_ratio=0.25, keepalive=False)
            assert p.cascade.enabled and p.cascade.max_cost_ratio == 0.25 and not p.keepalive
            assert not d.daemon.keepalive.enabled
    finally:
        d.stop()

    # a new daemon on the same data dir, started the way `switchman daemon` starts
    again = RunningDaemon(tmp_path, overrides=with_managed(tmp_path / "data", None))
    try:
        with AdminClient.connect(again.daemon.data_dir) as c:
            p = c.get_policy()
        assert (p.cascade.enabled, p.cascade.quality_floor, p.cascade.max_cost_ratio) == \
            (True, 0.3, 0.25)
        assert p.keepalive is False
        assert again.ctx.config.routing.cascade.enabled
    finally:
        again.stop()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"cascade_quality_floor": 1.5}, "routing.cascade.quality_floor"),
    ({"cascade_quality_floor": -0.1}, "routing.cascade.quality_floor"),
    ({"cascade_quality_floor": math.nan}, "routing.cascade.quality_floor"),
    ({"cascade_max_cost_ratio": 0.0}, "routing.cascade.max_cost_ratio"),
    ({"cascade_max_cost_ratio": 1.01}, "routing.cascade.max_cost_ratio"),
    # one bad value refuses the whole call: the valid part is not applied either
    ({"cascade": True, "keepalive": True, "cascade_max_cost_ratio": 2.0},
     "routing.cascade.max_cost_ratio"),
])
def test_bad_values_are_refused_and_change_nothing(
        client: AdminClient, admin_daemon: RunningDaemon, kwargs: dict, field: str) -> None:
    before = client.get_policy()
    with pytest.raises(AdminError) as ei:
        client.set_policy(**kwargs)
    assert ei.value.kind == "invalid_argument"
    assert field in ei.value.message
    assert client.get_policy() == before
    r = admin_daemon.ctx.config.routing
    assert not r.cascade.enabled and not r.keepalive
    assert not (admin_daemon.daemon.data_dir / "managed.toml").exists()


def test_mask_paths(client: AdminClient, admin_daemon: RunningDaemon) -> None:
    def set_(policy: policy_pb2.Policy, *paths: str) -> policy_pb2.Policy:
        return client.call(client.policy.SetPolicy, policy_pb2.SetPolicyRequest(
            policy=policy, update_mask=field_mask_pb2.FieldMask(paths=list(paths))))

    # "cascade" sets all three fields
    p = set_(policy_pb2.Policy(cascade=policy_pb2.Cascade(
        enabled=True, quality_floor=0.7, max_cost_ratio=0.4)), "cascade")
    assert (p.cascade.enabled, p.cascade.quality_floor, p.cascade.max_cost_ratio) == \
        (True, 0.7, 0.4)
    # a leaf path changes that field only, whatever else the message carries
    p = set_(policy_pb2.Policy(cascade=policy_pb2.Cascade(enabled=False, quality_floor=0.1),
                               keepalive=True), "cascade.enabled")
    assert (p.cascade.enabled, p.cascade.quality_floor, p.keepalive) == (False, 0.7, False)
    # "cascade" with an unset message is a full replace: ratio 0 is refused
    with pytest.raises(AdminError) as ei:
        set_(policy_pb2.Policy(), "cascade")
    assert ei.value.kind == "invalid_argument"
    for bad in ("cascade.nope", "keepalive.on", "cascades"):
        with pytest.raises(AdminError) as ei:
            set_(policy_pb2.Policy(keepalive=True), bad)
        assert ei.value.kind == "invalid_argument" and bad in ei.value.message
    assert not admin_daemon.ctx.config.routing.keepalive
    # an empty mask replaces everything: what GetPolicy returned round-trips
    current = client.get_policy()
    current.keepalive = True
    current.cascade.enabled = True
    assert set_(current) == current
    assert admin_daemon.ctx.config.routing.keepalive


def test_set_policy_needs_something_to_change(client: AdminClient) -> None:
    with pytest.raises(AdminError) as ei:
        client.set_policy()
    assert ei.value.kind == "invalid_argument"
