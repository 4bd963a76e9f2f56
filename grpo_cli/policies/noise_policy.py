"""A noise-space policy (after DSRL's latent steering, Wagenmaker et al. 2025): RL acts on the flow's noise.

The flow policy samples each chunk by integrating its ODE from z ~ N(0, I). Here every chunk of an
episode starts from z = eps + delta: eps ~ N(0, I) as before, and one latent offset per episode,
delta ~ N(m, s^2 I) over the real action dims (added at every chunk position). The flow model is
frozen; the policy's parameters are m. Why this shape:
- the likelihood is exact and tiny: one 7-dim Gaussian per *episode*. A score-function gradient's
  variance grows with the number of random draws that share one episode outcome: Flow-SDE chains draw
  ~70,000 per LIBERO episode (20 chunks x 10 steps x 350 elements), per-chunk noise ~7,000; at a few
  hundred episodes their gradients are noise (BENCHMARKS.md, runs 2-10). Here there are 7.
- m = 0 with exploration off (evaluation: delta = m) is exactly the SFT policy, chunk for chunk.
- every chunk stays an output of the SFT flow: updates steer among behaviours it already has.
What it cannot do: react to the state (m is one offset for the task); it is a steering knob, not a
new skill. Measured (BENCHMARKS.md, session 9, LIBERO-Object task 0, tiny SmolVLA at 33%): exploring
at s = 0.5 and s = 0.15 dropped training success to 0/40 and 1/16 (Flow-SDE on the same init states:
4/16) -- the flow is very sensitive to a coherent noise shift, so there was no gain to find.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NOISE_POLICY_PREFIX = "noise_policy."  # its parameters' names inside the lerobot policy module


class NoisePolicy(nn.Module):
    """m: the mean (Da,) of the per-episode latent offset; the exploration std s is the run's `noise_std`."""

    def __init__(self, action_dim: int):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(action_dim))  # m = 0: the SFT policy

    def sample(self, std: float, generator: torch.Generator) -> torch.Tensor:
        """delta ~ N(m, std^2 I), (Da,); std = 0 gives m (evaluation)."""
        return self.offset.detach() + std * torch.randn(self.offset.shape, generator=generator)

    def log_prob(self, delta: torch.Tensor, std: float) -> torch.Tensor:
        """Element-wise log N(delta; m, std^2): delta (N, Da) -> (N, Da), differentiable in m."""
        return -0.5 * ((delta - self.offset) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
