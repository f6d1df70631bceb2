"""The README's tour, as typed: its console blocks are run command by command in an empty folder at 120
columns, and every verdict, next-step and table row the README shows must be what the command prints
(numbers that depend on timing are elided there with '...'). Each line is split as a shell splits it;
`normonnx` runs in-process through its click command (the same parsing, output and exit codes, without
a torch import and a cold exporter per command: 20 s to 8 s), `python` in a subprocess. The installed
script itself runs in tests/test_cli.py and in CI's wheel check."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import Run, run_cli

README = Path(__file__).resolve().parents[1] / "README.md"
CHECKED = re.compile(r"^(PASSED|FAILED|NOT CHECKED|next:|#  |\d  |wrote |  (spec|variant|opset|ops) )")


def tour() -> list[tuple[str, list[str]]]:
    """(command, the output lines shown under it) for each '$ ' line of the tour's console blocks."""
    text = README.read_text()
    text = text[text.index("## Quick start"):text.index("Which verdict answers what")]
    out: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:].split("  #")[0].strip(), []))
            elif out:
                out[-1][1].append(line.rstrip())
    return out


def _run(command: str, cwd: Path) -> Run | subprocess.CompletedProcess:
    argv = shlex.split(command)
    if argv[0] == "normonnx":
        return run_cli(*argv[1:], cwd=cwd, columns=120)
    assert argv[0] == "python", command  # the tour types only these two
    return subprocess.run([sys.executable, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "120"})


def test_the_tour_is_found():
    commands = [c for c, _ in tour()]
    assert commands[0] == "normonnx export --norm gn --groups 4"
    assert "normonnx fix block.onnx -o fixed.onnx" in commands and any(c.startswith("python -c") for c in commands)


def test_the_readme_tour_prints_what_the_readme_shows(tmp_path):
    """Every command in order, in one folder: later ones read the files earlier ones wrote."""
    for command, shown in tour():
        if command.startswith("normonnx bench"):
            continue  # timings: the tests of bench check its output, a figure here would only be noise
        proc = _run(command, tmp_path)
        assert proc.returncode in (0, 1), (command, proc.stderr[-2000:])
        printed = [line.rstrip() for line in proc.stdout.splitlines()]
        for line in shown:
            if CHECKED.match(line):
                assert line in printed, (command, line, proc.stdout)
