"""What a stage's output depends on, as one digest: every reuse of earlier work is bound to it.

A stage's output is a function of (1) its resolved config sections, (2) the bytes of its input
files (the prepared data's manifest, which itself holds the sha256 of every split; the source
model) and (3) the code that computes it. A checkpoint is resumed only when the digest it was
written with equals the digest of the stage about to run; otherwise the stage starts fresh.

The code part is per stage: the code of a stage is the function that runs it (its *entry*,
``module:function``, declared with the stage in ``config.STAGES``), the top-level definitions
of that module the function uses, and every module of the package those import, transitively
(found by reading the source, not by importing it). Each file counts by its syntax tree, so a
comment or formatting change is no change. Snakemake passes the same digest as a rule param,
so editing one module reruns exactly the jobs whose code includes it (and their dependents).
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable, Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

PACKAGE = "splitnet"
PACKAGE_ROOT = Path(__file__).resolve().parent

# Modules that only present or check results (tables, figures, the CLI, records, tracking,
# input checks): editing them changes no trained number, so they are not part of a training
# stage's code. The presentation jobs' own digests (``code_digest(..., exclude=())``) include them.
PRESENTATION_MODULES = frozenset(
    {
        "__main__",
        "cli",
        "tables",
        "figures",
        "records",
        "mlflow_import",
        "run_summaries",
        "mlflow_store",
        "latex",
        "reports",
        "source_checks",
        "summary",
        "arch_check",
        "validate",
        "outputs",
        "claims",
        "study",
    }
)


def _source_file(root: Path, module: str) -> Path | None:
    """``data.prepare`` -> ``<root>/data/prepare.py`` (a package: its ``__init__.py``); None if
    absent. The package's own ``__init__`` ("") holds no code and is left out."""
    if not module:
        return None
    base = root.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _tree(path: Path) -> ast.Module:
    return _parsed(path.read_bytes())[0]


@lru_cache(maxsize=256)
def _parsed(source: bytes) -> tuple[ast.Module, str, list[ast.Import | ast.ImportFrom]]:
    """A file's syntax tree, its dump (what its digest reads) and its import statements, cached
    by content: an edited file is parsed again."""
    tree = ast.parse(source)
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return tree, ast.dump(tree), imports


def _is_package(root: Path, module: str) -> bool:
    return (root.joinpath(*module.split(".")) / "__init__.py").is_file() if module else True


def _imports(root: Path, module: str, node: ast.AST) -> dict[str, str]:
    """The package modules an import statement binds, by the local name it binds them to.

    ``from .x import y`` binds ``y`` to module ``x.y`` if that is a module, else to ``x``;
    imports from outside the package (torch, numpy...) are not code of this project.
    """
    if isinstance(node, ast.Import):
        return {
            (a.asname or a.name).split(".")[0]: a.name.removeprefix(f"{PACKAGE}.")
            for a in node.names
            if a.name == PACKAGE or a.name.startswith(f"{PACKAGE}.")
        }
    if not isinstance(node, ast.ImportFrom):
        return {}
    if node.level:  # relative to this module's package
        parts = module.split(".") if _is_package(root, module) else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
        base = ".".join(p for p in [*parts, node.module or ""] if p)
    elif node.module == PACKAGE or (node.module or "").startswith(f"{PACKAGE}."):
        base = (node.module or "").removeprefix(PACKAGE).lstrip(".")
    else:
        return {}
    bound = {}
    for alias in node.names:
        submodule = f"{base}.{alias.name}" if base else alias.name
        bound[alias.asname or alias.name] = submodule if _source_file(root, submodule) else base
    return bound


