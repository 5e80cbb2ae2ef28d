"""Pure checks behind the authorization model and the publish root: whom a credential acts for,
and which bundle paths an admin may publish (links out of the root included)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from cloud_service.auth import check_device, make_token
from cloud_service.domain import Credentials, Principal
from cloud_service.errors import InvalidInput, PermissionDenied
from cloud_service.settings import CloudSettings
from cloud_service.validation import check_bundle_dir

pytestmark = [pytest.mark.security, pytest.mark.unit]
TOKEN_SECRET = "tok-secret-of-at-least-32-bytes!"  # HS256 keys of 32+ bytes (RFC 7518)
S = CloudSettings(device_api_keys=[SecretStr("app-secret")],
                  device_token_secret=SecretStr(TOKEN_SECRET))


def test_a_device_token_is_its_own_device_and_nothing_else():
    who = check_device(Credentials(device_token=make_token(TOKEN_SECRET, "d-1")), "d-1", S)
    assert who == Principal("device", device_id="d-1") and who.stateful
    assert who.scope == "dev:d-1" and who.route_id == "d-1"
    with pytest.raises(PermissionDenied):
        check_device(Credentials(device_token=make_token(TOKEN_SECRET, "d-1")), "d-2", S)


def test_an_app_key_is_one_stateless_principal_whatever_device_it_names():
    a = check_device(Credentials(api_key="app-secret"), "d-1", S)
    b = check_device(Credentials(api_key="app-secret"), "d-2", S)
    assert a == b and a.kind == "app" and not a.stateful
    assert "app-secret" not in repr(a) and a.scope == a.route_id == f"key:{a.key_id}"


def test_auth_off_trusts_the_named_device():
    who = check_device(Credentials(), "d-9", CloudSettings(auth_required=False))
    assert who == Principal("open", device_id="d-9") and who.stateful


def test_bundle_paths_resolve_inside_the_root_only(tmp_path: Path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "v1").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, root / "link-out")
    assert check_bundle_dir(str(root / "v1"), root) == root / "v1"
    assert check_bundle_dir("v1", root) == root / "v1"  # relative to the root
    for bad in (str(root / "link-out"), str(outside), "../outside", "v1\x00", "x" * 5000):
        with pytest.raises(InvalidInput, match="publish root"):
            check_bundle_dir(bad, root)
