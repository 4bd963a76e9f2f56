"""What an episode is: its spec (task, init state, K, noise seed), its seed derivation, its trajectory.

Dimension legend
    T   env steps of an episode          C   policy queries (chunks) of an episode
    H   chunk size (50)                  Dm  padded action dim (32)      Da  env action dim (7)
    K   denoising steps of the member    S   state dim (8)

The rollout engine produces trajectories, storage writes and reads them, the trainer learns from them:
all three import this module, and it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from grpo_cli.envs.libero import TaskSpec
from grpo_cli.errors import UserError

NOISE_STREAMS = {"rollout": 1, "train": 2, "eval": 3}
"""who draws an episode's flow noise: an eval episode never shares its noise with a training one"""


def episode_seed(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit seed for one episode's noise stream, independent across (seed, stream, *keys).

    The stream's tag and the number of keys enter the entropy: SeedSequence pads short entropy with
    zeros, so without them eval episode (s, task, i) and training step (s, task, i, member 0) collided.
    """
    entropy = [seed, NOISE_STREAMS[stream], len(keys), *keys]
    return int(np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def usable_init_states(requested: tuple[int, ...], task: TaskSpec, what: str) -> list[int]:
    """The init states of `task` a run may use: `requested`, or all of the task's when empty."""
    bad = [i for i in requested if i >= task.num_init_states]
    if bad:
        raise UserError(f"bad {what}: task {task.task_id} has init states 0..{task.num_init_states - 1}")
    if len(set(requested)) != len(requested):
        raise UserError(f"bad {what}: an init state is listed twice")
    return list(requested) or list(range(task.num_init_states))


@dataclass(frozen=True)
class EpisodeSpec:
    """What to run: a task, an init state, K denoising steps, and the seed of the noise stream."""

    task: TaskSpec
    init_state: int
    denoise_steps: int
    noise_seed: int
    group: int = -1
    member: int = -1


@dataclass
class Trajectory:
    """One episode, buffered in memory until it is written (never per-step file writes)."""

    spec: EpisodeSpec
    actions: list[np.ndarray] = field(default_factory=list)  # T x (Da,) executed actions
    states: list[np.ndarray] = field(default_factory=list)  # T x (S,) observation before each action
    rewards: list[float] = field(default_factory=list)
    query_steps: list[int] = field(default_factory=list)  # C env steps at which the policy looked
    query_states: list[np.ndarray] = field(default_factory=list)  # C x (S,)
    query_images: dict[str, list[np.ndarray]] = field(default_factory=dict)  # key -> C x (h, w, 3)
    noise: list[np.ndarray] = field(default_factory=list)  # C x (H, Dm)
    chains: list[np.ndarray] = field(default_factory=list)  # C x (K+1, H, Dm)
    success: bool = False
    stalled: bool = False  # ended early by the stall rule (training only; EnvWorker.stall_steps)
    progress: float = 0.0
    """goal progress at the end (LiberoEnv.progress with the slots' shaping); 1.0 on success"""
    chunk_progress: list[float] = field(default_factory=list)  # C: goal progress after each chunk
    final_state: np.ndarray | None = None  # (S,) the observation after the last action (not in `states`)

    @property
    def length(self) -> int:
        return len(self.actions)