def _with_parents(module: str) -> set[str]:
    """Importing ``a.b.c`` runs the packages ``a`` and ``a.b`` first."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _module_closure(root: Path, modules: Iterable[str]) -> set[str]:
    """``modules`` and every package module they import, anywhere in their files, transitively."""
    seen: set[str] = set()
    todo = [m for module in modules for m in _with_parents(module)]
    while todo:
        module = todo.pop()
        path = _source_file(root, module)
        if module in seen or path is None:
            continue
        seen.add(module)
        for node in _parsed(path.read_bytes())[2]:
            todo += [m for target in _imports(root, module, node).values() for m in _with_parents(target)]
    return seen


def _entry_parts(root: Path, entry: str) -> tuple[list[ast.stmt], set[str]]:
    """The statements of ``module:function``'s module that the function needs (its top-level
    definitions, transitively, and every statement that is not a definition) and the package
    modules they import."""
    module, function = entry.split(":")
    path = _source_file(root, module)
    if path is None:
        raise ValueError(f"stage entry {entry}: no module {module} under {root}")
    body = _tree(path).body
    definitions = {name: node for node in body for name in _defined_names(node)}
    if function not in definitions:
        raise ValueError(f"stage entry {entry}: {module} defines no {function}")
    bindings = {name: target for node in body for name, target in _imports(root, module, node).items()}
    kept = [node for node in body if not any(node is d for d in definitions.values())]
    used: set[str] = set()
    todo = [function]
    while todo:
        name = todo.pop()
        if name in used or name not in definitions:
            continue
        used.add(name)
        kept.append(definitions[name])
        todo += [n.id for n in ast.walk(definitions[name]) if isinstance(n, ast.Name)]
    names = {n.id for name in used for n in ast.walk(definitions[name]) if isinstance(n, ast.Name)}
    modules = {target for name, target in bindings.items() if name in names}
    for name in used:  # imports inside the used functions
        for node in ast.walk(definitions[name]):
            modules |= set(_imports(root, module, node).values())
    return kept, modules | (_with_parents(module) - {module})


def _defined_names(node: ast.stmt) -> list[str]:
    """The names a top-level definition binds (a function, a class, ``NAME = ...``)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign):
        targets = [node.target]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def code_files(
    entries: Iterable[str], exclude: Iterable[str] = PRESENTATION_MODULES, root: Path = PACKAGE_ROOT
) -> list[str]:
    """The package modules (dotted names) whose code the ``entries`` run, less ``exclude``."""
    modules: set[str] = set()
    for entry in entries:
        modules |= {entry.split(":")[0]} | _module_closure(root, _entry_parts(root, entry)[1])
    return sorted(modules - set(exclude))


def code_digest(
    entries: Iterable[str], exclude: Iterable[str] = PRESENTATION_MODULES, root: Path = PACKAGE_ROOT
) -> str:
    """sha256 over the syntax trees of the code the ``entries`` (``module:function``) run.

    An entry's own module counts only by the statements the function needs, so editing another
    stage's function in the same file changes nothing here.
    """
    entries = sorted(entries)
    excluded = set(exclude)
    digest = hashlib.sha256()
    entry_modules = {entry.split(":")[0] for entry in entries}
    for entry in entries:
        kept, _ = _entry_parts(root, entry)
        digest.update(entry.encode() + b"\0" + "\n".join(ast.dump(node) for node in kept).encode() + b"\0")
    for module in code_files(entries, excluded, root):
        if module in entry_modules:
            continue
        path = _source_file(root, module)
        assert path is not None  # code_files lists existing modules only
        digest.update(module.encode() + b"\0" + _parsed(path.read_bytes())[1].encode() + b"\0")
    return digest.hexdigest()


@cache
def stage_code_digest(stage: str) -> str:
    """The code digest of one pipeline stage (its entries in ``config.STAGES``)."""
    from .config import STAGES

    return code_digest(STAGES[stage].entries)


def stage_digest(stage: str, config: dict[str, Any], input_sha256: Mapping[str, str | None]) -> str:
    """Digest of a stage's config sections, its input files' SHA-256 (by input name) and its code."""
    payload = {"config": config, "inputs": dict(sorted(input_sha256.items())), "code": stage_code_digest(stage)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
