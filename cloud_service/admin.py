"""The service's admin and bundle operations: manifests and artifacts for devices, and the
registry (publish, status, promote, retire) for operators. A mixin of `RecommendationService`,
kept apart from the request path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from cloud_service.auth import require_admin
from cloud_service.domain import (
    ArtifactChunk,
    ArtifactRequest,
    ManifestInfo,
    ManifestRequest,
    Principal,
    PublishRequest,
    RegistryState,
    RetireRequest,
)
from cloud_service.errors import InvalidInput, NotFound, Unavailable
from cloud_service.metrics import Metrics
from cloud_service.model_pool import ModelPool
from cloud_service.models import LoadedModel
from cloud_service.registry import ModelRegistry
from cloud_service.settings import CloudSettings
from cloud_service.validation import check_bundle_dir

T = TypeVar("T")


class RegistryAdmin:
    """Operations on bundles and the registry; the host class provides the attributes below."""

    settings: CloudSettings
    metrics: Metrics
    registry: ModelRegistry
    pool: ModelPool
    bundle_root: Path
    _admit: Callable[[str, Principal], Awaitable[Principal]]
    _model: Callable[[str, Principal], LoadedModel]
    _safe: Callable[[str, Awaitable[Any], Any], Awaitable[Any]]

    async def get_manifest(self, req: ManifestRequest, who: Principal) -> ManifestInfo:
        """The manifest of the requested version, or of the one the registry routes to."""
        with self.metrics.track("get_manifest"):
            who = await self._admit(req.device_id, who)
            return self._model(req.model_version, who).manifest

    async def download_artifact(self, req: ArtifactRequest,
                                who: Principal) -> AsyncIterator[ArtifactChunk]:
        """The chunks of one bundle file, read lazily from disk."""
        with self.metrics.track("download_artifact"):
            who = await self._admit(req.device_id, who)
            model = self._model(req.model_version, who)
            path = model.artifact_path(req.name)
            if path is None or not path.is_file():
                raise NotFound(f"artifact {req.name!r} is not in bundle {model.version} "
                               f"(files: {', '.join(f.name for f in model.manifest.files)})")
        return _read_chunks(path, self.settings.chunk_bytes)

    async def publish(self, req: PublishRequest, who: Principal) -> RegistryState:
        """Admin: register a bundle as current (or as a canary); every replica switches to it."""
        with self.metrics.track("publish"):
            require_admin(who)
            path = check_bundle_dir(req.bundle_dir, self.bundle_root)
            if not 0.0 <= req.canary_share < 1.0:
                raise InvalidInput(f"canary_share must be in [0, 1) (got {req.canary_share})")
            return await self.pool.publish_local(str(path), req.canary_share)

    async def get_registry_status(self, who: Principal) -> RegistryState:
        """Admin: the registry as this replica serves it (current, canary, live versions)."""
        with self.metrics.track("registry"):
            require_admin(who)
            return self.pool.state

    async def promote(self, who: Principal) -> RegistryState:
        """Admin: the canary becomes current for every device; every replica switches to it."""
        with self.metrics.track("promote"):
            require_admin(who)
            return await self._registry_change(self.registry.promote_canary())

    async def retire(self, req: RetireRequest, who: Principal) -> RegistryState:
        """Admin: forget a version that is not current (ending its canary if it is one)."""
        with self.metrics.track("retire"):
            require_admin(who)
            if not req.version or len(req.version) > 256:
                raise InvalidInput("retire needs the model version to retire (at most 256 "
                                   "characters)")
            return await self._registry_change(self.registry.retire(req.version))

    async def _registry_change(self, change: Awaitable[RegistryState]) -> RegistryState:
        """Write a change to the shared registry, then switch this replica to it at once."""
        state = await self._safe("registry", change, None)
        if state is None:
            raise Unavailable("the model registry (store) is unreachable: try again later")
        await self.pool.refresh(state)
        return self.pool.state


async def _read_chunks(path: Path, size: int) -> AsyncIterator[ArtifactChunk]:
    total = path.stat().st_size
    with open(path, "rb") as f:
        offset = 0
        while chunk := await asyncio.to_thread(f.read, size):
            yield ArtifactChunk(chunk, offset, total)
            offset += len(chunk)
