"""Tests of the SplitNet group regularizers (official normalisation, reference section 3.2)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from splitnet.assignment import GroupAssignments
from splitnet.config import load_registry
from splitnet.model import wide_resnet
from splitnet.regularizers import (
    RegularizerConfig,
    aggregate_weight_penalties,
    balance_penalty,
    disjoint_penalty,
    split_losses,
    split_terms,
    term_weights,
    weight_split_penalty,
)
from splitnet.spec import SplitSpec
from splitnet.topology import build_topology

PAPER_GAMMAS = RegularizerConfig.from_group(load_registry("params")["defaults"]["group"])  # official group.sh values


def make(spec: str, seed: int = 0, parametrisation: str = "softmax"):
    torch.manual_seed(seed)
    model = wide_resnet("wrn-16-2", num_classes=10)
    topology = build_topology(model.plan, SplitSpec.parse(spec))
    return model, topology, GroupAssignments(topology, parametrisation)


def uniform_matrices(topology) -> dict[str, torch.Tensor]:
    """Exactly uniform assignments, merged vectors produced by the real merge code."""
    assignments = GroupAssignments(topology, "simplex")
    with torch.no_grad():
        for name in assignments.names:
            assignments.values[name].fill_(1.0 / topology.vectors[name].groups)
    return assignments.matrices()


def one_hot(groups: int, size: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Balanced one-hot assignment (node n in group n mod G) unless labels are given."""
    labels = torch.arange(size) % groups if labels is None else labels
    return torch.nn.functional.one_hot(labels, groups).T.to(torch.float64)


