import json
from pathlib import Path

import pytest
import torch
import yaml

from splitnet.arch_check import checked_rows
from splitnet.cli import main
from splitnet.config import load_registry
from splitnet.counting import count_model, flop_counter_check
from splitnet.model import wide_resnet
from splitnet.partition import balanced_partition
from splitnet.spec import SplitSpec
from splitnet.split import build_split_network
from splitnet.summary import summarize
from splitnet.topology import build_topology

REGISTRY = load_registry("params")
PAPER = yaml.safe_load(Path("params/paper_results.yaml").read_text())  # the supplement's Tables 1 and 2


@pytest.fixture(scope="module")
def wrn16_8():
    return wide_resnet("wrn-16-8")


def test_wrn_16_8_counts_match_the_paper(wrn16_8):
    count = count_model(wrn16_8, (3, 32, 32))
    assert count.params == 10_999_908
    assert count.flops == 3_095_498_952
    assert (count.stem_params, count.stem_flops) == (432, 884_736)
    per_layer = {r.name: r for r in count.layers}
    assert per_layer["stages.2.1.conv2"].params == 2_359_296
    assert per_layer["stages.2.1.conv2"].out_hw == (8, 8)
    assert per_layer["fc"].params == 51_300 and per_layer["fc"].flops == 102_600


@pytest.mark.parametrize("table,experiment,code", checked_rows(REGISTRY, PAPER))
def test_balanced_split_rows_match_paper_within_tolerance(wrn16_8, table, experiment, code):
    s = summarize(wrn16_8, SplitSpec.parse(code), (3, 32, 32), convention="shared")
    paper, tolerance = PAPER[table][experiment], PAPER["tolerance"]
    assert abs(s["params_reduced_pct"] - paper["params_reduced_pct"]) <= tolerance["params_reduced_pct"]
    if paper["flops_reduced_pct"] is not None:
        assert abs(s["flops_reduced_pct"] - paper["flops_reduced_pct"]) <= tolerance["flops_reduced_pct"]


def test_every_split_of_the_paper_tables_is_checked():
    checked = {code for _, _, code in checked_rows(REGISTRY, PAPER)}
    used = {
        REGISTRY["experiments"][row["experiment"]]["group"]["split"]
        for spec in REGISTRY["tables"].values()
        for row in spec["rows"]
        if REGISTRY["experiments"].get(row["experiment"], {}).get("group", {}).get("split")
    }
    assert used and checked == used


def test_partitioned_convention_gives_the_official_code_counts(wrn16_8):
    # The official resnet_split.py accounting with balanced groups (reference section 8).
    s = summarize(wrn16_8, SplitSpec.parse("1-2-2"), (3, 32, 32), convention="partitioned")
    assert s["params"] == 6_780_004
    assert round(s["params_reduced_pct"], 2) == 38.36 and round(s["flops_reduced_pct"], 2) == 17.35


@pytest.mark.parametrize("code", ["1-1-4", "2-4-4"])
@pytest.mark.parametrize("convention", ["shared", "partitioned"])
def test_counts_agree_with_torch_flop_counter(wrn16_8, code, convention):
    top = build_topology(wrn16_8.plan, SplitSpec.parse(code))
    split = build_split_network(top, balanced_partition(top), convention)
    ours, torch_count = flop_counter_check(split, (3, 32, 32))
    assert ours == torch_count
    ours, torch_count = flop_counter_check(wrn16_8, (3, 32, 32))
    assert ours == torch_count


def test_counting_walks_the_running_model_not_a_formula():
    model = wide_resnet("wrn-10-1", num_classes=10)
    before = count_model(model, (3, 16, 16)).params
    model.stages[2][0].conv2 = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False, groups=4)
    assert count_model(model, (3, 16, 16)).params == before - 64 * 64 * 9 * 3 // 4


def test_summary_cli_json_and_table(capsys):
    assert main(["summary", "--split", "hier", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"params", "flops", "params_reduced_pct", "flops_reduced_pct", "layers"} <= set(out)
    assert round(out["params_reduced_pct"], 2) == 62.61 and out["split"] == "2-4-4"
    assert (
        main(
            [
                "summary",
                "--split",
                "1-2-2",
                "--arch",
                "wrn-10-1",
                "--in-channels",
                "1",
                "--num-classes",
                "10",
                "--image-size",
                "16",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "reduced: params" in text and "(stem, not counted)" in text


def test_summary_cli_rejects_bad_split(capsys):
    assert main(["summary", "--split", "4-2-1"]) == 2
    assert "must not decrease" in capsys.readouterr().err


def test_summary_cli_counts_a_saved_split_model_with_learned_groups(tmp_path, capsys):
    from splitnet.artifacts import save_split
    from splitnet.partition import random_partition

    model = wide_resnet("wrn-10-1", in_channels=1, num_classes=10)
    top = build_topology(model.plan, SplitSpec.parse("1-3-3"))
    part = random_partition(top, seed=0)
    with torch.no_grad():  # unequal groups: move one node of head_in from group 0 to group 1
        n = int(part["head_in"][0].nonzero()[0])
        part["head_in"][:, n] = torch.tensor([False, True, False])
    from splitnet.partition import complete_partition

    part = complete_partition(top, {v.name: part[v.name] for v in top.variables()})
    split = build_split_network(top, part, dense=model)
    save_split(split, model.plan, top.spec, part, "shared", "preact", tmp_path / "model.pt")
    assert main(["summary", "--model", str(tmp_path / "model.pt"), "--image-size", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == count_model(split, (1, 16, 16)).params
    assert out["groups"] == "given"
