"""Committed results carry no machine-specific absolute paths (they must read the same in any clone)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSOLUTE = re.compile(r"(?<![\w.])/(root|tmp|home|work|scratch|Users|var/folders)/")
COMMITTED_RESULTS = ("docs/results/", "benchmarks/results/")


def test_committed_results_have_no_absolute_paths():
    listed = subprocess.run(["git", "ls-files", *COMMITTED_RESULTS], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode:
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in listed.stdout.split()]
    assert files, "no committed results found"
    offending = []
    for path in files:
        if path.suffix in (".png", ".pdf"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if ABSOLUTE.search(line):
                offending.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not offending, "\n".join(offending)
