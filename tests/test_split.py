import random

import pytest
import torch
from conftest import randomize_batchnorm

from splitnet import artifacts
from splitnet.assignment import GroupAssignments
from splitnet.branches import ChannelSelect, HeadBranch, StageBranch
from splitnet.model import StagePlan, WideResNet, WRNPlan, wide_resnet
from splitnet.partition import EmptyGroupError, partition_from_assignments, random_partition
from splitnet.spec import SplitSpec
from splitnet.split import build_split_network, keep_mask, zero_intergroup_weights
from splitnet.topology import build_topology

SPECS = ["1-1-4", "1-2-2", "1-3-3", "1-4-4", "2-2-2", "2-4-4", "1-2-4", "2-3-5", "3-3-3"]


def _random_plan(rng: random.Random) -> WRNPlan:
    """A small WRN with odd, unequal widths (as an SSL-pruned or custom WRN could have)."""
    stages = []
    for stride in (1, 2, 2):
        width = rng.randint(7, 21)
        n_units = rng.randint(1, 2)
        hidden = tuple(rng.randint(6, 19) for _ in range(n_units))
        stages.append(StagePlan(width, hidden, stride, projection=True))
    return WRNPlan(in_channels=rng.choice([1, 3]), num_classes=rng.randint(9, 17), stages=tuple(stages))


def _equivalence_error(model, spec_code, convention, seed, overlap=None):
    gen = torch.Generator().manual_seed(seed)
    randomize_batchnorm(model, gen)
    top = build_topology(model.plan, SplitSpec.parse(spec_code))
    asg = GroupAssignments(top, generator=gen)
    with torch.no_grad():  # sharp, unequal groups
        for v in asg.values.values():
            v.copy_(torch.randn(v.shape, generator=gen) * 2 + torch.linspace(0, 1.5, v.shape[0])[:, None])
    part, _ = partition_from_assignments(top, asg.matrices(), overlap_threshold=overlap)
    zero_intergroup_weights(model, top, part, convention)
    model.eval()
    split = build_split_network(top, part, convention, "preact", dense=model).eval()
    x = torch.randn(3, model.plan.in_channels, 12, 12, generator=gen)
    with torch.no_grad():
        dense_out, split_out = model(x), split(x)
    return ((dense_out - split_out).norm() / dense_out.norm()).item(), top, part, split


@pytest.mark.parametrize("convention", ["shared", "partitioned"])
@pytest.mark.parametrize("spec_code", SPECS)
def test_split_equals_dense_with_intergroup_weights_zeroed(spec_code, convention):
    torch.manual_seed(0)
    model = wide_resnet("wrn-16-2", num_classes=13)
    err, *_ = _equivalence_error(model, spec_code, convention, seed=1)
    assert err < 1e-5


@pytest.mark.filterwarnings("ignore:assignment .* moved")
@pytest.mark.parametrize("seed", range(12))
def test_property_random_wrns_random_groups_random_specs(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model = WideResNet(_random_plan(rng))
    spec = rng.choice(SPECS)
    convention = rng.choice(["shared", "partitioned"])
    err, *_ = _equivalence_error(model, spec, convention, seed)
    assert err < 1e-5, (spec, convention, model.plan)


def test_g3_on_odd_widths_gives_unequal_groups_and_stays_exact():
    torch.manual_seed(0)
    plan = WRNPlan(3, 11, (StagePlan(15, (13,), 1), StagePlan(21, (17, 19), 2), StagePlan(25, (23, 25), 2)))
    err, _, part, _ = _equivalence_error(WideResNet(plan), "3-3-3", "partitioned", seed=3)
    assert err < 1e-5
    sizes = part["stage3_hidden0"].sum(1).tolist()
    assert sum(sizes) == 23 and len(set(sizes)) > 1


@pytest.mark.parametrize("spec_code", ["1-2-2", "2-4-4", "1-1-4"])
def test_overlap_duplicates_are_exact_too(spec_code):
    torch.manual_seed(0)
    model = wide_resnet("wrn-16-2", num_classes=12)
    err, _, part, _ = _equivalence_error(model, spec_code, "partitioned", seed=5, overlap=0.2)
    assert err < 1e-5
    assert any(m.sum() > m.shape[1] for m in part.values())  # some node really was duplicated


def test_branch_tensors_are_really_smaller_and_no_masks():
    torch.manual_seed(0)
    model = wide_resnet("wrn-16-4", num_classes=10)
    top = build_topology(model.plan, SplitSpec.parse("2-2-2"))
    part = random_partition(top, seed=0)
    split = build_split_network(top, part, "partitioned", dense=model)
    roots = list(split.roots)
    assert len(roots) == 2 and all(isinstance(r, StageBranch) for r in roots)
    conv = roots[0].units[1].conv1
    assert conv.weight.shape == (64, 64, 3, 3)  # 128 -> 64 per group
    heads = [h for r in roots for s in r.branches for h in s.branches]
    assert all(isinstance(h, HeadBranch) for h in heads)
    assert sum(h.fc.out_features for h in heads) == 10
    assert not any("mask" in name for name, _ in split.named_buffers())


def test_logits_come_back_in_original_class_order():
    torch.manual_seed(0)
    model = wide_resnet("wrn-10-1", num_classes=10)
    top = build_topology(model.plan, SplitSpec.parse("1-1-2"))
    part = random_partition(top, seed=3)
    zero_intergroup_weights(model, top, part)
    with torch.no_grad():  # class c's bias = c makes the order visible
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.arange(10.0))
    split = build_split_network(top, part, dense=model).eval()
    out = split(torch.randn(2, 3, 8, 8))
    assert torch.equal(out[0], torch.arange(10.0))