def naive_weight_split(weight: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> float:
    """Literal loops over the official formula in TF layout W[i, j] (i input, j output)."""
    if weight.dim() == 4:
        taps = weight.shape[2] * weight.shape[3]
        wbar = (weight**2).mean(dim=(2, 3)).T
    else:
        taps = 1
        wbar = (weight**2).T
    d_in, d_out = wbar.shape
    groups = p.shape[0]
    total = 0.0
    for g in range(groups):
        row = sum(
            math.sqrt(sum(float((1 - p[g, i]) ** 2 * q[g, j] ** 2 * wbar[i, j]) for j in range(d_out)))
            for i in range(d_in)
        )
        col = sum(
            math.sqrt(sum(float(p[g, i] ** 2 * (1 - q[g, j]) ** 2 * wbar[i, j]) for i in range(d_in)))
            for j in range(d_out)
        )
        total += row / (d_in * math.sqrt(d_out)) + col / (math.sqrt(d_in) * d_out)
    sigma = math.sqrt(1.0 / (taps * d_in))
    return total / (2 * (groups - 1) * sigma / groups)


def random_simplex(groups: int, size: int) -> torch.Tensor:
    return torch.softmax(torch.randn(groups, size, dtype=torch.float64) * 2, dim=0)


# --- single-matrix penalties -------------------------------------------------------------


@pytest.mark.parametrize("groups,size", [(2, 8), (3, 9), (4, 20)])
def test_disjoint_and_balance_reference_values(groups, size):
    uniform = torch.full((groups, size), 1.0 / groups, dtype=torch.float64)
    assert disjoint_penalty(uniform).item() == pytest.approx(1.0, abs=1e-12)
    assert balance_penalty(uniform).item() == pytest.approx(1.0, abs=1e-12)

    balanced = one_hot(groups, size)
    assert disjoint_penalty(balanced).item() == 0.0
    assert balance_penalty(balanced).item() == pytest.approx(1.0, abs=1e-12)

    lumped = one_hot(groups, size, torch.zeros(size, dtype=torch.long))
    assert disjoint_penalty(lumped).item() == 0.0
    assert balance_penalty(lumped).item() == pytest.approx(groups, abs=1e-12)


def test_disjoint_matches_pairwise_loop():
    torch.manual_seed(1)
    a = random_simplex(4, 7)
    groups, size = a.shape
    pairs = sum(float(a[g] @ a[h]) for g in range(groups) for h in range(g + 1, groups))
    assert disjoint_penalty(a).item() == pytest.approx(pairs / (size * (groups - 1) / (2 * groups)), rel=1e-12)


# --- weight-split penalty ----------------------------------------------------------------


@pytest.mark.parametrize("groups", [2, 3, 4])
@pytest.mark.parametrize("shape", [(5, 7, 3, 3), (6, 4, 1, 1), (9, 5)])
def test_weight_split_matches_naive_loops(groups, shape):
    torch.manual_seed(groups)
    weight = torch.randn(*shape, dtype=torch.float64)
    d_out, d_in = shape[:2]
    p, q = random_simplex(groups, d_in), random_simplex(groups, d_out)
    assert weight_split_penalty(weight, p, q).item() == pytest.approx(naive_weight_split(weight, p, q), rel=1e-10)


@pytest.mark.parametrize("groups", [2, 4])
def test_weight_split_is_zero_for_block_diagonal_weight(groups):
    torch.manual_seed(0)
    d_in, d_out = 12, 8
    labels_in, labels_out = torch.arange(d_in) % groups, torch.arange(d_out) % groups
    mask = (labels_out[:, None] == labels_in[None, :]).to(torch.float64)
    weight = torch.randn(d_out, d_in, 3, 3, dtype=torch.float64) * mask[:, :, None, None]
    p, q = one_hot(groups, d_in), one_hot(groups, d_out)
    assert weight_split_penalty(weight, p, q).item() < 1e-6
    # the same weight under a mismatched assignment is penalised
    assert weight_split_penalty(weight, p, q.roll(1, dims=0)).item() > 0.1


def test_weight_split_gradients_finite_at_zero_weights():
    groups, d_in, d_out = 3, 6, 9
    weight = torch.zeros(d_out, d_in, 3, 3, requires_grad=True)
    p = one_hot(groups, d_in).float().requires_grad_()
    q = torch.full((groups, d_out), 1.0 / groups, requires_grad=True)
    weight_split_penalty(weight, p, q).backward()
    for tensor in (weight, p, q):
        assert torch.isfinite(tensor.grad).all()


def test_weight_split_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        weight_split_penalty(torch.randn(4, 6), torch.rand(2, 4), torch.rand(2, 4))
    with pytest.raises(ValueError):
        weight_split_penalty(torch.randn(4, 6), torch.rand(1, 6), torch.rand(1, 4))


# --- on a real WRN -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["2-2-2", "2-4-4", "1-1-4"])
def test_penalties_are_one_at_init_with_uniform_assignments(spec):
    model, topology, _ = make(spec)
    matrices = uniform_matrices(topology)
    for name, matrix in matrices.items():
        assert disjoint_penalty(matrix).item() == pytest.approx(1.0, abs=1e-6), name
        assert balance_penalty(matrix).item() == pytest.approx(1.0, abs=1e-6), name
    for layer in topology.layers:
        weight = model.get_submodule(layer.path).weight
        s = weight_split_penalty(weight, matrices[layer.input], matrices[layer.output]).item()
        assert s == pytest.approx(1.0, rel=0.05), layer.path
    losses = split_losses(model, topology, matrices, PAPER_GAMMAS)
    assert losses.disjoint.item() == pytest.approx(1.0, abs=1e-6)
    assert losses.balance.item() == pytest.approx(1.0, abs=1e-6)
    assert losses.weight.item() == pytest.approx(1.0, rel=0.05)
    expected_total = losses.disjoint + losses.weight + 10 * losses.balance
    assert losses.total.item() == pytest.approx(expected_total.item(), rel=1e-6)


def test_split_losses_near_one_with_softmax_init():
    model, topology, assignments = make("2-2-2")
    losses = split_losses(model, topology, assignments.matrices(), PAPER_GAMMAS)
    for value in (losses.disjoint, losses.weight, losses.balance):
        assert value.item() == pytest.approx(1.0, rel=0.1)


def test_term_weights_deep_split_follow_official_entries():
    # entries in build order: T(p3), T(r31), T(r32), T(p2), T(r21), T(r22), (T(p1)+T(q1))/2
    _, topology, _ = make("2-2-2")
    expected = {
        "stage2_in": 1 / 7,
        "stage2_hidden0": 1 / 7,
        "stage2_hidden1": 1 / 7,
        "stage3_in": 1 / 7,
        "stage3_hidden0": 1 / 7,
        "stage3_hidden1": 1 / 7,
        "head_in": 1 / 14,
        "head_out": 1 / 14,
    }
    weights = term_weights(topology)
    assert weights.keys() == expected.keys()
    for name, w in expected.items():
        assert weights[name] == pytest.approx(w)


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("1-1-4", {"head_in": 0.5, "head_out": 0.5}),
        (
            "1-2-2",
            {"stage3_in": 0.25, "stage3_hidden0": 0.25, "stage3_hidden1": 0.25, "head_in": 0.125, "head_out": 0.125},
        ),
        ("1-1-1", {}),
    ],
)
def test_term_weights_other_splits(spec, expected):
    _, topology, _ = make(spec)
    weights = term_weights(topology)
    assert weights == pytest.approx(expected)
    assert all(topology.vectors[name].is_variable for name in weights)


