"""The package's layers (docs/splitnet.md): the paper's math imports nothing of training or the
pipeline, and training and data import nothing of the pipeline."""

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "splitnet"
MATH = {
    "spec",
    "topology",
    "assignment",
    "regularizers",
    "reduced_gradient",
    "overlap",
    "partition",
    "model",
    "branches",
    "split",
    "counting",
    "ssl",
    "convergence",
    "metrics",
    "class_similarity",
}
TRAINING = {"engine", "run_control", "augment", "data", "artifacts", "io", "parallel"}
PIPELINE_MODULES_IN_TRAINING = {Path("parallel/finetune.py")}  # the finetune stage, model-parallel
IMPORT = re.compile(r"^\s*from (\.+|splitnet\.)([a-z_]*)", re.MULTILINE)


def _layer(name: str) -> int:
    return 0 if name in MATH else 1 if name in TRAINING else 2


def test_each_layer_imports_only_from_the_layers_below():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        top = relative.parts[0].removesuffix(".py")
        layer = 2 if relative in PIPELINE_MODULES_IN_TRAINING else _layer(top)
        for dots, name in IMPORT.findall(path.read_text()):
            if len(dots) == 1 and len(relative.parts) > 1:
                continue  # a sibling inside the same subpackage (data/, parallel/)
            if name and _layer(name) > layer:
                wrong.append(f"{relative} imports {name}")
    assert not wrong, wrong
    assert (PACKAGE / "parallel" / "finetune.py").is_file()