def test_contiguous_children_use_slices_not_gathers():
    torch.manual_seed(0)
    model = wide_resnet("wrn-16-2", num_classes=10)
    top = build_topology(model.plan, SplitSpec.parse("2-4-4"))
    split = build_split_network(top, random_partition(top, seed=1), "partitioned", dense=model)
    inner = [m for r in split.roots for m in r.branches]
    assert all(isinstance(m.select, ChannelSelect) and m.select.start is not None for m in inner)


def test_official_layout_builds_postact_units_and_runs():
    torch.manual_seed(0)
    model = wide_resnet("wrn-16-2", num_classes=10)
    top = build_topology(model.plan, SplitSpec.parse("2-2-2"))
    split = build_split_network(top, random_partition(top, seed=0), "partitioned", "official", dense=model)
    unit = split.roots[0].units[0]
    assert type(unit).__name__ == "PostActUnit"
    # kernels copied, BN fresh (as resnet_split.py)
    assert torch.all(unit.bn1.running_var == 1)
    assert split(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_empty_group_error_and_repair():
    model = wide_resnet("wrn-10-1", num_classes=10)
    top = build_topology(model.plan, SplitSpec.parse("1-1-3"))
    asg = GroupAssignments(top)
    with torch.no_grad():
        for v in asg.values.values():
            v.zero_()
            v[0] += 5.0  # every node prefers group 0
    with pytest.raises(EmptyGroupError, match="head_out.*won no node"):
        partition_from_assignments(top, asg.matrices(), empty_groups="error")
    with pytest.warns(UserWarning, match="moved"):
        part, repairs = partition_from_assignments(top, asg.matrices(), empty_groups="repair")
    assert repairs == {"head_out": 2, "head_in": 2}
    assert all(bool(m.any(1).all()) for m in part.values())
    build_split_network(top, part, dense=model)


def test_keep_mask_rule_for_duplicated_outputs():
    inputs = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    outputs = torch.tensor([[1, 1], [0, 1]], dtype=torch.bool)  # output 1 lives in both groups
    assert keep_mask(inputs, outputs).tolist() == [[True, True, False], [False, True, False]]


def test_split_of_unsplit_spec_is_an_error():
    model = wide_resnet("wrn-10-1", num_classes=10)
    top = build_topology(model.plan, SplitSpec.parse("1-1-1"))
    with pytest.raises(ValueError, match="splits nothing"):
        build_split_network(top, {}, dense=model)


@pytest.mark.parametrize("spec_code", ["1-1-4", "1-2-2"])  # trunk up to the final BN / to stage 2
@pytest.mark.parametrize("layout", ["preact", "official"])
def test_split_built_in_memory_trains_like_its_saved_and_reloaded_file(tmp_path, spec_code, layout):
    """The pipeline builds a split in memory, saves it, and finetunes the reloaded file: the two
    must be the same network, so neither the dense net's frozen BN gammas nor its mode carry over."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    dense = wide_resnet("wrn-10-2", num_classes=10, bn_no_scale=True)
    randomize_batchnorm(dense, gen)
    dense.eval()
    top = build_topology(dense.plan, SplitSpec.parse(spec_code))
    part = random_partition(top, seed=0)
    built = build_split_network(top, part, "shared", layout, dense=dense)
    artifacts.save_split(built, dense.plan, top.spec, part, "shared", layout, tmp_path / "model.pt")
    reloaded, _ = artifacts.load_model(tmp_path / "model.pt")

    def trainable(model):
        return {name: p.requires_grad for name, p in model.named_parameters()}

    assert trainable(built) == trainable(reloaded)
    assert [name for name, _ in built.named_buffers()] == [name for name, _ in reloaded.named_buffers()]
    assert built.training == reloaded.training
    x = torch.randn(4, 3, 8, 8, generator=gen)
    y = torch.randint(0, 10, (4,), generator=gen)
    for model in (built, reloaded):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    after, reloaded_after = built.state_dict(), reloaded.state_dict()
    assert list(after) == list(reloaded_after)
    assert all(torch.equal(after[name], reloaded_after[name]) for name in after)
