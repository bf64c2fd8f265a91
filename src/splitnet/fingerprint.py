"""What a stage's output depends on, as one digest: every reuse of earlier work is bound to it.

A stage's output is a function of (1) its resolved config sections, (2) the bytes of its input
files (the prepared data's manifest, which itself holds the sha256 of every split; the source
model) and (3) the code that computes results. A checkpoint is resumed only when the digest it
was written with equals the digest of the stage about to run; otherwise the stage starts fresh.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

# Modules that only present results (tables, figures, the CLI, records, tracking, checks):
# editing them changes no trained number, so they do not invalidate checkpoints.
PRESENTATION_MODULES = frozenset(
    {
        "__init__.py",
        "__main__.py",
        "cli.py",
        "tables.py",
        "figures.py",
        "records.py",
        "mlflow_import.py",
        "run_summaries.py",
        "mlflow_store.py",
        "latex.py",
        "reports.py",
        "source_checks.py",
        "summary.py",
        "arch_check.py",
        "validate.py",
        "outputs.py",
        "claims.py",
        "study.py",
    }
)


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the package's result-computing source files (path + bytes, sorted)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative in PRESENTATION_MODULES:
            continue
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def stage_digest(config: dict[str, Any], input_sha256: Mapping[str, str | None]) -> str:
    """Digest of a stage's config sections, its input files' SHA-256 (by input name) and the code version."""
    payload = {"config": config, "inputs": dict(sorted(input_sha256.items())), "code": code_digest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
