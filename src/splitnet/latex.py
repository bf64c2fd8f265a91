"""LaTeX text for the tables' cells: special characters escaped, symbols as LaTeX commands."""

from __future__ import annotations

import re

# Text-mode LaTeX for every character the tables can contain that LaTeX would misread or that
# pdflatex's default input encoding cannot typeset; everything else is copied as is.
TEX_TEXT = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "–": "--",
    "—": "---",
    "−": "$-$",
    "±": r"$\pm$",
    "×": r"$\times$",
    "→": r"$\rightarrow$",
    "Δ": r"$\Delta$",
    "✓": r"$\checkmark$",
    "✗": r"$\times$",
}
TEX_POWER = re.compile(r"(\d+)\^(\d+)")  # "10^6" in a header -> $10^{6}$
TEX_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
TEX_PACKAGES = (
    ("booktabs", r"\toprule, \midrule, \bottomrule"),
    ("amssymb", r"$\checkmark$"),
    ("graphicx", r"\resizebox: a table wider than the text is shrunk to \linewidth"),
)


def tex_text(text: str) -> str:
    """``text`` as LaTeX text mode: specials escaped, ``a^b`` as math, symbols as LaTeX commands."""
    out, pos = [], 0
    for match in TEX_POWER.finditer(text):
        out.append("".join(TEX_TEXT.get(ch, ch) for ch in text[pos : match.start()]))
        out.append(f"${match[1]}^{{{match[2]}}}$")
        pos = match.end()
    out.append("".join(TEX_TEXT.get(ch, ch) for ch in text[pos:]))
    return "".join(out)


def tex_cell(text: str) -> str:
    """A formatted table cell: a (signed) number in math mode (a true minus sign), else text."""
    return f"${text}$" if TEX_NUMBER.fullmatch(text) else tex_text(text)
