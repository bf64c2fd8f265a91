"""Shared pytest fixtures and helpers."""

from __future__ import annotations

import time

import pytest
import torch
from pipeline_helpers import ENV, ROOT, fresh_clone, restore_editable_install, run_shell
from torch import nn


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BN non-trivial affine params and running stats, so equivalence tests see them."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator))
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)


@pytest.fixture(scope="session")
def main_run(tmp_path_factory):
    """The README's main command on a fresh clone (at the ci scale): `bash workflow/scripts/reproduce.sh`.

    The clone lives under a path with a space and shares this checkout's virtualenv; its HOME is
    a fresh directory (setup links the SLURM profile there). Several end-to-end tests read it.
    """
    path = fresh_clone(tmp_path_factory.mktemp("main"), "splitnet clone")  # a space, on purpose
    (path / ".venv").symlink_to(ROOT / ".venv")
    home = tmp_path_factory.mktemp("home")
    env = {**ENV, "HOME": str(home)}
    start = time.perf_counter()
    try:
        proc = run_shell("bash workflow/scripts/reproduce.sh --config scale=ci", path, env=env)
    finally:
        restore_editable_install()
    return {
        "path": path,
        "env": env,
        "home": home,
        "stdout": proc.stdout,
        "seconds": time.perf_counter() - start,
        "results": path / "results",
        "config": ["--config", "scale=ci"],
    }
