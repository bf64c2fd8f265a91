import pytest
import torch
from conftest import randomize_batchnorm

from splitnet.assignment import GroupAssignments
from splitnet.counting import count_model
from splitnet.model import wide_resnet
from splitnet.overlap import update_freezing
from splitnet.partition import fuzzy_fraction, overlap_membership
from splitnet.spec import SplitSpec
from splitnet.ssl import channels_to_keep, group_lasso_penalty, prune, zero_pruned_weights
from splitnet.topology import build_topology


def _sparsify(model, fraction, gen):
    """Zero the reader columns of a random fraction of channels, as group lasso would."""
    with torch.no_grad():
        for stage in model.stages:
            for unit in stage:
                w = unit.conv2.weight
                w[:, torch.rand(w.shape[1], generator=gen) < fraction] = 0
        last = model.fc.weight
        dead = torch.rand(last.shape[1], generator=gen) < fraction
        last[:, dead] = 0
        for unit in list(model.stages[2])[1:]:
            unit.conv1.weight[:, dead] = 0


def test_group_lasso_penalty_matches_a_loop_and_has_finite_gradient_at_zero():
    torch.manual_seed(0)
    model = wide_resnet("wrn-10-1", num_classes=10)
    expected = sum(
        sum(w[o].norm() for o in range(w.shape[0])) + sum(w[:, i].norm() for i in range(w.shape[1]))
        for stage in model.stages
        for unit in stage
        for w in [c.weight for c in (unit.conv1, unit.conv2, unit.shortcut) if c is not None]
    ) + sum(model.fc.weight[:, i].norm() for i in range(model.fc.weight.shape[1]))
    assert group_lasso_penalty(model).item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        model.stages[1][0].conv1.weight.zero_()
    group_lasso_penalty(model).backward()
    assert torch.isfinite(model.stages[1][0].conv1.weight.grad).all()


def test_pruned_wrn_is_smaller_and_exactly_equivalent():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = wide_resnet("wrn-16-2", num_classes=10)
    randomize_batchnorm(model, gen)
    _sparsify(model, 0.4, gen)
    kept = channels_to_keep(model, threshold=1e-6)
    zero_pruned_weights(model, kept)
    small = prune(model, kept).eval()
    model.eval()
    x = torch.randn(4, 3, 16, 16, generator=gen)
    with torch.no_grad():
        a, b = model(x), small(x)
    assert ((a - b).norm() / a.norm()).item() < 1e-5
    assert small.plan.stages[2].width == len(kept.streams[3]) < 128
    assert count_model(small, (3, 16, 16)).params < 0.8 * count_model(model, (3, 16, 16)).params


def test_pruning_never_empties_a_layer():
    model = wide_resnet("wrn-10-1", num_classes=10)
    kept = channels_to_keep(model, threshold=1e9)
    assert all(len(h) == 1 for hs in kept.hidden for h in hs)
    assert prune(model, kept)(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_fuzzy_nodes_and_freezing():
    a = torch.tensor([[0.95, 0.5, 0.05, 0.3], [0.05, 0.5, 0.95, 0.7]])
    assert fuzzy_fraction(a, 0.1) == 0.5
    assert overlap_membership(a, 0.1).tolist() == [[True, True, False, True], [False, True, True, True]]

    top = build_topology(wide_resnet("wrn-10-1", num_classes=10).plan, SplitSpec.parse("1-1-2"))
    asg = GroupAssignments(top)
    assert update_freezing(asg) == []  # near-uniform start: every node is fuzzy
    with torch.no_grad():
        asg.values["head_in"][0] = 10.0  # sharp: no fuzzy node left
    assert update_freezing(asg) == ["head_in"]
    assert asg.is_frozen("head_in") and not asg.values["head_in"].requires_grad
    assert asg.values["head_out"].requires_grad