def test_disjoint_term_is_the_weighted_sum():
    model, topology, _ = make("2-4-4")
    torch.manual_seed(3)
    matrices = {name: torch.softmax(torch.randn(v.groups, v.size) * 3, dim=0) for name, v in topology.vectors.items()}
    losses = split_losses(model, topology, matrices, PAPER_GAMMAS)
    weights = term_weights(topology)
    assert "stage2_out" not in weights and "stage3_out" not in weights  # merged vectors
    disjoint = sum(w * disjoint_penalty(matrices[n]).item() for n, w in weights.items())
    balance = sum(w * balance_penalty(matrices[n]).item() for n, w in weights.items())
    assert losses.disjoint.item() == pytest.approx(disjoint, rel=1e-6)
    assert losses.balance.item() == pytest.approx(balance, rel=1e-6)


def test_weighted_aggregation_value_and_gradient():
    model, topology, assignments = make("1-2-2", seed=4)
    # move away from init so the layers' S values differ
    with torch.no_grad():
        for name in assignments.names:
            assignments.values[name].normal_(0, 1.0)
        model.fc.weight.mul_(3.0)
    params = [model.fc.weight, model.stages[2][0].conv1.weight, assignments.values["stage3_in"]]

    matrices = assignments.matrices()
    per_layer = [
        weight_split_penalty(model.get_submodule(layer.path).weight, matrices[layer.input], matrices[layer.output])
        for layer in topology.layers
    ]
    values = torch.stack([s.detach() for s in per_layer])
    grads = [torch.autograd.grad(s, params, retain_graph=True, allow_unused=True) for s in per_layer]
    analytic = []
    for i, param in enumerate(params):
        acc = torch.zeros_like(param)
        for s, g in zip(values, grads):
            if g[i] is not None:
                acc += s * g[i]
        analytic.append(acc / values.sum())

    weighted = split_losses(model, topology, assignments.matrices(), replace(PAPER_GAMMAS, weighted=True))
    assert weighted.weight.item() == pytest.approx((values.pow(2).sum() / values.sum()).item(), rel=1e-6)
    for got, want in zip(torch.autograd.grad(weighted.weight, params), analytic):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)

    plain = split_losses(model, topology, assignments.matrices(), replace(PAPER_GAMMAS, weighted=False))
    assert plain.weight.item() == pytest.approx(values.mean().item(), rel=1e-6)
    assert weighted.weight.item() > plain.weight.item()  # sum S^2/sum S >= mean S, strict when S differ


def test_zero_gamma_terms_are_left_out():
    model, topology, assignments = make("1-1-4")
    config = replace(PAPER_GAMMAS, gamma_disjoint=0.0, gamma_balance=0.0)
    losses = split_losses(model, topology, assignments.matrices(), config)
    assert losses.total.item() == losses.weight.item()
    assert losses.disjoint.item() > 0.5 and losses.balance.item() > 0.5  # still reported


def test_zero_gamma_does_not_propagate_nan():
    model, topology, assignments = make("1-1-4")
    matrices = assignments.matrices()
    config = replace(PAPER_GAMMAS, gamma_disjoint=1.0, gamma_weight=0.0, gamma_balance=1.0)
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    losses = split_losses(model, topology, matrices, config)
    assert torch.isnan(losses.weight)
    assert torch.isfinite(losses.total)
    assert losses.total.item() == pytest.approx((losses.disjoint + losses.balance).item())


def test_unsplit_spec_gives_zeros():
    model, topology, assignments = make("1-1-1")
    losses = split_losses(model, topology, assignments.matrices(), PAPER_GAMMAS)
    for value in (losses.disjoint, losses.weight, losses.balance, losses.total):
        assert value.item() == 0.0


def test_regularizer_gradients_finite_after_split():
    """A perfectly split fc (zero inter-group weights, one-hot P, Q) still gives finite gradients."""
    model, topology, _ = make("1-1-4")
    groups = 4
    labels_in, labels_out = torch.arange(model.fc.in_features) % groups, torch.arange(10) % groups
    with torch.no_grad():
        model.fc.weight.mul_((labels_out[:, None] == labels_in[None, :]).float())
    matrices = {
        "head_in": one_hot(groups, model.fc.in_features).float().requires_grad_(),
        "head_out": one_hot(groups, 10).float().requires_grad_(),
    }
    losses = split_losses(model, topology, matrices, PAPER_GAMMAS)
    assert losses.weight.item() < 1e-6
    assert losses.disjoint.item() == 0.0
    losses.total.backward()
    for tensor in (model.fc.weight, matrices["head_in"], matrices["head_out"]):
        assert torch.isfinite(tensor.grad).all()


