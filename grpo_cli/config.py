"""Run configurations: frozen dataclasses, validated on construction, stored as JSON in every output."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from grpo_cli.errors import UserError


def parse_tiers(tiers: str | None, num_generations: int | None, default_steps: int = 10) -> list[int]:
    """Denoising steps per group member from a tier spec.

    `"1x1,5x10"` -> [1, 10, 10, 10, 10, 10] (the seed's two-tier group), `"1x8,1x9,1x10"` -> [8, 9, 10]
    (three horizons), `"10"` or None -> uniform. The spec fixes the group size when no
    `num_generations` is given, and must agree with it otherwise.
    """
    if not tiers:
        if num_generations is None:
            raise UserError("give num_generations or a tier spec such as 1x1,5x10")
        return [default_steps] * num_generations
    steps: list[int] = []
    try:
        for part in tiers.split(","):
            count, _, k = part.strip().partition("x")
            if not k:  # a bare K: uniform over the whole group
                steps = [int(count)] * (num_generations or 1)
                break
            steps += [int(k)] * int(count)
    except ValueError:
        raise UserError(f"bad denoise tiers {tiers!r}: use COUNTxSTEPS,... e.g. 1x1,5x10") from None
    if any(k < 1 for k in steps) or not steps:
        raise UserError(f"bad denoise tiers {tiers!r}: every count and step number must be >= 1")
    if num_generations is not None and len(steps) != num_generations:
        raise UserError(f"denoise tiers {tiers!r} give {len(steps)} members but num_generations is "
                        f"{num_generations}")
    return steps


@dataclass(frozen=True)
class RolloutConfig:
    """Groups of trajectories that differ only in their initial flow noise (seed Eq. 3)."""

    policy: str = "tiny"
    """`tiny[:SEED]`, a local lerobot policy directory, or a hub id."""
    suite: str = "libero_10"
    tasks: tuple[int, ...] = (0,)
    init_states: tuple[int, ...] = (0,)
    """one group per (task, init state); every member of a group starts from that init state"""
    num_generations: int = 6
    """trajectories per group (TRL's name)"""
    denoise_tiers: str = "10"
    """denoising steps per member: `1x1,5x10` (seed E2), `1x8,1x9,1x10` (E1) or a uniform K"""
    max_steps: int | None = None
    """episode limit in env steps; None = the suite's (libero_10: 520)"""
    n_action_steps: int | None = None
    """actions executed per chunk before re-querying; None = the policy's n_action_steps"""
    image_size: int = 256
    """camera resolution (lerobot's LIBERO default 256; the policy resizes)"""
    store_images: bool = True
    seed: int = 0
    num_envs: int = 0
    """envs stepped in lockstep with one batched policy call; 0 = one per group member"""
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.num_generations < 1:
            raise UserError("num_generations must be >= 1")
        parse_tiers(self.denoise_tiers, self.num_generations)
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("max_steps must be >= 1")
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise UserError("n_action_steps must be >= 1")
        if self.image_size < 16:
            raise UserError("image_size must be >= 16")
        if self.num_envs < 0:
            raise UserError("num_envs must be >= 0")

    @property
    def steps_per_member(self) -> list[int]:
        return parse_tiers(self.denoise_tiers, self.num_generations)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class EvalConfig:
    """The seed's protocol: LIBERO-10, 20 episodes per task over fixed init states, K = 10."""

    policy: str = "tiny"
    suite: str = "libero_10"
    tasks: tuple[int, ...] | None = None
    """None = every task of the suite"""
    episodes_per_task: int = 20
    """episode i of a task starts from init state i (mod the task's 50)"""
    denoise_steps: int = 10
    max_steps: int | None = None
    n_action_steps: int | None = None
    image_size: int = 256
    seed: int = 0
    """seeds the flow noise of every episode"""
    num_envs: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.episodes_per_task < 1:
            raise UserError("episodes_per_task must be >= 1")
        if self.denoise_steps < 1:
            raise UserError("denoise_steps must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("max_steps must be >= 1")
        if self.num_envs < 1:
            raise UserError("num_envs must be >= 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)
