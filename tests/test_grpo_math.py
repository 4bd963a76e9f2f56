"""Hand-worked checks of the GRPO math (grpo_cli/grpo.py)."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_cli import grpo


def test_group_advantages_hand_worked() -> None:
    # mixed, all-success, all-fail, and a tiered group (1-step success x 0.1, 10-step success)
    r = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.1, 1.0]])
    adv = grpo.group_advantages(r, "group", eps=1e-4)
    torch.testing.assert_close(adv[0], torch.tensor([-1.0, 1.0]) / (1 + 2e-4), atol=1e-3, rtol=0)
    assert torch.equal(adv[1], torch.zeros(2)) and torch.equal(adv[2], torch.zeros(2))  # zero std, no NaN
    assert not torch.isnan(adv).any()
    torch.testing.assert_close(adv[3], torch.tensor([-0.45, 0.45]) / (0.45 + 1e-4))
    torch.testing.assert_close(grpo.group_advantages(r, "none"), r - r.mean(-1, keepdim=True))
    batch = grpo.group_advantages(r, "batch")
    torch.testing.assert_close(batch, (r - r.mean(-1, keepdim=True)) / (r.std(unbiased=False) + 1e-4))
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo.group_advantages(r, "grouped")


def test_ragged_group_advantages_are_eq1_per_group_and_batch_scaled_over_all() -> None:
    equal = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    for scale in ("group", "none", "batch"):
        ragged = grpo.ragged_group_advantages(list(equal), scale)
        torch.testing.assert_close(torch.stack(ragged), grpo.group_advantages(equal, scale))
    e5 = [torch.tensor([0.0, 0.0, 0.05]), torch.tensor([1.0, 0.0])]  # an all-fail group plus E5's fallback member
    batch = grpo.ragged_group_advantages(e5, "batch")
    std = torch.cat(e5).std(unbiased=False)
    torch.testing.assert_close(batch[1], (e5[1] - 0.5) / (std + 1e-4))
    assert grpo.ragged_group_advantages([torch.tensor([0.0, 0.0])], "group")[0].tolist() == [0.0, 0.0]


def test_policy_loss_is_the_clipped_surrogate_plus_beta_kl() -> None:
    logratio, adv = torch.tensor([0.1, -0.3, 0.0]), torch.tensor([1.0, -1.0, 0.5])
    weights = torch.full((3,), 1 / 3)
    surrogate, clip = grpo.clipped_surrogate(logratio, adv, 0.2, None, None, weights)
    loss, policy, clip2 = grpo.policy_loss(logratio, adv, weights, 0.2, None, None, torch.tensor(2.0), 0.04)
    torch.testing.assert_close(policy, surrogate)
    torch.testing.assert_close(loss, surrogate + 0.08)
    assert clip2.keys() == clip.keys()


def test_zero_std_groups() -> None:
    r = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    assert grpo.zero_std_groups(r).tolist() == [True, True, False]


def test_tiered_rewards() -> None:
    success = torch.tensor([[1, 0, 1, 1, 0, 1], [1, 0, 0, 0, 0, 0]])
    weights = torch.tensor([0.1, 1, 1, 1, 1, 1])
    assert grpo.tiered_rewards(success, weights).tolist() == [
        pytest.approx([0.1, 0, 1, 1, 0, 1]), pytest.approx([0.1, 0, 0, 0, 0, 0])]
    progress = torch.tensor([[0.5, 0.25]], dtype=torch.float32)  # any base reward; float64 like w * float(r)
    assert grpo.tiered_rewards(progress, torch.tensor([0.1, 1.0], dtype=torch.float64)).tolist() == [[0.1 * 0.5, 0.25]]
    with pytest.raises(ValueError):
        grpo.tiered_rewards(success, torch.ones(5))


@pytest.mark.parametrize("adv", [1.0, -1.0])
def test_clipping_at_epsilon_for_both_signs(adv: float) -> None:
    eps = 0.2
    ratios = torch.tensor([0.5, 0.9, 1.0, 1.1, 1.5], requires_grad=True)
    logratio = torch.log(ratios)
    a = torch.full((5,), adv)
    loss, m = grpo.clipped_surrogate(logratio, a, eps)
    loss.backward()
    grad = ratios.grad
    # gradient flows only where the min picks the unclipped term
    if adv > 0:  # clipped above 1 + eps: ratio 1.5 gets no gradient; 0.5 (below 1 - eps) still does
        assert grad[4] == 0 and grad[0] != 0
        assert m["clip_ratio/high_mean"].item() == pytest.approx(0.2) and m["clip_ratio/low_mean"] == 0
    else:  # A < 0: clipped below 1 - eps
        assert grad[0] == 0 and grad[4] != 0
        assert m["clip_ratio/low_mean"].item() == pytest.approx(0.2) and m["clip_ratio/high_mean"] == 0
    assert m["clip_ratio/region_mean"].item() == pytest.approx(0.2)
    expected = -torch.min(ratios * a, torch.clamp(ratios, 1 - eps, 1 + eps) * a).mean()
    assert loss.item() == pytest.approx(expected.item())


def test_epsilon_high_is_asymmetric() -> None:
    _, m = grpo.clipped_surrogate(torch.log(torch.tensor([1.25, 1.25])), torch.tensor([1.0, 1.0]), 0.2, 0.3)
    assert m["clip_ratio/high_mean"] == 0


def test_gaussian_logprob_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    std = torch.tensor([0.3, 1.0, 2.0])
    mask = torch.tensor([True, True, False, True, False])
    ref = torch.distributions.Normal(mean, std.view(-1, 1, 1)).log_prob(x)[..., mask].sum(dim=(-2, -1))
    torch.testing.assert_close(grpo.gaussian_logprob(x, mean, std, mask), ref)


def test_ratio_samples_at_each_level() -> None:
    # 3 chunks from 2 trajectories (2 + 1 chunks); chunk 2 scored with K = 1, the others with K = 2
    g = torch.Generator().manual_seed(3)
    mask = torch.tensor([True, True, False])
    shapes = [(2, 4, 3), (2, 4, 3), (1, 4, 3)]
    new = [torch.randn(s, generator=g) * mask for s in shapes]
    old = [torch.randn(s, generator=g) * mask for s in shapes]
    adv = torch.tensor([0.5, 0.5, -1.0])
    per_chunk = torch.stack([(n - o).sum() for n, o in zip(new, old, strict=True)])
    lr, a, _ = grpo.ratio_samples(new, old, adv, "chunk", [2, 1], mask)
    torch.testing.assert_close(lr, per_chunk)
    assert torch.equal(a, adv)
    lr, a, _ = grpo.ratio_samples(new, old, adv, "trajectory", [2, 1], mask)
    torch.testing.assert_close(lr, torch.stack([per_chunk[:2].sum(), per_chunk[2]]))
    assert torch.equal(a, torch.tensor([0.5, -1.0]))
    lr, a, _ = grpo.ratio_samples(new, old, adv, "step", [2, 1], mask)
    assert lr.shape == (5,) and torch.equal(a, torch.tensor([0.5, 0.5, 0.5, 0.5, -1.0]))
    torch.testing.assert_close(lr[:2].sum(), per_chunk[0])
    lr, a, owner = grpo.ratio_samples(new, old, adv, "token", [2, 1], mask)
    assert lr.shape == (5 * 4 * 2,)  # only the 2 real action dims of each (step, position)
    assert owner.tolist() == [0] * 32 + [1] * 8
    torch.testing.assert_close(lr.sum(), per_chunk.sum())
    assert (a[-8:] == -1.0).all() and (a[:-8] == 0.5).all()
    torch.testing.assert_close(lr[:8], (new[0] - old[0])[0][:, :2].flatten())
    with pytest.raises(ValueError, match="ratio_level"):
        grpo.ratio_samples(new, old, adv, "episode", [2, 1], mask)


def test_loss_types_weigh_samples_or_trajectories() -> None:
    owner = torch.tensor([0, 0, 0, 1])  # a long failure (3 samples) and a short success (1)
    torch.testing.assert_close(grpo.sample_weights(owner, "bnpo"), torch.full((4,), 0.25))
    torch.testing.assert_close(grpo.sample_weights(owner, "grpo"), torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2]))
    # Group advantages -1 / +1: bnpo's objective leans on the failure, grpo's balances the two.
    logratio = torch.zeros(4, requires_grad=True)
    adv = torch.tensor([-1.0, -1.0, -1.0, 1.0])
    for loss_type, expected in (("bnpo", [0.25, 0.25, 0.25, -0.25]), ("grpo", [1 / 6, 1 / 6, 1 / 6, -0.5])):
        logratio.grad = None
        loss, _ = grpo.clipped_surrogate(logratio, adv, 0.2, weights=grpo.sample_weights(owner, loss_type))
        loss.backward()
        torch.testing.assert_close(logratio.grad, torch.tensor(expected))
    unweighted, _ = grpo.clipped_surrogate(logratio, adv, 0.2)
    weighted, _ = grpo.clipped_surrogate(logratio, adv, 0.2, weights=grpo.sample_weights(owner, "bnpo"))
    torch.testing.assert_close(unweighted, weighted)
    with pytest.raises(ValueError, match="loss_type"):
        grpo.sample_weights(owner, "dapo")


def test_kl_closed_form_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(1)
    mp, mq = torch.randn(1, 2, 3, generator=g), torch.randn(1, 2, 3, generator=g)
    std = torch.tensor([0.7])
    closed = grpo.gaussian_kl_same_std(mp, mq, std)
    p = torch.distributions.Normal(mp, 0.7)
    samples = p.sample((200_000,))
    mc = (p.log_prob(samples) - torch.distributions.Normal(mq, 0.7).log_prob(samples)).sum(dim=(-2, -1)).mean()
    assert closed.item() == pytest.approx(mc.item(), rel=0.02)


def test_sde_step_reduces_to_euler_without_noise() -> None:
    x, v, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.tensor([1.0, 0.5])
    mu = grpo.sde_step_mean(x, v, t, 0.1, torch.zeros(2))
    torch.testing.assert_close(mu, x - 0.1 * v)
    sigma = grpo.sde_sigma(torch.tensor([1.0, 0.5]), 0.1, 0.5)
    assert torch.isfinite(sigma).all()
    assert sigma[1].item() == pytest.approx(0.5) and sigma[0].item() == pytest.approx(0.5 * math.sqrt(19.0))
    assert grpo.sde_sigma(torch.tensor([1.0]), 1.0, 0.5).item() == pytest.approx(0.5)  # K = 1


def test_base_rewards_and_group_filters() -> None:
    success = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    progress = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1, 1, 1, 1], [1, 0.5, 0.2, 0.0], [0.3, 0.1, 0.1, 0.0]])
    assert torch.equal(grpo.base_rewards(success, progress, "binary"), success.float())
    assert torch.equal(grpo.base_rewards(success, progress, "progress"), progress)
    assert torch.equal(grpo.base_rewards(success, progress, "progress+success"), progress + success)
    dense = grpo.base_rewards(success, progress, "progress")
    # drop_degenerate keeps an all-fail group whose dense rewards still differ (group 3)
    assert grpo.keep_groups(success, dense, "drop_degenerate").tolist() == [False, False, True, True]
    assert grpo.keep_groups(success, success.float(), "drop_degenerate").tolist() == [False, False, True, False]
    # success_band [0.1, 0.9] drops all-fail and all-success groups whatever their dense reward
    assert grpo.keep_groups(success, dense, "success_band", (0.1, 0.9)).tolist() == [False, False, True, False]
    assert grpo.keep_groups(success, dense, "success_band", (0.3, 0.9)).tolist() == [False] * 4
    assert grpo.keep_groups(success, dense, "none").all()
    with pytest.raises(ValueError):
        grpo.keep_groups(success, dense, "bogus")


def test_dual_clip_bounds_exploded_negative_samples() -> None:
    logratio = torch.log(torch.tensor([1000.0, 1000.0, 0.5]))
    adv = torch.tensor([-1.0, 1.0, -1.0])
    plain, _ = grpo.clipped_surrogate(logratio, adv, 0.2)
    dual, _ = grpo.clipped_surrogate(logratio, adv, 0.2, dual_clip=3.0)
    # sample 0 (A<0, ratio 1000): plain keeps -1000, dual-clip bounds it at -3; the others are unchanged
    assert plain.item() == pytest.approx(-(-1000.0 + 1.2 - 0.8) / 3)
    assert dual.item() == pytest.approx(-(-3.0 + 1.2 - 0.8) / 3)
    lr = logratio.clone().requires_grad_(True)
    grpo.clipped_surrogate(lr, adv, 0.2, dual_clip=3.0)[0].backward()
    assert lr.grad[0] == 0  # the exploded sample no longer drives the update


def test_value_advantages_credit_each_chunk_against_its_state() -> None:
    # Two episodes: a success (reward 2) whose value rose as the grasp held, a failure (0) whose value fell.
    rewards = torch.tensor([2.0, 0.0])
    values = [torch.tensor([1.0, 1.8, 2.0]), torch.tensor([1.0, 0.1])]
    raw = grpo.value_advantages(rewards, values, "none")
    torch.testing.assert_close(raw[0], torch.tensor([1.0, 0.2, 0.0]))  # the decisive first chunk gets the credit
    torch.testing.assert_close(raw[1], torch.tensor([-1.0, -0.1]))
    scaled = grpo.value_advantages(rewards, values, "group")
    scale = torch.cat(raw).std(unbiased=False)
    for a, r in zip(scaled, raw, strict=True):
        torch.testing.assert_close(a, r / (scale + 1e-4))


def test_gae_lambda_credits_each_chunk_with_the_value_change_it_caused() -> None:
    rewards = torch.tensor([2.0, 0.0])
    values = [torch.tensor([1.0, 1.8, 2.0]), torch.tensor([1.0, 0.1])]
    td = grpo.value_advantages(rewards, values, "none", gae_lambda=0.0)
    torch.testing.assert_close(td[0], torch.tensor([0.8, 0.2, 0.0]))  # V(s_c+1) - V(s_c); last: r - V
    torch.testing.assert_close(td[1], torch.tensor([-0.9, -0.1]))
    half = grpo.value_advantages(rewards, values, "none", gae_lambda=0.5)
    torch.testing.assert_close(half[0], torch.tensor([0.8 + 0.5 * 0.2, 0.2, 0.0]))
    torch.testing.assert_close(half[1], torch.tensor([-0.9 + 0.5 * -0.1, -0.1]))
    # Lambda 1 telescopes to r - V(s_c), the Monte Carlo advantage.
    for mc, r, v in zip(grpo.value_advantages(rewards, values, "none", gae_lambda=1.0), rewards, values, strict=True):
        torch.testing.assert_close(mc, r - v)
