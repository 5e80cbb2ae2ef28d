"""README.md's fenced blocks and the rules by which tests/integration/test_readme.py runs them.

Every ```bash line and every ```python block must match exactly one rule; a block or command
without a rule fails the tests, so a new README block cannot slip in untested. Rules say how a
command runs: `as-is`, or `substituted` with the table SUBST (small generated data, a few
epochs, a temporary artifacts directory, ephemeral ports). `make demo` and `make test` are not
run by the README test (CI runs `make test`); they must be the README's first two commands.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from tandemrec.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```[ \t]*$", re.S | re.M)
DEVICE_MARK = "<!-- device-snippet:"
FIRST_COMMANDS = ["make demo", "make test"]

# (name, pattern over the command without its comment, how it runs)
RULES: list[tuple[str, str, str]] = [
    ("make", r"make (demo|test)", "not run here: the first two commands (CI runs make test)"),
    ("export", r"export( [A-Z_]+=\S+)+", "as-is: sets the environment of the commands after it"),
    ("data", r"tandem data", "as-is"),
    ("help", r"tandem( [a-z]+)? --help", "as-is"),
    ("pipeline", r"tandem pipeline --dataset \S+ --config \S+ --run-dir \S+",
     "substituted: a generated CSV, configs/smoke.yaml and a few epochs, a temp artifacts dir"),
    ("serve", r"tandem serve --bundle \S+",
     "substituted: temp artifacts dir, ephemeral ports; runs in the background until the end"),
    ("publish", r"tandem publish \S+ --url \S+",
     "substituted: temp artifacts dir, the served replica's HTTP address"),
    ("compose", r"([A-Z_]+=\S+ )+docker compose up( --build)?",
     "checked, not run (no Docker in CI): the variables set are the ones docker-compose.yml "
     "requires, and the bundle it serves is the one the README names"),
    ("device-snippet", r"python:device-snippet",
     "substituted: cloud:50051 -> the served replica, bundle/ -> the pipeline's bundle"),
]


@dataclass
class Step:
    rule: str
    command: str  # a bash command, or "python:<kind>" for a python block
    code: str = ""  # the python block's text


def blocks(text: str | None = None) -> list[tuple[str, str, str]]:
    """(language, body, the line before the fence) for every fenced block, in order."""
    text = README.read_text() if text is None else text
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        out.append((m.group(1), m.group(2), before))
    return out


def commands(body: str) -> list[str]:
    """The commands of a bash block, comments and blank lines dropped, tokens re-joined."""
    out = []
    for line in body.splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            out.append(" ".join(tokens))
    return out


def rule_for(command: str) -> str:
    """The one rule whose pattern matches `command` in full; AssertionError otherwise."""
    hits = [name for name, pattern, _ in RULES if re.fullmatch(pattern, command)]
    assert len(hits) == 1, (f"README command {command!r} matches rules {hits}: add a rule to "
                            "tests/readme_blocks.py and run it in tests/integration/test_readme.py")
    return hits[0]


def steps(text: str | None = None) -> list[Step]:
    """Every README command and snippet with its rule, in README order.

    Blocks without a language are pictures and trees (never run); any other language than
    bash or python has no rule and fails.
    """
    out = []
    for lang, body, before in blocks(text):
        if lang == "":
            continue
        if lang == "bash":
            out += [Step(rule_for(c), c) for c in commands(body)]
        elif lang == "python":
            kind = "device-snippet" if before.startswith(DEVICE_MARK) else "unmarked"
            out.append(Step(rule_for(f"python:{kind}"), f"python:{kind}", body))
        else:
            raise AssertionError(f"README block in {lang!r} has no rule (bash and python only)")
    return out
