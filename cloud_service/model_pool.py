"""The versions one replica holds, kept in step with the shared registry.

Replicas poll the registry; when it changes they load the new versions in a worker thread and
only then swap the routing state in one assignment, so requests never see a version that is
routed to but not loaded, and a publish needs no restart and fails no request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cloud_service.domain import RegistryState
from cloud_service.errors import InvalidInput, Unavailable
from cloud_service.metrics import Metrics
from cloud_service.models import LoadedModel, load_model
from cloud_service.registry import ModelRegistry, route
from tandem_contract.bundle import BundleError

log = logging.getLogger("tandem.cloud")
Safe = Callable[[str, Awaitable[Any], Any], Awaitable[Any]]


class ModelPool:
    """Loaded versions (most recent last) and the registry state they serve."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics, *, keep: int, safe: Safe,
                 on_evict: Callable[[LoadedModel], None] | None = None,
                 loader: Callable[[str], LoadedModel] = load_model) -> None:
        self.registry, self.metrics, self.keep, self._safe = registry, metrics, keep, safe
        self.on_evict, self._loader = on_evict, loader
        self.state = RegistryState()
        self.ready = False
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._failed: dict[str, str] = {}  # version -> bundle dir that failed to load
        self._lock = asyncio.Lock()  # one refresh at a time

    def versions(self) -> list[str]:
        return list(self._models)

    def models(self) -> list[LoadedModel]:
        return list(self._models.values())

    def current(self) -> LoadedModel | None:
        return self._models.get(self.state.current)

    def resolve(self, version: str, route_id: str) -> LoadedModel | None:
        """The asked version if loaded; with none asked, the version the registry routes
        `route_id` (the authenticated principal's, see `Principal.route_id`) to."""
        if version:
            return self._models.get(version)
        return self._models.get(route(self.state, route_id)) or self.current()

    async def _load(self, version: str, bundle_dir: str) -> bool:
        if version in self._models:
            return True
        if self._failed.get(version) == bundle_dir:
            return False  # do not re-verify a broken bundle every poll
        try:
            model = await asyncio.to_thread(self._loader, bundle_dir)
        except (BundleError, OSError, ValueError, KeyError, RuntimeError) as exc:
            self._failed[version] = bundle_dir
            self.metrics.reloads.labels("failed").inc()
            log.error("model version %s from %s failed to load, keeping the versions already "
                      "served: %s", version, bundle_dir, exc)
            return False
        if model.version != version:
            log.error("bundle %s declares version %s, registry says %s: not loaded",
                      bundle_dir, model.version, version)
            self._failed[version] = bundle_dir
            return False
        self._models[version] = model
        self.metrics.reloads.labels("ok").inc()
        log.info("loaded model version %s from %s", version, bundle_dir)
        return True

    async def refresh(self, state: RegistryState | None = None) -> None:
        """Load what the registry routes to, then switch to it atomically."""
        async with self._lock:
            if state is None:
                state = await self._safe("registry", self.registry.state(), None)
            if state is not None and self.state.current and state.revision < self.state.revision:
                # Emptied (Redis restarted or was flushed), or written back by a replica that
                # had not yet caught up with the last change: revisions never go backwards.
                await self._reassert(state if state.current else None)
                return
            if state is None or not state.current:
                return  # store down or empty registry: keep serving what is loaded
            if state.revision == self.state.revision and state.current in self._models:
                return
            if not await self._load(state.current, state.versions.get(state.current, "")):
                return
            canary_ok = not state.canary or await self._load(
                state.canary, state.versions.get(state.canary, ""))
            if not canary_ok:  # serve everyone from the current version until it loads
                state = RegistryState(state.current, "", 0.0, state.versions, state.revision)
            if self.state.current != state.current:
                log.info("now serving model version %s", state.current)
            self.state = state
            self._evict()
            self.metrics.versions.set(len(self._models))

    async def _reassert(self, over: RegistryState | None) -> None:
        """The registry lost its state (Redis restarted or was flushed): write ours back."""
        written = await self._safe("registry", self.registry.reassert(self.state, over), False)
        if written:
            log.warning("the model registry was %s: re-asserted current %s (revision %d)",
                        "empty" if over is None else f"behind (revision {over.revision})",
                        self.state.current, self.state.revision)

    def _evict(self) -> None:
        live = {self.state.current, self.state.canary}
        while len(self._models) > max(self.keep, len(live - {""})):
            old = next((v for v in self._models if v not in live), None)
            if old is None:
                return
            model = self._models.pop(old)
            log.info("unloaded model version %s", old)
            if self.on_evict:
                self.on_evict(model)

    async def publish_local(self, bundle_dir: str, canary_share: float = 0.0) -> RegistryState:
        """Verify and load a bundle here, then record it in the shared registry."""
        path = str(Path(bundle_dir).resolve())
        if not Path(path).is_dir():
            raise InvalidInput(f"bundle directory {bundle_dir!r} does not exist on the server")
        try:
            model = await asyncio.to_thread(self._loader, path)
        except (BundleError, OSError, ValueError, KeyError) as exc:
            raise InvalidInput(f"bundle {bundle_dir!r} refused: {exc}") from exc
        self._failed.pop(model.version, None)
        self._models[model.version] = model
        self._models.move_to_end(model.version)
        state = await self._safe("registry", self.registry.publish(
            model.version, path, canary_share=canary_share), None)
        if state is None:
            raise Unavailable("the model registry (store) is unreachable: publish again later")
        await self.refresh(state)
        return self.state
