"""Model registry: which bundle versions are live, which is current, and which devices see a canary.

The state lives in one hash of the Store so every replica routes the same way; `route` is pure so
a device lands on the same side of a canary whichever replica answers it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

from cloud_service.domain import RegistryState
from cloud_service.errors import InvalidInput, NotFound, Unavailable
from cloud_service.store import Store

_VERSION_PREFIX = "version:"
_CANARY_FIELDS = ("canary", "canary_share")
_CAS_ATTEMPTS = 20
_Change = tuple[dict[str, str], tuple[str, ...]]  # fields to set, fields to delete


def state_from_fields(fields: dict[str, str]) -> RegistryState:
    """Decode the registry hash; missing fields mean "nothing published yet"."""
    versions = {
        k[len(_VERSION_PREFIX):]: v for k, v in fields.items() if k.startswith(_VERSION_PREFIX)
    }
    canary = fields.get("canary", "")
    return RegistryState(
        current=fields.get("current", ""),
        canary=canary,
        canary_share=float(fields.get("canary_share", "0") or 0) if canary else 0.0,
        versions=versions,
        revision=int(fields.get("revision", "0") or 0),
    )


def device_bucket(device_id: str) -> float:
    """A uniform, stable number in [0, 1) for a device: the first 8 bytes of its SHA-256."""
    digest = hashlib.sha256(device_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def route(state: RegistryState, device_id: str) -> str:
    """The version serving this device: the canary for buckets below its share, else current."""
    if state.canary and device_bucket(device_id) < state.canary_share:
        return state.canary
    return state.current


class ModelRegistry:
    """Publishes, canaries, promotes and retires bundle versions in the Store's registry hash.

    Each change reads the hash, checks it, and writes the changed fields with the revision
    bumped, as a compare-and-set on the revision it read: when another replica changed the
    registry in between, the change is re-read, re-checked and retried. Two publishes at the same
    instant therefore get distinct revisions, and every replica's poller sees both.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = asyncio.Lock()

    async def state(self) -> RegistryState:
        return state_from_fields(await self._store.registry_load())

    async def publish(
        self, version: str, bundle_dir: str, *, canary_share: float = 0.0
    ) -> RegistryState:
        """Register a version as current (share 0) or as the canary for that share of devices."""
        if not version or not version.strip() or version != version.strip():
            raise InvalidInput(f"model version must be a non-empty trimmed string, got {version!r}")
        if not bundle_dir:
            raise InvalidInput(f"bundle directory for version {version!r} is empty")
        if not (isinstance(canary_share, int | float) and 0.0 <= canary_share < 1.0):
            raise InvalidInput(f"canary_share must be in [0, 1), got {canary_share!r}")

        def change(st: RegistryState) -> _Change:
            fields = {_VERSION_PREFIX + version: bundle_dir}
            if canary_share == 0.0:
                fields["current"] = version
                return fields, _CANARY_FIELDS  # a new current version ends any running canary
            if not st.current:
                raise InvalidInput("no current version to canary against; publish one first")
            if version == st.current:
                raise InvalidInput(f"version {version!r} is already current")
            fields["canary"] = version
            fields["canary_share"] = repr(float(canary_share))
            return fields, ()

        return await self._change(change)

    async def promote_canary(self) -> RegistryState:
        """Make the canary the current version for every device; the old current stays listed."""
        def change(st: RegistryState) -> _Change:
            if not st.canary:
                raise InvalidInput("there is no canary to promote")
            return {"current": st.canary}, _CANARY_FIELDS

        return await self._change(change)

    async def retire(self, version: str) -> RegistryState:
        """Forget a version (ending its canary if it is one); the current version cannot go."""
        def change(st: RegistryState) -> _Change:
            if version not in st.versions:
                raise NotFound(f"unknown model version {version!r}")
            if version == st.current:
                raise InvalidInput(f"cannot retire the current version {version!r}")
            delete: tuple[str, ...] = (_VERSION_PREFIX + version,)
            return {}, delete + (_CANARY_FIELDS if version == st.canary else ())

        return await self._change(change)

    async def reassert(self, state: RegistryState, over: RegistryState | None = None) -> bool:
        """Write a replica's last-known state into an empty registry (after a Redis restart
        or FLUSHALL), or `over` an older one that a lagging replica wrote back there; a no-op,
        False, when the registry has moved on from what the caller read."""
        fields = {_VERSION_PREFIX + v: d for v, d in state.versions.items()}
        fields.update(current=state.current, revision=str(max(1, state.revision)))
        if state.canary:
            fields.update(canary=state.canary, canary_share=repr(float(state.canary_share)))
        stale: tuple[str, ...] = ()
        if over is not None:  # the older state's fields that ours does not have
            old = [_VERSION_PREFIX + v for v in over.versions]
            old += list(_CANARY_FIELDS) if over.canary else []
            stale = tuple(k for k in old if k not in fields)
        async with self._lock:  # compare-and-set on what was read: of racing replicas, one writes
            return await self._store.registry_update(
                fields, stale, expect_revision=0 if over is None else over.revision)

    async def _change(self, change: Callable[[RegistryState], _Change]) -> RegistryState:
        """Read, check and write with compare-and-set, re-reading when another writer won."""
        async with self._lock:
            for _ in range(_CAS_ATTEMPTS):
                st = await self.state()
                fields, delete = change(st)
                done = await self._commit(st, fields, delete)
                if done is not None:
                    return done
        raise Unavailable("the model registry kept changing under this update: retry")

    async def _commit(
        self, st: RegistryState, fields: dict[str, str], delete: tuple[str, ...]
    ) -> RegistryState | None:
        """Write the change if the registry is still at `st`'s revision; None if it moved."""
        fields = {**fields, "revision": str(st.revision + 1)}
        if not await self._store.registry_update(fields, delete, expect_revision=st.revision):
            return None
        return await self.state()

