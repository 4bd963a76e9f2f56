"""GRPO math as pure functions: no I/O, no env, no policy. Equation numbers are the seed report's.

Dimension legend
    G   groups in a batch             n   members per group (num_generations)
    B   flattened samples (G*n or chunks)
    K   denoising steps               H   chunk size       Da  real action dims (masked)
    J   scored transitions of a chunk (K for `sde`, 1 for `ode`, fpo_samples for `fpo`)
    Dm  padded action dim (32)
"""

from __future__ import annotations

import math

import torch

SCALE_REWARDS = ("group", "batch", "none")


def tiered_rewards(rewards: torch.Tensor, tier_weights: torch.Tensor) -> torch.Tensor:
    """Eq. 4: each member's reward scaled by its slot weight.

    rewards (G, n): success in {0, 1} (the seed) or any base reward (`base_rewards`); tier_weights (n,),
    e.g. [0.1, 1, 1, 1, 1, 1] for the seed's two-tier group (slot 1 is the 1-step trajectory). Returns
    (G, n) in float64, the product of the float32 reward and the Python-float weight.
    """
    if tier_weights.shape != rewards.shape[-1:]:
        raise ValueError(f"tier_weights {tuple(tier_weights.shape)} must match group size {rewards.shape[-1]}")
    return rewards.to(torch.float32).to(torch.float64) * tier_weights.to(torch.float64)


def group_advantages(rewards: torch.Tensor, scale_rewards: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Eq. 1: A_i = (r_i - mean(r)) / (std(r) + eps) within each group.

    rewards (G, n). `scale_rewards`: `group` divides by each group's std, `batch` by the std of the
    whole batch, `none` only centres (Dr. GRPO). An all-equal group gives exactly 0, never NaN.
    Std is the population std (unbiased=False): a 2-member group [0, 1] gives advantages [-1, 1].
    """
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if scale_rewards == "group":
        scale = rewards.std(dim=-1, keepdim=True, unbiased=False)
    elif scale_rewards == "batch":
        scale = rewards.std(unbiased=False).expand_as(rewards[..., :1])
    elif scale_rewards == "none":
        return centred
    else:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    return centred / (scale + eps)


def ragged_group_advantages(rewards: list[torch.Tensor], scale_rewards: str = "group", eps: float = 1e-4
                            ) -> list[torch.Tensor]:
    """Eq. 1 for groups of unequal size (E5 and E6 add a member to all-fail groups): each (n_g,) group as
    `group_advantages`; `batch` divides by the std of all the batch's rewards together."""
    if scale_rewards == "batch":
        std = torch.cat(rewards).std(unbiased=False) if rewards else torch.tensor(0.0)
        return [(r - r.mean()) / (std + eps) for r in rewards]
    return [group_advantages(r[None], scale_rewards, eps)[0] for r in rewards]


def zero_std_groups(rewards: torch.Tensor) -> torch.Tensor:
    """(G,) bool: groups whose rewards are all equal (no GRPO signal; TRL's frac_reward_zero_std)."""
    return rewards.amax(dim=-1) == rewards.amin(dim=-1)


def clipped_surrogate(logratio: torch.Tensor, advantages: torch.Tensor, epsilon: float,
                      epsilon_high: float | None = None, dual_clip: float | None = None,
                      weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 5's policy term: -mean(min(rho A, clip(rho, 1 - eps, 1 + eps_high) A)).

    logratio (B,) = log pi_theta - log pi_old per sample (chunk or trajectory); advantages (B,).
    dual_clip c > 1 (dual-clip PPO): for A < 0 the objective is also bounded below by c A, so a sample
    whose ratio has exploded (chunk log-ratios sum thousands of terms) stops driving the update.
    weights (B,), summing to 1 (`sample_weights`), replace the plain mean when given.
    Returns (loss, metrics) with TRL's clip metrics: `clip_ratio/low_mean` (rho < 1 - eps where A < 0),
    `clip_ratio/high_mean` (rho > 1 + eps_high where A > 0), `clip_ratio/region_mean` (either).
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logratio)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + eps_high)
    objective = torch.min(ratio * advantages, clipped * advantages)
    if dual_clip is not None:
        objective = torch.where(advantages < 0, torch.max(objective, dual_clip * advantages), objective)
    loss = -objective.mean() if weights is None else -(objective * weights).sum()
    with torch.no_grad():
        low = ((ratio < 1 - epsilon) & (advantages < 0)).float()
        high = ((ratio > 1 + eps_high) & (advantages > 0)).float()
        metrics = {"clip_ratio/low_mean": low.mean(), "clip_ratio/high_mean": high.mean(),
                   "clip_ratio/region_mean": (low + high).clamp(max=1).mean(),
                   "ratio/mean": ratio.mean(), "ratio/min": ratio.min(), "ratio/max": ratio.max()}
    return loss, metrics


