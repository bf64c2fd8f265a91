"""Figures (PNG + PDF) regenerated from run artifacts.

* ``fig1_assignment_dynamics``: the supplement's Fig. 1 analogue — how the class-to-group
  assignments sharpen over training, softmax reparametrisation vs direct simplex variables with
  the reduced gradient (snapshots every ``group.convergence_every`` steps by ``learn-groups``),
  with the step at which every assignment variable converged.
* ``fig2_block_structure``: the supplement's Fig. 2 analogue — the learned assignment matrices
  (nodes sorted by group) and the block-diagonal structure of split layers' weights once rows
  and columns are ordered by group.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import torch

from .artifacts import load_artifact, plan_from_dict, read_snapshots
from .block_weights import vector_matrix
from .convergence import CONVERGED, SHARP
from .records import RUN_RECORD
from .spec import SplitSpec
from .topology import build_topology

plt.rcParams.update(
    {"figure.dpi": 120, "savefig.dpi": 150, "font.size": 8, "svg.hashsalt": "splitnet", "pdf.fonttype": 42}
)


def _save(fig, out_base: Path) -> list[Path]:
    out_base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out_base.with_suffix(f".{ext}")
        tmp = path.with_name(f".{path.name}.tmp")
        # Fixed metadata so regenerated files only change when the data does.
        meta = {"Software": None} if ext == "png" else {"CreationDate": None, "ModDate": None, "Producer": None}
        fig.savefig(tmp, format=ext, metadata=meta, bbox_inches="tight")
        tmp.replace(path)
        paths.append(path)
    plt.close(fig)
    return paths


def fig1_assignment_dynamics(runs: dict[str, Path], out_base: Path, vector: str = "head_out") -> list[Path]:
    """One panel per grouping run: per class, the largest group assignment over the steps (thin
    lines) and their mean (thick); the dashed red line is the least converged variable's share of
    sharp columns (> 0.9), and the vertical line marks the step at which every variable has
    converged (>= 90 % sharp columns), as recorded by learn-groups."""
    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 2.8), sharey=True, squeeze=False)
    for ax, (title, run_dir) in zip(axes[0], runs.items()):
        trace = read_snapshots(run_dir / "assignments")
        steps = [step for step, _ in trace]
        top = torch.stack([mats[vector].max(0).values for _, mats in trace])  # snapshots x classes
        groups = trace[0][1][vector].shape[0]
        ax.plot(steps, top.numpy(), color="tab:blue", alpha=0.3, linewidth=0.7)
        ax.plot(steps, top.mean(1).numpy(), color="black", linewidth=2, label="mean over classes")
        convergence = load_artifact(run_dir / "model.pt").get("convergence", {})
        curve = convergence.get("curve")
        if curve:
            ax.plot(
                [c[0] for c in curve],
                [c[1] for c in curve],
                color="tab:red",
                linestyle="--",
                linewidth=1,
                label="sharp share, least converged variable",
            )
        ax.axhline(1.0 / groups, color="gray", linestyle=":", linewidth=1, label="uniform 1/G")
        converged_at = convergence.get("steps_to_convergence", {}).get("all")
        if converged_at is not None:
            ax.axvline(converged_at, color="tab:green", linewidth=1)
            ax.annotate(
                f"every variable converged\nafter {converged_at} steps",
                (converged_at, 0.3),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=7,
                color="tab:green",
            )
        else:
            ax.annotate(
                "not converged within the run",
                (0.5, 0.05),
                xycoords="axes fraction",
                ha="center",
                fontsize=7,
                color="tab:red",
            )
        lr_scale = json.loads((run_dir / RUN_RECORD).read_text())["config"]["group"]["assignment_lr_scale"]
        ax.set_title(f"{title}\nassignment lr = weight lr × {lr_scale:g}", fontsize=8)
        ax.set_xscale("symlog", linthresh=100)  # linear over the first 100 steps, where the assignments move
        ax.set_xlim(0, steps[-1])
        ax.set_xlabel("step (linear to 100, then log)")
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel(f"largest assignment of each class ({vector})")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=7, bbox_to_anchor=(0.5, -0.04))
    fig.text(
        0.5,
        -0.2,
        f"A node is sharp when its largest group probability exceeds {SHARP:g}; a variable has converged when "
        f"≥ {CONVERGED:.0%} of its nodes are sharp. The paper's assignment lr is the weights' (× 1).",
        ha="center",
        fontsize=7,
    )
    fig.suptitle("Class-to-group assignments during grouping", y=1.04)
    return _save(fig, out_base)


def _order(matrix: torch.Tensor) -> torch.Tensor:
    """Node order: by argmax group, then by confidence (descending) within the group."""
    group = matrix.argmax(0)
    return torch.tensor(sorted(range(matrix.shape[1]), key=lambda n: (int(group[n]), -float(matrix[group[n], n]))))


def fig2_block_structure(grouping_model: Path, out_base: Path) -> list[Path]:
    """Top: every learned assignment matrix (nodes sorted by group).  Bottom: |W| of a few split
    layers with outputs/inputs ordered by their groups: the block diagonal is what survives."""
    blob = load_artifact(grouping_model)
    mats = blob["assignments"]
    plan = plan_from_dict(blob["plan"])
    topology = build_topology(plan, SplitSpec.parse(blob["split"]))
    state = blob["state_dict"]
    layers = [topology.layers[0], topology.layers[len(topology.layers) // 2], topology.layers[-1]]
    ncols = max(len(mats), len(layers))
    fig, axes = plt.subplots(2, ncols, figsize=(2.8 * ncols, 5.6), squeeze=False, layout="constrained")
    for ax, (name, m) in zip(axes[0], sorted(mats.items())):
        image = ax.imshow(
            m[:, _order(m)].numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
        )
        fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03, label="assignment" if ax is axes[0][0] else None)
        ax.set_title(name, fontsize=7)
        ax.set_yticks(range(m.shape[0]))
        ax.set_ylabel("group", fontsize=6)
        ax.set_xlabel(f"{m.shape[1]} nodes, by group", fontsize=6)
        ax.set_xticks([])
    for ax in axes[0][len(mats) :]:
        ax.axis("off")

    for ax, layer in zip(axes[1], layers):
        w = state[f"{layer.path}.weight"].float()
        w = w.abs().mean((2, 3)) if w.dim() == 4 else w.abs()
        out_order = _order(vector_matrix(topology, mats, layer.output))
        in_order = _order(vector_matrix(topology, mats, layer.input))
        image = ax.imshow(w[out_order][:, in_order].numpy(), aspect="auto", cmap="magma", interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03, label="mean |w|")
        ax.set_title(f"|W| {layer.path}\n({layer.output} x {layer.input})", fontsize=6)
        ax.set_xlabel("inputs, by group", fontsize=6)
        ax.set_ylabel("outputs, by group", fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[1][len(layers) :]:
        ax.axis("off")
    fig.suptitle(f"Learned groups and block structure (split {blob['split']})")
    return _save(fig, out_base)


def fig_class_groups(panels: dict[str, list[dict]], out_base: Path) -> list[Path]:
    """Class x seed maps of the learned class groups, one panel per (dataset, preset).

    Each entry of a panel is the ``groups`` table of one seed's metrics.json. Classes run down,
    ordered by superclass (lines between superclasses); a cell's colour is its group, with each
    seed's groups numbered by the mean superclass of their members, so a grouping that follows
    the superclasses shows bands that match the lines whatever its arbitrary group ids.
    """
    fig, axes = plt.subplots(
        1, len(panels), figsize=(2.3 * len(panels) + 1, 4.2), squeeze=False, constrained_layout=True
    )
    for ax, (title, tables) in zip(axes[0], panels.items()):
        supers = tables[0]["superclasses"]
        classes = [c for members in supers.values() for c in members]
        super_of = {c: i for i, members in enumerate(supers.values()) for c in members}
        columns = []
        for table in tables:
            group_of = {c: table["class_to_group"][c][0] for c in classes}
            centre = {
                g: sum(super_of[c] for c in classes if group_of[c] == g) / sum(group_of[c] == g for c in classes)
                for g in set(group_of.values())
            }
            rank = {g: r for r, g in enumerate(sorted(centre, key=lambda g: (centre[g], g)))}
            columns.append([rank[group_of[c]] for c in classes])
        image = torch.tensor(columns, dtype=torch.float32).T.numpy()
        ax.imshow(image, cmap="tab10", vmin=0, vmax=9, aspect="auto", interpolation="nearest")
        bounds = [sum(len(m) for m in list(supers.values())[: i + 1]) - 0.5 for i in range(len(supers) - 1)]
        for y in bounds:
            ax.axhline(y, color="black", linewidth=1.2)
        ax.set_xticks(range(len(tables)), [str(t.get("seed", i)) for i, t in enumerate(tables)])
        ax.set_xlabel("seed")
        ax.set_yticks(range(len(classes)), classes if len(classes) <= 20 else [""] * len(classes), fontsize=6)
        ax.set_title(title, fontsize=7)
    fig.suptitle(
        "Learned class groups (colour = group, numbered by the superclasses of its members; "
        "lines separate the true superclasses)",
        fontsize=7,
    )
    paths = _save(fig, out_base)
    plt.close(fig)
    return paths


def fig_gap_study(rows: list[dict], widths: list[str], out_base: Path) -> list[Path]:
    """The gap study: each split's error penalty over the baseline (95 % CI) per width preset;
    the confounder arms (no dropout, longer finetuning) beside the narrowest width."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2), layout="constrained")
    by_row: dict[str, list[dict]] = {}
    arms = []
    for r in rows:
        if r["penalty_mean"] is None:
            continue
        if r["kind"] == "confounder":
            arms.append(r)
        else:
            by_row.setdefault(r["row"], []).append(r)
    for i, (row, found) in enumerate(sorted(by_row.items())):
        x = [widths.index(r["width"]) + (i - len(by_row) / 2) * 0.06 for r in found]
        y = [r["penalty_mean"] for r in found]
        err = [
            [r["penalty_mean"] - r["penalty_ci_low"] for r in found],
            [r["penalty_ci_high"] - r["penalty_mean"] for r in found],
        ]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=row)
    for j, r in enumerate(arms):
        err = [[r["penalty_mean"] - r["penalty_ci_low"]], [r["penalty_ci_high"] - r["penalty_mean"]]]
        ax.errorbar(
            [-0.45 + 0.08 * j], [r["penalty_mean"]], yerr=err, marker="s", capsize=3, linestyle="none", label=r["arm"]
        )
    ax.axhline(0.0, color="gray", linewidth=1, linestyle=":")
    ax.set_xticks(range(len(widths)), widths)
    ax.set_xlabel("width preset (paper = the scale's network)")
    ax.set_ylabel("error − baseline at that width (pt)")
    ax.legend(fontsize=6, ncol=2)
    if not by_row and not arms:
        ax.text(0.5, 0.5, "no finished runs", transform=ax.transAxes, ha="center")
    fig.suptitle("Does the split penalty shrink with width? (gap study)")
    return _save(fig, out_base)
