"""Model registry: publish, canary, promote and retire on both stores; stable, fair routing."""

from __future__ import annotations

import pytest

from cloud_service.domain import RegistryState
from cloud_service.errors import InvalidInput, NotFound
from cloud_service.registry import ModelRegistry, device_bucket, route
from cloud_service.store import Store

DEVICES = [f"device-{i}" for i in range(2000)]


@pytest.mark.core
def test_concurrent_publishes_from_two_replicas_each_get_a_revision(store: Store, arun) -> None:
    """Two registries on one store stand for two replicas; none of their changes is lost."""
    import asyncio

    async def body() -> None:
        a, b = ModelRegistry(store), ModelRegistry(store)
        await a.publish("v0", "/bundles/v0")
        versions = [f"v{i}" for i in range(1, 21)]
        await asyncio.gather(*(
            (a if i % 2 else b).publish(v, f"/bundles/{v}") for i, v in enumerate(versions)))
        st = await a.state()
        assert st.revision == 1 + len(versions)  # one distinct revision per change
        assert set(st.versions) == {"v0", *versions}
        assert st.current in versions

    arun(body)


@pytest.mark.core
def test_publish_canary_promote_retire_lifecycle(store: Store, arun) -> None:
    async def body() -> None:
        reg = ModelRegistry(store)
        assert await reg.state() == RegistryState()
        st = await reg.publish("v1", "/bundles/v1")
        assert (st.current, st.canary, st.revision) == ("v1", "", 1)
        st = await reg.publish("v2", "/bundles/v2", canary_share=0.2)
        assert (st.current, st.canary, st.canary_share, st.revision) == ("v1", "v2", 0.2, 2)
        assert st.versions == {"v1": "/bundles/v1", "v2": "/bundles/v2"}
        st = await reg.promote_canary()
        assert (st.current, st.canary, st.canary_share, st.revision) == ("v2", "", 0.0, 3)
        with pytest.raises(InvalidInput, match="current"):
            await reg.retire("v2")
        st = await reg.retire("v1")
        assert (st.versions, st.revision) == ({"v2": "/bundles/v2"}, 4)
        assert await reg.state() == st  # what publish returns is what a fresh read sees

    arun(body)


@pytest.mark.core
def test_new_current_ends_canary_and_retiring_canary_clears_it(store: Store, arun) -> None:
    async def body() -> None:
        reg = ModelRegistry(store)
        await reg.publish("v1", "/b/v1")
        await reg.publish("v2", "/b/v2", canary_share=0.5)
        st = await reg.publish("v3", "/b/v3")
        assert (st.current, st.canary, st.canary_share) == ("v3", "", 0.0)
        await reg.publish("v4", "/b/v4", canary_share=0.1)
        st = await reg.retire("v4")
        assert (st.current, st.canary, st.canary_share) == ("v3", "", 0.0)
        assert set(st.versions) == {"v1", "v2", "v3"}

    arun(body)


@pytest.mark.core
def test_refused_changes_leave_the_registry_untouched(store: Store, arun) -> None:
    async def body() -> None:
        reg = ModelRegistry(store)
        with pytest.raises(InvalidInput):
            await reg.publish("v1", "/b/v1", canary_share=0.1)  # nothing current to compare
        await reg.publish("v1", "/b/v1")
        before = await reg.state()
        for share in (1.0, -0.1, float("nan")):
            with pytest.raises(InvalidInput):
                await reg.publish("v2", "/b/v2", canary_share=share)
        for version in ("", " v2"):
            with pytest.raises(InvalidInput):
                await reg.publish(version, "/b/v2")
        with pytest.raises(InvalidInput):
            await reg.publish("v1", "/b/v1", canary_share=0.3)  # canary of itself
        with pytest.raises(InvalidInput):
            await reg.promote_canary()
        with pytest.raises(NotFound):
            await reg.retire("nope")
        assert await reg.state() == before

    arun(body)


@pytest.mark.unit
def test_route_is_deterministic_and_matches_the_share() -> None:
    state = RegistryState(current="v1", canary="v2", canary_share=0.2, versions={}, revision=3)
    first = [route(state, d) for d in DEVICES]
    assert first == [route(state, d) for d in DEVICES]
    share = first.count("v2") / len(DEVICES)
    assert abs(share - 0.2) < 0.03  # 2,000 draws: one standard deviation is ~0.009
    assert set(first) == {"v1", "v2"}


@pytest.mark.unit
def test_route_raising_the_share_only_adds_devices() -> None:
    low = RegistryState(current="v1", canary="v2", canary_share=0.1)
    high = RegistryState(current="v1", canary="v2", canary_share=0.4)
    on_low = {d for d in DEVICES if route(low, d) == "v2"}
    on_high = {d for d in DEVICES if route(high, d) == "v2"}
    assert on_low < on_high  # devices already on the canary stay there as it widens


@pytest.mark.unit
def test_route_without_canary_is_current_and_buckets_are_in_range() -> None:
    assert {route(RegistryState(current="v1"), d) for d in DEVICES} == {"v1"}
    no_share = RegistryState(current="v1", canary="v2", canary_share=0.0)
    assert {route(no_share, d) for d in DEVICES} == {"v1"}
    assert all(0.0 <= device_bucket(d) < 1.0 for d in DEVICES)


@pytest.mark.core
def test_a_newer_replica_reasserts_over_a_lagging_ones_write_back(store: Store, arun) -> None:
    """After a flush, a replica that had not caught up writes back an older state; one that had
    writes its own over it (revisions never go backwards), and a stale read changes nothing."""
    async def body() -> None:
        reg = ModelRegistry(store)
        await reg.publish("v1", "/bundles/v1")
        old = await reg.state()  # what the lagging replica still serves
        await reg.publish("v0", "/bundles/v0")
        new = await reg.publish("v2", "/bundles/v2", canary_share=0.25)
        assert new.canary == "v2" and new.revision == 3
        await store.registry_update({}, ("current", "revision", "canary", "canary_share",
                                         "version:v0", "version:v1", "version:v2"))  # a flush
        assert await reg.reassert(old) and await reg.state() == old
        assert not await reg.reassert(new, over=RegistryState())  # not what the registry holds
        assert await reg.reassert(new, over=old)
        assert await reg.state() == new
        assert not await reg.reassert(old, over=old)  # a stale read: the registry moved on

    arun(body)
