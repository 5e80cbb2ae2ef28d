"""Session fixtures shared by the core and integration tiers: a real redis-server, a real
3-master Redis Cluster, a bundle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bundles import build_bundle, clone_bundle
from tests.redis_server import RedisClusterServer, RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole session; fails loudly if redis-server is missing."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """A private 3-master Redis Cluster for the whole session (about 2 s to form)."""
    with RedisClusterServer() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle from the real pipeline on a small generated dataset, built once."""
    return build_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="session")
def sid_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The semantic-id student's bundle pair (``run/bundle-sid``) of a run like `bundle`'s."""
    return build_bundle(tmp_path_factory.mktemp("sid"), sid=True).parent / "bundle-sid"


@pytest.fixture(scope="session")
def sid_bundle_two_hashes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As `sid_bundle`, its student with two hashed rows per item (student.hash_count=2)."""
    root = tmp_path_factory.mktemp("sid2")
    return build_bundle(root, sid=True, hash_count=2).parent / "bundle-sid"


@pytest.fixture(scope="session")
def bundle_v2(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model under another version, for publish, canary and reload tests."""
    return clone_bundle(bundle, tmp_path_factory.mktemp("v2") / "bundle", "v2-test")
