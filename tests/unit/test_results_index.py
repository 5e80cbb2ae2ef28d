"""bench/results holds only indexed files: each is named in its README, each name exists."""

import re

import pytest

from tandemrec.paths import REPO_ROOT

pytestmark = pytest.mark.unit
RESULTS = REPO_ROOT / "bench" / "results"


def _expand(pattern: str) -> list[str]:
    """`a.{json,md}` -> a.json, a.md (the index's shorthand)."""
    m = re.search(r"\{([^}]*)\}", pattern)
    if not m:
        return [pattern]
    return [name for alt in m.group(1).split(",")
            for name in _expand(pattern[:m.start()] + alt + pattern[m.end():])]


def _indexed() -> tuple[set[str], list[str]]:
    names, globs = set(), []
    for cell in re.findall(r"`([^`]+)`", (RESULTS / "README.md").read_text()):
        if "/" in cell or " " in cell:
            continue  # a command or a path elsewhere, not a file here
        for name in _expand(cell):
            if "*" in name:
                globs.append(name)
            else:
                names.add(name)
    return names, globs


def test_every_result_file_is_indexed_and_every_indexed_file_exists():
    names, globs = _indexed()
    present = {p.name for p in RESULTS.iterdir() if p.name != "README.md"}
    covered = names | {p.name for g in globs for p in RESULTS.glob(g)}
    assert sorted(present - covered) == [], "files in bench/results missing from its README"
    assert sorted(names - present) == [], "bench/results/README.md names missing files"
    assert all(list(RESULTS.glob(g)) for g in globs)
