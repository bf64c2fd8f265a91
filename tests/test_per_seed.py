"""The per-seed table the claims read: block-weight concentration, balanced-split figures, CSV round trip."""

import json

import pytest
import torch

from splitnet.artifacts import save_grouping
from splitnet.block_weights import block_weight_excess, intra_block_mask, layer_excess, vector_matrix
from splitnet.model import wide_resnet
from splitnet.outputs import run_dir
from splitnet.per_seed import COLUMNS, balanced_params_reduced_pct, collect, read_csv, write_csv
from splitnet.spec import SplitSpec
from splitnet.topology import build_topology


def _one_hot(groups: list[int], g: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(groups), g).T.float()


def test_layer_excess_is_zero_without_and_the_off_block_share_with_full_concentration():
    out_a, in_a = _one_hot([0, 0, 1, 1], 2), _one_hot([0, 1, 1, 0, 0, 1], 2)
    mask = intra_block_mask(out_a.argmax(0), in_a.argmax(0), 2, 2)
    assert mask.float().mean() == 0.5
    assert layer_excess(torch.ones(4, 6, 3, 3), out_a, in_a) == pytest.approx(0.0)
    assert layer_excess(mask.float()[:, :, None, None] * 2.0, out_a, in_a) == pytest.approx(0.5)
    assert layer_excess((~mask).float(), out_a, in_a) == pytest.approx(-0.5)  # all weight off the blocks


def test_a_subgroup_block_is_its_supergroups_block():
    # 4 output subgroups under 2 input supergroups (even merge: subgroups 0, 1 -> 0; 2, 3 -> 1)
    mask = intra_block_mask(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1]), 4, 2)
    assert mask.tolist() == [[True, False], [True, False], [False, True], [False, True]]


def test_block_weight_excess_of_a_grouping_file(tmp_path):
    model = wide_resnet("wrn-10-1", in_channels=1, num_classes=10)
    spec = SplitSpec.parse("2-2-2")
    topology = build_topology(model.plan, spec)
    generator = torch.Generator().manual_seed(0)
    mats = {v.name: torch.rand(v.groups, v.size, generator=generator).softmax(0) for v in topology.variables()}
    save_grouping(model, spec, mats, tmp_path / "random.pt")
    random_excess = block_weight_excess(tmp_path / "random.pt")
    assert abs(random_excess) < 0.1  # random weights: about the blocks' share of entries
    with torch.no_grad():  # zero every inter-group weight: everything in the blocks
        for layer in topology.layers:
            weight = dict(model.named_parameters())[f"{layer.path}.weight"]
            out_g = vector_matrix(topology, mats, layer.output).argmax(0)
            in_g = vector_matrix(topology, mats, layer.input).argmax(0)
            mask = intra_block_mask(
                out_g, in_g, topology.vectors[layer.output].groups, topology.vectors[layer.input].groups
            )
            weight.mul_(mask.reshape(*mask.shape, *([1] * (weight.dim() - 2))).float())
    save_grouping(model, spec, mats, tmp_path / "blocks.pt")
    assert block_weight_excess(tmp_path / "blocks.pt") > 0.4


def test_balanced_figure_is_the_architecture_checks():
    assert round(balanced_params_reduced_pct("wrn-16-8", (3, 32, 32), 100, "1-2-2"), 2) == 32.41  # arch_check.md


def test_collect_and_csv_round_trip(tmp_path):
    runs = tmp_path / "runs"
    metrics = {
        "test_error": 14.5,
        "params_reduced_pct": 24.4,
        "flops_reduced_pct": 9.8,
        "split": "1-2-2",
        "arch": "wrn-10-1",
        "input_shape": [1, 12, 12],
        "groups": {"class_to_group": {str(c): [c % 2] for c in range(10)}, "best_merge_ari": 0.6},
        "grouping": {"steps_to_convergence": {"all": 300}},
    }
    for seed in (0, 1):
        path = run_dir(runs, "shallow", seed, "evaluate") / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(metrics))
    rows = collect(runs, [("shallow", 0), ("shallow", 1), ("shallow", 2)])  # seed 2 has not run
    assert [r["seed"] for r in rows] == [0, 1]
    assert rows[0]["ari"] == 0.6 and rows[0]["steps_to_convergence"] == 300 and rows[0]["block_weight_excess"] is None
    assert rows[0]["balanced_params_reduced_pct"] == pytest.approx(
        balanced_params_reduced_pct("wrn-10-1", (1, 12, 12), 10, "1-2-2")
    )
    write_csv(tmp_path / "per_seed.csv", rows)
    assert (tmp_path / "per_seed.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    back = read_csv(tmp_path / "per_seed.csv")
    assert back == [{**r, "steps_to_convergence": 300.0, "balanced_params_reduced_pct": pytest.approx(
        r["balanced_params_reduced_pct"], abs=1e-6)} for r in rows]  # fmt: skip


def test_a_grouping_model_that_differs_from_its_record_is_refused(tmp_path):
    from splitnet.records import RUN_RECORD

    runs = tmp_path / "runs"
    grouping = run_dir(runs, "deep", 0, "learn_groups") / "model.pt"
    grouping.parent.mkdir(parents=True)
    model = wide_resnet("wrn-10-1", in_channels=1, num_classes=10)
    spec = SplitSpec.parse("2-2-2")
    mats = {v.name: torch.full((v.groups, v.size), 0.5) for v in build_topology(model.plan, spec).variables()}
    save_grouping(model, spec, mats, grouping)
    (grouping.parent / RUN_RECORD).write_text(json.dumps({"sha256": {"model.pt": "0" * 64}}))
    evaluate = run_dir(runs, "deep", 0, "evaluate") / "metrics.json"
    evaluate.parent.mkdir(parents=True)
    evaluate.write_text(json.dumps({"test_error": 17.0, "params_reduced_pct": 43.5, "flops_reduced_pct": 25.0,
                                    "grouping": {"steps_to_convergence": {"all": 400}}}))  # fmt: skip
    with pytest.raises(ValueError, match="model.pt"):
        collect(runs, [("deep", 0)])