# --- Flow-SDE: the denoising chain as a Gaussian MDP (flow-likelihood.md) ------------------------------

def policy_loss(logratio: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor, epsilon: float,
                epsilon_high: float | None, dual_clip: float | None, kl: torch.Tensor, beta: float
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 5: the clipped surrogate over the weighted samples plus beta * KL to the reference.
    Returns (loss, the surrogate term alone, clip statistics)."""
    surrogate, clip = clipped_surrogate(logratio, advantages, epsilon, epsilon_high, dual_clip, weights)
    return surrogate + beta * kl, surrogate, clip


def sde_sigma(t: torch.Tensor, dt: float, noise_level: float) -> torch.Tensor:
    """sigma_t = a * sqrt(t / (1 - t)), with t clamped to <= 1 - dt/2 (sigma is infinite at t = 1).

    Clamping at the first step's midpoint keeps every step stochastic for every K >= 1 (K = 1 too,
    where it gives sigma = a). t (B,) current times; dt > 0 the step size 1/K. Returns (B,).
    """
    t_eff = torch.clamp(t, max=1.0 - dt / 2)
    return noise_level * torch.sqrt(t_eff / (1.0 - t_eff))


def sde_step_mean(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, dt: float, sigma: torch.Tensor
                  ) -> torch.Tensor:
    """Mean of x_{t-dt} under the reverse SDE with the ODE's marginals (Euler-Maruyama).

    mu = x_t - dt v - dt sigma^2 / (2t) eps_hat, eps_hat = x_t + (1 - t) v (the predicted noise).
    x_t, v (B, H, Dm); t, sigma (B,). With sigma = 0 this is exactly the Euler step x_t - dt v.
    """
    t_ = t.view(-1, 1, 1)
    s2 = (sigma ** 2).view(-1, 1, 1)
    eps_hat = x_t + (1.0 - t_) * v
    return x_t - dt * v - dt * s2 / (2.0 * t_) * eps_hat


# --- FPO: flow-matching policy gradients (flow-likelihood.md) -----------------------------------------

# log N(u; v, 1/2) = -(u - v)^2 + const: with this std the log-ratio of a chunk element under theta and
# theta_old is exactly its conditional flow-matching loss difference, l_old - l_theta (FPO's surrogate).
FPO_STD = 0.5 ** 0.5


def fpo_draws(generator: torch.Generator, count: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """FPO's Monte Carlo draws for one chunk: times (count,) and noise (count, *shape).

    The times follow lerobot SmolVLA's training distribution, Beta(1.5, 1) scaled to [0.001, 1] (its CDF is
    x^1.5, so x = u^(2/3)), so the ratio weighs the flow times that SFT fitted. The same generator state
    gives the same draws: theta_old and theta score a chunk on identical points.
    """
    taus = torch.rand(count, generator=generator) ** (2.0 / 3.0) * 0.999 + 0.001
    return taus, torch.randn((count, *shape), generator=generator)


def cfm_point(action: torch.Tensor, noise: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A point of the conditional flow from `noise` to `action` and its velocity target (lerobot's convention).

    action (B, H, Dm), noise (B, H, Dm), tau (B,) -> x_tau = tau noise + (1 - tau) action and u = noise - action.
    """
    t = tau.view(-1, 1, 1)
    return t * noise + (1.0 - t) * action, noise - action


