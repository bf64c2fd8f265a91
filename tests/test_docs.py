"""Every relative link in README.md and docs/**/*.md points to a file (or folder) in the repo.

External links (http, https, mailto) are not fetched and in-page anchors (`#results`) are not
checked; the `#anchor` part of a file link is ignored. A link that leaves the repository (such as
`../shared/reference/...`, a file that is not shipped) fails even where it exists on this machine.
Links inside code spans and fenced code blocks are not links and are skipped.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")  # [text](target "title")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)  # [label]: target
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans."""
    kept, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            continue
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        kept.append(line)
    return CODE_SPAN.sub("", "\n".join(kept))


def relative_links(path: Path) -> list[str]:
    text = _prose(path.read_text())
    targets = INLINE.findall(text) + REFERENCE.findall(text)
    return [t for t in targets if not EXTERNAL.match(t) and not t.startswith("#")]


def _tracked() -> set[str] | None:
    """Files git tracks (with their parent folders), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    files = {f for f in out.decode().split("\0") if f}
    return files | {str(parent) for f in files for parent in Path(f).parents if str(parent) != "."}


def link_problem(doc: Path, target: str, tracked: set[str] | None) -> str | None:
    """Why ``target`` (as written in ``doc``) does not resolve, or None."""
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return None
    resolved = (doc.parent / path).resolve()
    try:
        rel = resolved.relative_to(ROOT)
    except ValueError:
        return "points outside the repository (files there are not shipped)"
    if not resolved.exists():
        return "no such file in the repository"
    if tracked is not None and rel.as_posix() not in tracked:
        return "exists here but is not tracked by git (a fresh clone lacks it)"
    return None


def test_docs_are_found():
    assert ROOT / "README.md" in DOCS and ROOT / "docs" / "paper-vs-code.md" in DOCS


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_relative_links_resolve(doc):
    tracked = _tracked()
    broken = [
        f"{target}: {problem}"
        for target in relative_links(doc)
        if (problem := link_problem(doc, target, tracked)) is not None
    ]
    assert not broken, f"{doc.relative_to(ROOT)}: dangling links: {broken}"


def test_link_checker_catches_dangling_links():
    """The checker itself: the kinds of link it must refuse, and the ones it must let through."""
    doc = ROOT / "docs" / "example.md"
    text = (
        "[ok](paper-vs-code.md#anchor) [up](../README.md) [gone](moved/away.md) "
        "[outside](../../shared/reference/supplement.txt) [web](https://example.org/x.md) [here](#top)\n"
        "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n[ref]: ../params/scales.yaml\n"
    )
    targets = INLINE.findall(_prose(text)) + REFERENCE.findall(_prose(text))
    assert targets == [
        "paper-vs-code.md#anchor",
        "../README.md",
        "moved/away.md",
        "../../shared/reference/supplement.txt",
        "https://example.org/x.md",
        "#top",
        "../params/scales.yaml",
    ]
    problems = {t: link_problem(doc, t, None) for t in targets if not EXTERNAL.match(t) and not t.startswith("#")}
    assert problems["paper-vs-code.md#anchor"] is None and problems["../README.md"] is None
    assert problems["../params/scales.yaml"] is None
    assert problems["moved/away.md"] == "no such file in the repository"
    assert "outside the repository" in problems["../../shared/reference/supplement.txt"]
