import json
import math

import pytest
import torch

from splitnet.cli import main
from splitnet.model import PreActUnit, canonical_arch, parse_arch, wide_resnet, wrn_plan
from splitnet.spec import SpecError, SplitSpec, even_merge_indices
from splitnet.topology import build_topology


@pytest.mark.parametrize(
    "n,m,expected",
    [(2, 2, [0, 1]), (4, 2, [0, 0, 1, 1]), (3, 2, [0, 0, 1]), (5, 2, [0, 0, 0, 1, 1]), (6, 4, [0, 0, 1, 1, 2, 3])],
)
def test_even_merge_matches_official_examples(n, m, expected):
    assert even_merge_indices(n, m) == expected


def test_spec_parse_and_errors():
    spec = SplitSpec.parse("2-4-4")
    assert spec.groups == (1, 2, 4, 4) and spec.code == "2-4-4" and spec.first_split == 1
    assert SplitSpec.parse("1-1-4").first_split == 3
    assert SplitSpec.parse("1-1-1").first_split is None
    with pytest.raises(SpecError, match="must not decrease"):
        SplitSpec.parse("4-2-2")
    with pytest.raises(SpecError, match="G3-G2-G1"):
        SplitSpec.parse("deep")
    with pytest.raises(SpecError, match=">= 1"):
        SplitSpec.parse("0-1-2")


def test_summary_takes_a_split_row_name(capsys):
    assert main(["summary", "--split", "hier", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "2-4-4"


def test_wrn_16_8_structure_and_init():
    torch.manual_seed(0)
    model = wide_resnet("wrn-16-8", bn_no_scale=True)
    assert [len(s) for s in model.stages] == [2, 2, 2]
    assert [s[0].conv2.out_channels for s in model.stages] == [128, 256, 512]
    assert all(s[0].shortcut is not None and s[1].shortcut is None for s in model.stages)
    conv = model.stages[2][0].conv1
    assert conv.weight.std().item() == pytest.approx(math.sqrt(1 / (9 * 256)), rel=0.02)
    assert model.fc.weight.std().item() == pytest.approx(math.sqrt(1 / 512), rel=0.05)
    assert torch.all(model.fc.bias == 0)
    bn = model.stages[0][0].bn1
    assert bn.momentum == 0.1 and bn.eps == 1e-5 and not bn.weight.requires_grad
    assert model.final_bn.weight.requires_grad  # unit_last keeps a trainable gamma
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_wrn_k1_first_unit_is_identity_and_grey_input():
    model = wide_resnet("wrn-10-1", in_channels=1, num_classes=10)
    assert model.stages[0][0].shortcut is None  # 16 -> 16, stride 1
    assert model.stages[1][0].shortcut is not None
    assert model(torch.randn(3, 1, 16, 16)).shape == (3, 10)


def test_dropout_only_in_listed_stages_and_only_in_training():
    model = wide_resnet("wrn-10-2", num_classes=10, dropout=0.5, dropout_stages=(2, 3), dropout_fc=True)
    assert [s[0].dropout for s in model.stages] == [0.0, 0.5, 0.5] and model.dropout_fc == 0.5
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))


def test_bad_arch_names():
    with pytest.raises(ValueError, match="6n\\+4"):
        wrn_plan(15, 8)
    with pytest.raises(ValueError, match="wrn-<depth>-<width>"):
        parse_arch("resnet50")
    with pytest.raises(ValueError, match="1/16"):
        wrn_plan(10, 0.05)


def test_fractional_width_thins_every_stage_and_names_the_net():
    """wrn-10-0.75: stage widths round(16k, 32k, 64k), the stem stays 16 (the gap study's thinned dense nets)."""
    plan = wrn_plan(*parse_arch("wrn-10-0.75"), in_channels=1, num_classes=10)
    assert [s.width for s in plan.stages] == [12, 24, 48] and plan.stem_width == 16
    assert plan.name == canonical_arch("WRN-10-0.750") == "wrn-10-0.75"
    assert wrn_plan(*parse_arch("wrn-16-8")).name == canonical_arch("wrn-16-8.0") == "wrn-16-8"
    assert wrn_plan(16, 8) == wrn_plan(*parse_arch("wrn-16-8"))  # integer widths unchanged
    model = wide_resnet("wrn-10-0.66", in_channels=1, num_classes=10)
    assert model(torch.randn(2, 1, 12, 12)).shape == (2, 10)


def test_identity_unit_rejects_width_change():
    with pytest.raises(ValueError, match="identity"):
        PreActUnit(8, 8, 16, 1, projection=False)


def test_topology_of_deep_split_lists_official_layers_in_build_order():
    top = build_topology(wrn_plan(16, 8), SplitSpec.parse("2-2-2"))
    assert [(layer.path, layer.input, layer.output) for layer in top.layers] == [
        ("stages.1.0.shortcut", "stage2_in", "stage2_out"),
        ("stages.1.0.conv1", "stage2_in", "stage2_hidden0"),
        ("stages.1.0.conv2", "stage2_hidden0", "stage2_out"),
        ("stages.1.1.conv1", "stage2_out", "stage2_hidden1"),
        ("stages.1.1.conv2", "stage2_hidden1", "stage2_out"),
        ("stages.2.0.shortcut", "stage3_in", "stage3_out"),
        ("stages.2.0.conv1", "stage3_in", "stage3_hidden0"),
        ("stages.2.0.conv2", "stage3_hidden0", "stage3_out"),
        ("stages.2.1.conv1", "stage3_out", "stage3_hidden1"),
        ("stages.2.1.conv2", "stage3_hidden1", "stage3_out"),
        ("fc", "head_in", "head_out"),
    ]
    assert top.vectors["stage2_out"].source == "stage3_in"  # q3 = merge(p2)
    assert top.vectors["stage3_out"].source == "head_in"  # q2 = merge(p1)
    assert {v.name for v in top.variables()} == {
        "head_out",
        "head_in",
        "stage2_in",
        "stage2_hidden0",
        "stage2_hidden1",
        "stage3_in",
        "stage3_hidden0",
        "stage3_hidden1",
    }


def test_topology_fc_split_has_one_layer():
    top = build_topology(wrn_plan(16, 8), SplitSpec.parse("1-1-4"))
    assert [layer.path for layer in top.layers] == ["fc"]
    assert top.vectors["head_out"].size == 100 and top.vectors["head_in"].size == 512