# --- batched R_W against the per-layer formula ------------------------------------------------


def per_layer_reference(weight: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The per-layer R_W as the project computed it before batching: two matmuls per layer, the
    tap-averaged squared weight, sigma applied at the end."""
    wbar = weight.pow(2).mean(dim=(2, 3)) if weight.dim() == 4 else weight.pow(2)
    taps = weight.shape[2] * weight.shape[3] if weight.dim() == 4 else 1
    d_out, d_in = wbar.shape
    groups = p.shape[0]
    row = ((1 - p).abs() * (q.pow(2) @ wbar).clamp_min(1e-20).sqrt()).sum() / (d_in * math.sqrt(d_out))
    col = ((1 - q).abs() * (p.pow(2) @ wbar.T).clamp_min(1e-20).sqrt()).sum() / (math.sqrt(d_in) * d_out)
    return (row + col) / (2 * (groups - 1) * math.sqrt(1.0 / (taps * d_in)) / groups)


def _terms_and_grads(terms_fn, model, assignments):
    params = [p for p in (*model.parameters(), *assignments.values.values()) if p.requires_grad]
    disjoint, weight, balance = terms_fn()
    total = disjoint + weight + 10 * balance
    return torch.stack([disjoint, weight, balance]).detach(), torch.autograd.grad(total, params, allow_unused=True)


def _reference_terms(model, topology, assignments, weighted: bool):
    matrices = assignments.matrices()
    per_layer = torch.stack(
        [
            per_layer_reference(model.get_submodule(layer.path).weight, matrices[layer.input], matrices[layer.output])
            for layer in topology.layers
        ]
    )
    weights = term_weights(topology)
    disjoint = sum(w * disjoint_penalty(matrices[name]) for name, w in weights.items())
    balance = sum(w * balance_penalty(matrices[name]) for name, w in weights.items())
    return disjoint, aggregate_weight_penalties(per_layer, weighted), balance


BATCHED_CASES = [("wrn-16-2", "1-2-2"), ("wrn-16-2", "2-2-2"), ("wrn-16-2", "2-4-4"), ("wrn-10-3", "1-1-4")]
BATCHED_CASES += [("wrn-22-1", "2-4-4"), ("wrn-10-0.75", "2-2-2")]


def _trained_looking(arch: str, spec: str, seed: int):
    """A network and assignments away from their init, so the layers' values and gradients differ;
    float64, so that a comparison at 1e-6 sees the formulas, not float32 rounding."""
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = wide_resnet(arch, num_classes=10)
        topology = build_topology(model.plan, SplitSpec.parse(spec))
        assignments = GroupAssignments(topology, "softmax")
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        for value in assignments.values.values():
            value.normal_(0, 2.0)
        for param in model.parameters():
            param.mul_(1 + 0.5 * torch.rand_like(param))
    return model, topology, assignments


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize(("arch", "spec"), BATCHED_CASES)
def test_batched_terms_equal_the_per_layer_formula(arch, spec, weighted):
    """split_terms batches R_W over layers of one shape: its values and every gradient equal the
    per-layer formula's to 1e-6, on several architectures and splits."""
    model, topology, assignments = _trained_looking(arch, spec, seed=3)
    want, want_grads = _terms_and_grads(
        lambda: _reference_terms(model, topology, assignments, weighted), model, assignments
    )
    got, got_grads = _terms_and_grads(
        lambda: split_terms(model, topology, assignments.matrices(), weighted), model, assignments
    )
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for g, w in zip(got_grads, want_grads):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "spec"), [("wrn-16-2", "2-4-4"), ("wrn-10-3", "1-1-4")])
def test_compiled_terms_equal_the_eager_ones(arch, spec):
    """torch.compile of split_terms (what the grouping stage runs when engine.compile is set):
    values and gradients equal eager mode's to 1e-6."""
    model, topology, assignments = _trained_looking(arch, spec, seed=5)

    def terms():
        return split_terms(model, topology, assignments.matrices(), True)

    want, want_grads = _terms_and_grads(terms, model, assignments)
    got, got_grads = _terms_and_grads(torch.compile(terms), model, assignments)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for g, w in zip(got_grads, want_grads):
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-9)
