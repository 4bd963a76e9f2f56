"""Flow-head likelihoods: Flow-SDE is the exact density of its sampled chain; the seed's `ode` reading
has zero gradient at theta_old."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grpo_cli import grpo
from grpo_cli.policies.smolvla import SmolVLAAdapter


def _batch(ad: SmolVLAAdapter, n: int):
    rng = np.random.default_rng(0)
    obs = [{"observation.images.image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
            "observation.images.image2": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=8).astype(np.float32)} for _ in range(n)]
    return ad.preprocess(obs, ["put the bowl in the drawer"] * n)


def _sde_chains(ad: SmolVLAAdapter, prefix, k: int, a: float, seed: int = 0):
    noise = ad.sample_noise(torch.Generator().manual_seed(seed), 2)
    gens = [torch.Generator().manual_seed(seed * 10 + b) for b in range(2)]
    return torch.stack(ad.denoise(prefix, noise, [k, k], sde_noise=a, generators=gens))


@pytest.mark.parametrize("k", [1, 4])
def test_sde_logprob_is_the_density_of_the_sampled_chain(k: int) -> None:
    ad = SmolVLAAdapter.load("tiny")
    prefix = ad.encode_prefix(_batch(ad, 2))
    a = 0.5
    chains = _sde_chains(ad, prefix, k, a)
    with torch.no_grad():
        ours = ad.chain_logprob(prefix, chains, "sde", sde_noise=a)
    # Independently: the sampler drew x_{k+1} = mu + s * xi with xi ~ N(0, I) from each member's generator,
    # so the density is sum log N(xi; 0, 1) - log s over the 7 real dims.
    expected = torch.zeros(2)
    for b in range(2):
        gen = torch.Generator().manual_seed(b)
        for step in range(k):
            xi = torch.randn((50, 32), generator=gen)[:, :7]
            s = grpo.sde_sigma(torch.tensor([1.0 - step / k]), 1 / k, a) * math.sqrt(1 / k)
            expected[b] += (torch.distributions.Normal(0.0, 1.0).log_prob(xi) - torch.log(s)).sum()
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-2)


def test_sde_sampling_is_reproducible_and_stochastic() -> None:
    ad = SmolVLAAdapter.load("tiny")
    prefix = ad.encode_prefix(_batch(ad, 2))
    a, b = _sde_chains(ad, prefix, 3, 0.5, seed=1), _sde_chains(ad, prefix, 3, 0.5, seed=1)
    assert torch.equal(a, b)
    noise = ad.sample_noise(torch.Generator().manual_seed(1), 2)
    ode = torch.stack(ad.denoise(prefix, noise, [3, 3]))
    assert (a[:, -1] - ode[:, -1]).abs().max() > 1e-2  # step noise changes the chunk


@pytest.mark.parametrize("likelihood", ["ode", "sde"])
def test_policy_gradient_vanishes_for_ode_but_not_sde(likelihood: str) -> None:
    ad = SmolVLAAdapter.load("tiny")
    ad.policy.train()
    prefix = ad.encode_prefix(_batch(ad, 2))
    if likelihood == "ode":
        noise = ad.sample_noise(torch.Generator().manual_seed(0), 2)
        chains = torch.stack(ad.denoise(prefix, noise, [4, 4]))  # what was executed, theta = theta_old
    else:
        chains = _sde_chains(ad, prefix, 4, 0.5)
    ad.policy.zero_grad()
    logp = ad.chain_logprob(prefix, chains, likelihood)
    advantages = torch.tensor([1.0, -0.5])
    (-(logp * advantages).sum()).backward()
    norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in ad.policy.parameters() if p.grad is not None))
    if likelihood == "ode":
        assert norm == 0.0  # the seed's reading: no first-order policy gradient at theta_old
    else:
        assert norm > 1e-3


def test_fpo_log_ratios_are_lerobots_flow_matching_loss_differences() -> None:
    """`fpo` scores a chunk at (time, noise) draws; its log-density is minus lerobot's own training loss
    (VLAFlowMatching.forward at the same action, noise and time) plus a constant, so a log-ratio between
    two parameter sets is exactly their flow-matching loss difference."""
    ad = SmolVLAAdapter.load("tiny")
    batch = _batch(ad, 2)
    prefix = ad.encode_prefix(batch)
    chains = torch.stack(ad.denoise(prefix, ad.sample_noise(torch.Generator().manual_seed(0), 2), [4, 4]))
    draws = [grpo.fpo_draws(torch.Generator().manual_seed(b), 3, (50, 32)) for b in range(2)]
    taus, noise = torch.stack([t for t, _ in draws]), torch.stack([n for _, n in draws])
    with torch.no_grad():
        targets, means, stds = ad.transitions(prefix, chains, "fpo", fpo_draws=(taus, noise))
        ours = grpo.gaussian_logdensity(targets.flatten(0, 1), means.flatten(0, 1), stds.flatten(), ad.action_mask)
        images, img_masks = ad.policy.prepare_images(batch)
        for j in range(3):
            lerobot_loss = ad.model.forward(images, img_masks, batch["observation.language.tokens"],
                                            batch["observation.language.attention_mask"],
                                            ad.policy.prepare_state(batch), chains[:, -1], noise[:, j], taus[:, j])
            constant = -math.log(grpo.FPO_STD) - 0.5 * math.log(2 * math.pi)
            expected = (constant - lerobot_loss)[..., :7]
            torch.testing.assert_close(ours.view(2, 3, 50, 32)[:, j, :, :7], expected, rtol=1e-4, atol=1e-4)
    assert targets.shape == means.shape == (2, 3, 50, 32) and not torch.equal(targets, means)


def test_fpo_draws_follow_lerobots_time_distribution_and_repeat() -> None:
    from scipy import stats

    taus, noise = grpo.fpo_draws(torch.Generator().manual_seed(3), 4000, (2, 3))
    again = grpo.fpo_draws(torch.Generator().manual_seed(3), 4000, (2, 3))
    assert torch.equal(taus, again[0]) and torch.equal(noise, again[1]) and noise.shape == (4000, 2, 3)
    assert 0.001 <= float(taus.min()) and float(taus.max()) <= 1.0
    # lerobot's sample_time: Beta(1.5, 1) * 0.999 + 0.001
    assert stats.kstest(taus.numpy(), stats.beta(1.5, 1.0, loc=0.001, scale=0.999).cdf).pvalue > 0.01
    assert stats.kstest(taus.numpy(), stats.uniform(0.001, 0.999).cdf).pvalue < 1e-6
