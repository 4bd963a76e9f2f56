"""Episodes of a flow policy in LIBERO: lockstep env slots, one batched policy call per query.

Dimension legend
    T   env steps of an episode          C   policy queries (chunks) of an episode
    H   chunk size (50)                  Dm  padded action dim (32)      Da  env action dim (7)
    K   denoising steps of the member    S   state dim (8)

An episode is fully determined by (policy, task, init state, K, noise seed): its noise stream is a
torch generator seeded from the episode's own seed, so batching, the number of env slots and
sharding never change a trajectory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from grpo_cli.envs.libero import CAMERAS, STATE_KEY, LiberoEnv, TaskSpec
from grpo_cli.policies.smolvla import SmolVLAAdapter


def episode_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one episode's noise stream, independent across (seed, *keys)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


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

    @property
    def length(self) -> int:
        return len(self.actions)


class LocalEnvSlots:
    """Env slots in this process, one LiberoEnv each, rebuilt only when a slot changes task."""

    def __init__(self, size: int, image_size: int, images: bool = True):
        self.size = size
        self.image_size = image_size
        self.images = images
        self._envs: list[LiberoEnv | None] = [None] * size

    def reset(self, slot: int, task: TaskSpec, init_state: int) -> dict[str, np.ndarray]:
        env = self._envs[slot]
        if env is None or env.spec != task:
            if env is not None:
                env.close()
            env = self._envs[slot] = LiberoEnv(task, image_size=self.image_size, images=self.images)
        return env.reset(init_state)

    def run_chunk(self, slot: int, actions: np.ndarray, steps_left: int
                  ) -> tuple[list[np.ndarray], list[float], bool, dict[str, np.ndarray]]:
        """Execute up to len(actions) steps; stop on success or when steps_left run out.

        Renders cameras only on the last step (the one whose observation the policy reads next).
        Returns (state after each step, reward of each step, success, last observation).
        """
        env = self._envs[slot]
        assert env is not None, "reset a slot before stepping it"
        n = min(len(actions), steps_left)
        states, rewards, success, obs = [], [], False, {}
        for i in range(n):
            obs, reward, success, _ = env.step(actions[i], render=i == n - 1)
            states.append(obs[STATE_KEY])
            rewards.append(reward)
            if success:
                break
        return states, rewards, success, obs

    def close(self) -> None:
        for env in self._envs:
            if env is not None:
                env.close()
        self._envs = [None] * self.size


def run_episodes(adapter: SmolVLAAdapter, slots: LocalEnvSlots, episodes: Sequence[EpisodeSpec],
                 max_steps: int | None = None, n_action_steps: int | None = None,
                 keep_images: bool = True, sde_noise: float = 0.0,
                 on_episode: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
    """Run episodes in waves of `slots.size`; inside a wave all slots share each policy call.

    sde_noise > 0 samples chunks with Flow-SDE steps (their Gaussian draws come from the episode's
    own noise stream too); 0 is lerobot's deterministic sampler.

    Returns trajectories in the order of `episodes`.
    """
    n_exec = n_action_steps or adapter.config.n_action_steps
    results: list[Trajectory] = []
    for start in range(0, len(episodes), slots.size):
        wave = list(episodes[start:start + slots.size])
        trajs = [Trajectory(spec) for spec in wave]
        gens = [torch.Generator().manual_seed(spec.noise_seed) for spec in wave]
        obs = [slots.reset(i, spec.task, spec.init_state) for i, spec in enumerate(wave)]
        limits = [max_steps or spec.task.max_steps for spec in wave]
        active = list(range(len(wave)))
        while active:
            # One policy call for every slot that needs a chunk now.
            batch = adapter.preprocess([obs[i] for i in active], [wave[i].task.language for i in active])
            prefix = adapter.encode_prefix(batch)
            noise = torch.cat([adapter.sample_noise(gens[i]) for i in active])  # (B, H, Dm)
            chains = adapter.denoise(prefix, noise, [wave[i].denoise_steps for i in active], sde_noise=sde_noise,
                                     generators=[gens[i] for i in active])
            actions = adapter.unnormalize(torch.stack([c[-1] for c in chains]))  # (B, H, Da)
            still_active = []
            for b, i in enumerate(active):
                traj = trajs[i]
                traj.query_steps.append(traj.length)
                traj.query_states.append(obs[i][STATE_KEY])
                if keep_images:
                    for key in CAMERAS.values():
                        traj.query_images.setdefault(key, []).append(obs[i][key])
                traj.noise.append(noise[b].numpy())
                traj.chains.append(chains[b].numpy())
                chunk = actions[b, :n_exec]
                after, rewards, success, obs[i] = slots.run_chunk(i, chunk, limits[i] - traj.length)
                traj.states += [traj.query_states[-1], *after[:-1]]  # observation before each action
                traj.actions += list(chunk[: len(rewards)])
                traj.rewards += rewards
                traj.success = success
                if success or traj.length >= limits[i]:
                    if on_episode:
                        on_episode(traj)
                else:
                    still_active.append(i)
            active = still_active
        results += trajs
    return results


def group_episodes(tasks: Sequence[TaskSpec], init_states: Sequence[int], steps_per_member: Sequence[int],
                   seed: int) -> list[EpisodeSpec]:
    """One group per (task, init state): every member shares the init state, each has its own noise."""
    episodes = []
    for task in tasks:
        for init_state in init_states:
            group = len(episodes) // len(steps_per_member)
            for member, k in enumerate(steps_per_member):
                episodes.append(EpisodeSpec(task, init_state, k,
                                            episode_seed(seed, task.task_id, init_state, member),
                                            group=group, member=member))
    return episodes