def gaussian_logdensity(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """Element-wise log N(x; mean, std^2), zero on dims outside `mask`.

    x, mean (B, H, Dm); std (B,); mask (Dm,) bool (the real action dims) or (H, Dm). Returns (B, H, Dm).
    """
    std_ = std.view(-1, 1, 1)
    logp = -0.5 * ((x - mean) / std_) ** 2 - torch.log(std_) - 0.5 * math.log(2 * math.pi)
    if mask is not None:
        logp = logp * mask.to(logp.dtype)
    return logp


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """log N(x; mean, std^2 I) summed over the last two dims (H, Dm), counting only `mask`ed dims.

    x, mean (B, H, Dm); std (B,); mask (Dm,) bool (the real action dims) or (H, Dm). Returns (B,).
    """
    return gaussian_logdensity(x, mean, std, mask).sum(dim=(-2, -1))


RATIO_LEVELS = ("trajectory", "chunk", "step", "token")
LOSS_TYPES = ("bnpo", "grpo")


def ratio_samples(new: list[torch.Tensor], old: list[torch.Tensor], advantages: torch.Tensor, level: str,
                  chunks_per_trajectory: list[int], mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PPO samples (log-ratio, advantage) at one of four granularities.

    new, old: per chunk, element-wise log-densities (J, H, Dm) of its J scored denoising steps (zero
    outside `mask`); advantages (C,) per chunk; chunks_per_trajectory sums to C. Returns flat (N,) pairs:
    `trajectory` N = trajectories (sum over its chunks), `chunk` N = C (sum over S, H, Dm), `step` N =
    sum of S (one Gaussian transition of the chain, sum over H, Dm), `token` N = real action elements
    of every step (RLinf's token level: each ratio is one 1-D Gaussian, so it stays near 1).
    The third tensor (N,) gives each sample's trajectory (0 .. T-1), for `sample_weights`.
    """
    diffs = [n - o for n, o in zip(new, old, strict=True)]
    if level == "token":
        parts = [d[..., mask].flatten() for d in diffs]
    elif level == "step":
        parts = [d.sum(dim=(-2, -1)) for d in diffs]
    elif level in ("chunk", "trajectory"):
        parts = [d.sum().view(1) for d in diffs]
    else:
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {level!r}")
    adv = torch.cat([a.expand(len(p)) for a, p in zip(advantages, parts, strict=True)])
    logratio = torch.cat(parts)
    chunk_owner = torch.repeat_interleave(torch.arange(len(chunks_per_trajectory)),
                                          torch.tensor(chunks_per_trajectory))
    owner = torch.repeat_interleave(chunk_owner, torch.tensor([len(p) for p in parts]))
    if level == "trajectory":
        logratio = torch.stack([part.sum() for part in logratio.split(chunks_per_trajectory)])
        adv = torch.stack([part[0] for part in adv.split(chunks_per_trajectory)])
        owner = torch.arange(len(chunks_per_trajectory))
    return logratio, adv, owner


def sample_weights(owner: torch.Tensor, loss_type: str) -> torch.Tensor:
    """Weights (N,) summing to 1 that average the clipped objective over N samples (TRL's loss types).

    owner (N,): each sample's trajectory. `bnpo`: every sample alike, so a 280-step failure weighs ~2x a
    120-step success and negative advantages dominate; `grpo`: each trajectory's samples averaged
    first, then the trajectories alike (with group advantages summing to 0, pushes up and down balance).
    """
    if loss_type == "bnpo":
        return torch.full(owner.shape, 1.0 / len(owner))
    if loss_type == "grpo":
        counts = torch.bincount(owner)
        return 1.0 / (counts[owner] * int((counts > 0).sum())).float()
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def gaussian_kl_same_std(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mean_p, std^2) || N(mean_q, std^2)) = |mean_p - mean_q|^2 / (2 std^2), summed over (H, Dm).

    mean_p, mean_q (B, H, Dm); std (B,); mask (Dm,) or (H, Dm). Returns (B,).
    """
    kl = (mean_p - mean_q) ** 2 / (2 * std.view(-1, 1, 1) ** 2)
    if mask is not None:
        kl = kl * mask.to(kl.dtype)
    return kl.sum(dim=(-2, -1))


REWARDS = ("binary", "progress", "progress+success")
GROUP_FILTERS = ("none", "drop_degenerate", "success_band")


def base_rewards(success: torch.Tensor, progress: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-trajectory reward before tier weights. success, progress (G, n) -> (G, n).

    `binary` = success (the seed); `progress` = goal progress in [0, 1] (1 on success);
    `progress+success` = progress + success, so a success is worth twice a near miss.
    """
    s, p = success.to(torch.float32), progress.to(torch.float32)
    if mode == "binary":
        return s
    if mode == "progress":
        return p
    if mode == "progress+success":
        return p + s
    raise ValueError(f"reward must be one of {REWARDS}, got {mode!r}")


def keep_groups(success: torch.Tensor, rewards: torch.Tensor, mode: str, band: tuple[float, float] = (0.1, 0.9)
                ) -> torch.Tensor:
    """Which groups carry a learning signal. success, rewards (G, n) -> (G,) bool.

    `none` keeps all; `drop_degenerate` drops groups whose rewards are all equal (zero advantage);
    `success_band` keeps groups whose success rate lies in [lo, hi] (SimpleVLA-RL / RLinf use
    [0.1, 0.9]): all-fail and all-success groups go, even when a dense reward varies inside them.
    """
    if mode == "none":
        return torch.ones(success.shape[0], dtype=torch.bool)
    if mode == "drop_degenerate":
        return ~zero_std_groups(rewards)
    if mode == "success_band":
        rate = success.to(torch.float32).mean(-1)
        return (rate >= band[0]) & (rate <= band[1])
    raise ValueError(f"group_filter must be one of {GROUP_FILTERS}, got {mode!r}")


def value_advantages(rewards: torch.Tensor, values: list[torch.Tensor], scale_rewards: str = "batch",
                     gae_lambda: float = 1.0, eps: float = 1e-4) -> list[torch.Tensor]:
    """Per-chunk advantages against a learned value, by GAE over chunks (gamma 1, reward only at the end).

    rewards (T,) per trajectory; values: T tensors (C_i,), the value of each chunk's start state ->
    T tensors (C_i,). With TD errors d_c = V(s_c+1) - V(s_c) and d_last = r - V(s_last),
    A_c = sum_k lambda^k d_c+k: lambda 1 gives r - V(s_c) (Monte Carlo), lambda 0 gives d_c, the change
    in expected outcome the chunk itself caused. `scale_rewards` other than `none` divides by the std of
    all the batch's A_ic (a group std means little once the baseline differs chunk by chunk).
    """
    adv = []
    for r, v in zip(rewards, values, strict=True):
        delta = torch.cat([v[1:], r.reshape(1).to(v.dtype)]) - v  # (C,)
        a = torch.empty_like(delta)
        running = torch.zeros((), dtype=delta.dtype)
        for c in range(len(delta) - 1, -1, -1):  # backwards: A_c = d_c + lambda * A_c+1
            running = delta[c] + gae_lambda * running
            a[c] = running
        adv.append(a)
    if scale_rewards == "none" or not adv:
        return adv
    scale = torch.cat(adv).std(unbiased=False)
    return [a / (scale + eps) for a in adv]
