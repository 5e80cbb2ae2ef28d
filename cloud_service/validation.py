"""Request validation: every rule names the field, the value and what is allowed.

Pure functions over domain types, so the same messages reach HTTP and gRPC clients.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from cloud_service.domain import RecommendFullRequest, RecommendRequest
from cloud_service.errors import InvalidInput
from cloud_service.settings import CloudSettings

_DEVICE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_REQUEST_ID_MAX = 128
_PATH_MAX = 4096  # Linux PATH_MAX; NAME_MAX below: longer paths can only fail in the OS
_NAME_MAX = 255


def check_device_id(device_id: str) -> None:
    if not _DEVICE_ID.match(device_id or ""):
        raise InvalidInput("device_id must be 1 to 128 characters of letters, digits, '.', '_', "
                           f"':' or '-' (got {device_id[:40]!r})")


def _check_common(device_id: str, request_id: str, k: int, s: CloudSettings) -> None:
    check_device_id(device_id)
    if len(request_id) > _REQUEST_ID_MAX:
        raise InvalidInput(f"request_id is longer than {_REQUEST_ID_MAX} characters")
    if not 1 <= k <= s.max_k:
        raise InvalidInput(f"k must be between 1 and {s.max_k} (got {k})")


def _check_tokens(name: str, tokens: tuple[int, ...], n_intents: int) -> None:
    bad = [t for t in tokens if not 1 <= t <= n_intents]
    if bad:
        raise InvalidInput(f"{name} holds unknown intent tokens {bad[:5]}: this model version "
                           f"has tokens 1..{n_intents}")


def check_recommend(req: RecommendRequest, n_intents: int, s: CloudSettings) -> None:
    """Collaborative request: known tokens, matching weights, sizes within the limits."""
    _check_common(req.device_id, req.request_id, req.k, s)
    if not req.intent_tokens:
        raise InvalidInput("intent_tokens is empty: send the device's top intent tokens")
    if len(req.intent_tokens) > s.max_intent_tokens:
        raise InvalidInput(f"too many intent_tokens: {len(req.intent_tokens)} "
                           f"(at most {s.max_intent_tokens})")
    if len(set(req.intent_tokens)) != len(req.intent_tokens):
        raise InvalidInput("intent_tokens has duplicates")
    if len(req.intent_weights) != len(req.intent_tokens):
        raise InvalidInput(f"intent_weights has {len(req.intent_weights)} values for "
                           f"{len(req.intent_tokens)} intent_tokens: send one weight per token")
    if any(not math.isfinite(w) or w < 0 for w in req.intent_weights):
        raise InvalidInput("intent_weights must be finite and non-negative")
    if len(req.coarse_history) > s.history_cap:
        raise InvalidInput(f"coarse_history has {len(req.coarse_history)} tokens "
                           f"(at most {s.history_cap})")
    _check_tokens("intent_tokens", req.intent_tokens, n_intents)
    _check_tokens("coarse_history", req.coarse_history, n_intents)


def check_recommend_full(req: RecommendFullRequest, n_items: int, s: CloudSettings) -> None:
    """Cloud-full request: a non-empty history of known item ids."""
    _check_common(req.device_id, req.request_id, req.k, s)
    if not req.item_history:
        raise InvalidInput("item_history is empty: cloud-full ranking needs the history")
    if len(req.item_history) > s.max_history:
        raise InvalidInput(f"item_history has {len(req.item_history)} items "
                           f"(at most {s.max_history})")
    bad = [i for i in req.item_history if not 1 <= i <= n_items]
    if bad:
        raise InvalidInput(f"item_history holds unknown item ids {bad[:5]}: this model version "
                           f"has items 1..{n_items}")


def check_bundle_dir(bundle_dir: str, root: Path) -> Path:
    """The resolved bundle directory if it lies under `root`, else InvalidInput.

    One message for every refusal (NUL byte, over-long, outside the root, missing, not a
    directory), so an admin request cannot probe which server paths exist.
    """
    refused = InvalidInput("bundle_dir must name a bundle directory under the server's "
                           "publish root (TANDEM_CLOUD_BUNDLE_ROOT)")
    if (not bundle_dir or "\x00" in bundle_dir or len(bundle_dir) > _PATH_MAX
            or any(len(part) > _NAME_MAX for part in bundle_dir.split("/"))):
        raise refused
    try:  # relative paths are relative to the root, not to the server's working directory
        path = Path(os.path.realpath(root / bundle_dir))
        inside = path.is_relative_to(root) and path.is_dir()
    except (OSError, ValueError):
        raise refused from None
    if not inside:
        raise refused
    return path
