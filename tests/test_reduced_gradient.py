"""Tests of the simplex reduced-gradient update (supp. eq. 2 and the official ImageNet-22k rule)."""

from __future__ import annotations

import math

import pytest
import torch

from splitnet.reduced_gradient import SimplexReducedGradient, max_admissible_step, reduced_gradient


def f64(data) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


def random_simplex(groups: int, size: int) -> torch.Tensor:
    return torch.softmax(torch.randn(groups, size, dtype=torch.float64), dim=0)


def assert_on_simplex(value: torch.Tensor) -> None:
    assert (value >= 0).all()
    torch.testing.assert_close(value.sum(0), torch.ones(value.shape[1], dtype=value.dtype), rtol=0, atol=1e-6)


def test_hand_computed_example():
    # column 0: mu = 0, g1 = [0, 1, -0.5, 2]; entry 3 is at 0 with g1 > 0 -> held at 0;
    #           red_mu = -(1 - 0.5) = -0.5  (eq. 2: sum over d_nu > 0 of g_mu - g_nu)
    # column 1: mu = 0, g1 = [0, 0, -2]; the zero entry may grow (g1 < 0), kept and balanced by mu
    # column 2: at a vertex with every other gradient larger -> no move
    value = f64([[0.5, 0.6, 1.0], [0.3, 0.4, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    grad = f64([[1.0, 1.0, 0.0], [2.0, 1.0, 1.0], [0.5, -1.0, 2.0], [3.0, 5.0, 3.0]])
    red = reduced_gradient(value, grad)
    expected = f64([[-0.5, 2.0, 0.0], [1.0, 0.0, 0.0], [-0.5, -2.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(red, expected)
    # largest admissible steps: 0.3/1 (entry 1), 0.6/2 (mu), unbounded
    torch.testing.assert_close(max_admissible_step(value, red), f64([0.3, 0.3, math.inf]))


def test_zero_tolerance_holds_near_zero_entries():
    value = f64([[0.99999], [0.000005], [0.000005]])
    grad = f64([[0.0], [1.0], [-1.0]])
    torch.testing.assert_close(reduced_gradient(value, grad).flatten(), f64([0.0, 1.0, -1.0]))
    held = reduced_gradient(value, grad, zero_tol=1e-5).flatten()
    torch.testing.assert_close(held, f64([1.0, 0.0, -1.0]))


def test_reduced_gradient_columns_sum_to_zero():
    torch.manual_seed(0)
    value = random_simplex(5, 40)
    value[:, :10] = torch.nn.functional.one_hot(torch.arange(10) % 5, 5).T.double()  # vertices
    grad = torch.randn(5, 40, dtype=torch.float64)
    red = reduced_gradient(value, grad)
    torch.testing.assert_close(red.sum(0), torch.zeros(40, dtype=torch.float64), rtol=0, atol=1e-12)
    # red is a descent direction: <grad, red> >= 0, so -red lowers a linear objective
    assert ((grad * red).sum(0) >= -1e-12).all()


def test_paper_step_limited_by_boundary_lands_exactly_on_zero():
    value = f64([[0.5], [0.3], [0.2]])
    param = torch.nn.Parameter(value.clone())
    param.grad = f64([[0.0], [1.0], [0.0]])  # red = [-1, 1, 0]
    SimplexReducedGradient([param], lr=10.0).step()  # admissible step 0.3 < lr
    assert param[1, 0].item() == 0.0
    torch.testing.assert_close(param.detach().flatten(), f64([0.8, 0.0, 0.2]))


def test_paper_step_below_boundary_is_plain_lr_step():
    param = torch.nn.Parameter(f64([[0.5], [0.3], [0.2]]))
    param.grad = f64([[0.0], [1.0], [0.0]])
    SimplexReducedGradient([param], lr=0.1).step()
    torch.testing.assert_close(param.detach().flatten(), f64([0.6, 0.2, 0.2]))


@pytest.mark.parametrize("rule", ["paper", "official"])
def test_random_steps_stay_on_simplex(rule):
    torch.manual_seed(1)
    lr = 0.5
    param = torch.nn.Parameter(random_simplex(4, 64))
    opt = SimplexReducedGradient([param], lr=lr, rule=rule)
    limited_columns = 0
    for _ in range(200):
        param.grad = torch.randn_like(param)
        limited = max_admissible_step(param.detach(), reduced_gradient(param.detach(), param.grad)) < lr
        opt.step()
        assert_on_simplex(param.detach())
        if rule == "paper":
            # a step cut short by the boundary puts an entry exactly on 0
            assert ((param.detach() == 0).any(0) | ~limited).all()
            limited_columns += int(limited.sum())
        else:
            assert (param > 0).all()  # clamped to 1e-5 before renormalising, so never exactly 0
    if rule == "paper":
        assert limited_columns > 100  # the boundary did bind often


def test_paper_rule_minimises_linear_objective():
    torch.manual_seed(2)
    groups, size = 5, 30
    # distinct costs per column (gaps >= 1, so convergence takes few steps)
    c = torch.stack([torch.randperm(groups) for _ in range(size)], dim=1).double()
    param = torch.nn.Parameter(random_simplex(groups, size))
    opt = SimplexReducedGradient([param], lr=0.2)
    previous = float("inf")
    for _ in range(100):
        param.grad = c.clone()  # dJ/dd for J = sum(c * d)
        opt.step()
        objective = float((c * param.detach()).sum())
        assert objective <= previous + 1e-12
        previous = objective
    vertex = torch.nn.functional.one_hot(c.argmin(0), groups).T.double()
    assert torch.equal(param.detach(), vertex)


def test_official_rule_matches_hand_computation():
    # one step, fresh momentum: red = [-1, 1, 0], admissible 0.3 < lr = 0.6 -> red scaled by 0.5,
    # value -= 0.6 * 0.5 * red -> [0.8, 0.0, 0.2] -> clamp 1e-5 -> renormalise
    param = torch.nn.Parameter(f64([[0.5], [0.3], [0.2]]))
    param.grad = f64([[0.0], [1.0], [0.0]])
    opt = SimplexReducedGradient([param], lr=0.6, rule="official")
    opt.step()
    expected = f64([0.8, 1e-5, 0.2])
    torch.testing.assert_close(param.detach().flatten(), expected / expected.sum())
    torch.testing.assert_close(opt.state[param]["momentum_buffer"].flatten(), f64([-0.5, 0.5, 0.0]))


def test_frozen_params_are_untouched():
    torch.manual_seed(3)
    live = torch.nn.Parameter(random_simplex(3, 10))
    frozen = torch.nn.Parameter(random_simplex(3, 10))
    before_live, before_frozen = live.detach().clone(), frozen.detach().clone()
    opt = SimplexReducedGradient([live, frozen], lr=0.1, rule="official")
    live.grad = torch.randn_like(live)
    opt.step()
    assert torch.equal(frozen.detach(), before_frozen)
    assert not torch.equal(live.detach(), before_live)
    assert frozen not in opt.state


def test_param_group_lr_is_read_at_step_time():
    param = torch.nn.Parameter(f64([[0.5], [0.3], [0.2]]))
    opt = SimplexReducedGradient([param], lr=1.0)
    opt.param_groups[0]["lr"] = 0.05
    param.grad = f64([[0.0], [1.0], [0.0]])
    opt.step()
    torch.testing.assert_close(param.detach().flatten(), f64([0.55, 0.25, 0.2]))


def test_official_momentum_state_dict_roundtrip():
    torch.manual_seed(4)

    def run(opt, param, grads):
        for g in grads:
            param.grad = g.clone()
            opt.step()

    grads = [torch.randn(3, 8, dtype=torch.float64) * 0.1 for _ in range(6)]
    start = random_simplex(3, 8)

    reference = torch.nn.Parameter(start.clone())
    opt = SimplexReducedGradient([reference], lr=0.05, rule="official")
    run(opt, reference, grads)

    first = torch.nn.Parameter(start.clone())
    opt_first = SimplexReducedGradient([first], lr=0.05, rule="official")
    run(opt_first, first, grads[:3])
    saved = opt_first.state_dict()
    assert "momentum_buffer" in saved["state"][0]

    resumed = torch.nn.Parameter(first.detach().clone())
    opt_resumed = SimplexReducedGradient([resumed], lr=0.05, rule="official")
    opt_resumed.load_state_dict(saved)
    run(opt_resumed, resumed, grads[3:])
    torch.testing.assert_close(resumed.detach(), reference.detach(), rtol=0, atol=1e-15)

    # without the buffer the trajectory differs, so the check above is not vacuous
    fresh = torch.nn.Parameter(first.detach().clone())
    run(SimplexReducedGradient([fresh], lr=0.05, rule="official"), fresh, grads[3:])
    assert not torch.allclose(fresh.detach(), reference.detach(), rtol=0, atol=1e-12)


def test_invalid_arguments():
    param = torch.nn.Parameter(random_simplex(2, 3))
    with pytest.raises(ValueError, match="rule"):
        SimplexReducedGradient([param], lr=0.1, rule="adam")
    with pytest.raises(ValueError, match="lr"):
        SimplexReducedGradient([param], lr=0.0)
    with pytest.raises(ValueError, match="G x D"):
        SimplexReducedGradient([torch.nn.Parameter(torch.ones(3))], lr=0.1)
