"""A noise-space policy (DSRL's latent steering, Wagenmaker et al. 2025): RL acts on the flow's initial noise.

The flow policy samples a chunk by integrating its ODE from z ~ N(0, I). Here z ~ N(mu_w(s), I), with
mu_w a small MLP of the normalised robot state (one shift per action dim, see NoisePolicy) and the flow
model frozen. Why:
- the likelihood is exact and cheap (one Gaussian over z, no chain through the action expert);
- at mu_w = 0 (its last layer starts at zero) the policy *is* the SFT policy, and it is evaluated
  with the sampler it trains (the deterministic sampler from sampled noise): no sampler mismatch;
- every chunk stays an output of the SFT flow, so updates steer among behaviours it already has
  instead of moving the action expert (which drifted without gains in the `sde` runs).

Dimension legend: B batch, S state dims, H chunk, Dm padded action dim (the flow's noise is (H, Dm)).
"""

from __future__ import annotations

import torch
from torch import nn

NOISE_POLICY_PREFIX = "noise_policy."  # its parameters' names inside the lerobot policy module
HIDDEN = 64


class NoisePolicy(nn.Module):
    """mu_w(state): (B, S) normalised state -> (B, H, Dm) mean of the initial noise; std fixed at 1.

    One shift per real action dim, shared by the chunk's H positions (padded dims keep mean 0): a
    per-element mean (H x Dm = 1,600 outputs) would have to be learnt from one episode outcome per
    trajectory, and its gradient would be noise; a shared shift sums H positions' evidence and still
    steers the whole chunk (a bias on each action dim's latent, e.g. the gripper's)."""

    def __init__(self, state_dim: int, chunk_size: int, action_dim: int, padded_dim: int, hidden: int = HIDDEN,
                 seed: int = 0):
        super().__init__()
        self.chunk_size, self.padded_dim = chunk_size, padded_dim
        generator = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(state_dim, hidden)
        self.out = nn.Linear(hidden, action_dim)
        with torch.no_grad():
            bound = 1.0 / state_dim**0.5
            self.hidden.weight.uniform_(-bound, bound, generator=generator)
            self.hidden.bias.uniform_(-bound, bound, generator=generator)
            self.out.weight.zero_()  # mu = 0: exactly the SFT policy's N(0, I) noise at the start
            self.out.bias.zero_()

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        shift = self.out(torch.tanh(self.hidden(state.float())))  # (B, Da)
        mean = torch.nn.functional.pad(shift, (0, self.padded_dim - shift.shape[1]))  # (B, Dm)
        return mean[:, None, :].expand(-1, self.chunk_size, -1)
