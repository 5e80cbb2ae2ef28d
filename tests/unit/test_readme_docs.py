"""README.md and docs/: size, the two first commands, generated tables, a rule per block, links.

The README's commands themselves run in tests/integration/test_readme.py.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tandemrec.paths import REPO_ROOT
from tests.readme_blocks import DEVICE_MARK, FIRST_COMMANDS, README, blocks, commands, steps

pytestmark = pytest.mark.unit

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))


def test_readme_is_at_most_12_kb() -> None:
    size = len(README.read_bytes())  # issue 21: "at most 12 KB", read as 12,000 bytes
    assert size <= 12_000, f"README.md is {size:,} bytes; move detail to docs/"


def test_readme_begins_with_make_demo_and_make_test() -> None:
    lang, body, _ = blocks()[0]
    assert lang == "bash" and commands(body) == FIRST_COMMANDS
    head = README.read_text().split("```bash", 1)[0]
    assert "\n## " not in head, "the two commands come before any section"


def test_every_readme_block_has_a_rule() -> None:
    plan = steps()  # raises on a command or block without a rule
    assert [s.command for s in plan[:2]] == FIRST_COMMANDS
    assert README.read_text().count(DEVICE_MARK) == 1
    assert "device-snippet" in {s.rule for s in plan}


def test_a_block_without_a_rule_fails() -> None:
    with pytest.raises(AssertionError, match="no-such-command"):
        steps("```bash\nmake demo\nno-such-command --now\n```\n")
    with pytest.raises(AssertionError, match="rule"):
        steps("```python\nprint('unmarked')\n```\n")
    with pytest.raises(AssertionError, match="rule"):
        steps("```sh\ntandem data\n```\n")


def test_readme_tables_are_generated_from_bench_results() -> None:
    spec = importlib.util.spec_from_file_location("lift_table", REPO_ROOT / "scripts" /
                                                  "lift_table.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = README.read_text()
    want = mod.headline_tables(mod.DATASETS, REPO_ROOT / "bench" / "results")
    assert mod.readme_block(text) == want, "run: python scripts/lift_table.py --readme"
    for name in ("MovieLens-100K", "MovieLens-1M", "Amazon Beauty"):
        assert f"### {name}" in text


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_point_to_files_in_the_repo(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # links only outside code
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(REPO_ROOT), f"{doc.name}: {target} leaves the repository"
        assert path.exists(), f"{doc.name}: {target} does not exist"


def test_docs_exist() -> None:
    names = {p.name for p in DOCS}
    assert {"architecture.md", "experiments.md", "performance.md", "operations.md",
            "security.md"} <= names
