"""The README and docs/ stay true: every script command they show parses, and no figure goes stale."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import test_clap_modelscope as eval_script
import train_hyperbolic_clap as train_script

ROOT = Path(__file__).resolve().parents[1]


SCRIPTS = {"train_hyperbolic_clap.py": train_script, "test_clap_modelscope.py": eval_script}


COMMAND = re.compile(r"python (train_hyperbolic_clap\.py|test_clap_modelscope\.py)\b")


def documented_commands(text: str) -> list[str]:
    """Every ``python train_hyperbolic_clap.py ...`` / ``python test_clap_modelscope.py ...`` of a
    markdown page: lines of fenced blocks (backslash continuations joined, ``#`` comments and
    whatever follows ``&&`` or ``;`` dropped), and inline code spans (which may wrap)."""
    commands = []
    parts = re.split(r"^```.*$", text, flags=re.M)
    for k, part in enumerate(parts):
        if k % 2:  # inside a fence
            for line in part.replace("\\\n", " ").splitlines():
                match = COMMAND.search(line)
                if match:
                    commands.append(re.split(r"\s#|&&|;", line[match.start():])[0])
        else:
            for span in re.findall(r"`([^`]+)`", part):
                match = COMMAND.search(span)
                if match:
                    commands.append(" ".join(span[match.start():].split()))
    return commands


def test_commands_in_readme_and_docs_parse():
    parsed = 0
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for command in documented_commands(page.read_text(encoding="utf-8")):
            argv = shlex.split(command)[2:]
            if "--help" in argv or "..." in argv or any("<" in a for a in argv):
                continue  # --help exits; "..." and <placeholders> stand for the reader's own flags
            SCRIPTS[shlex.split(command)[1]].parse_args(argv)  # a usage error exits: the test fails
            parsed += 1
    assert parsed >= 20


def test_readme_quotes_no_test_counts_or_timings():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not re.search(r"\b\d+ tests\b|\(\d+ tests\)|\d+ s of test time", readme)
