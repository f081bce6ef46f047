"""The README is a contract: its set-up commands and every `cai` command it shows must exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_two_setup_commands_exist_in_makefile_and_ci():
    assert "make demo" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(
        r"^test:", makefile, re.MULTILINE
    )
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_cai_command_in_readme_exists():
    commands = set(re.findall(r"`?cai ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)", README))
    assert commands, "the README shows no cai commands"
    for command in sorted(commands):
        words = command.split()
        for n in (len(words), 1):  # "constitution init" or a top-level command followed by args
            r = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "from constitutional.cli import main; main()",
                    *words[:n],
                    "--help",
                ],
                capture_output=True,
                text=True,
            )
            if r.returncode == 0:
                break
        assert r.returncode == 0, f"README shows `cai {command}` but it does not exist: {r.stderr}"


def test_cli_version_and_help_list_commands():
    r = subprocess.run(
        [sys.executable, "-c", "from constitutional.cli import main; main()", "--help"],
        capture_output=True,
        text=True,
    )
    for name in ("constitution", "generate", "chat", "serve", "sl-cai"):
        assert name in r.stdout
