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

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from grpo_cli.config import RolloutConfig
from grpo_cli.envs.libero import CAMERAS, STATE_KEY, TaskSpec, scene_mode
from grpo_cli.envs.slots import EnvSlots, make_env_slots
from grpo_cli.episodes import EpisodeSpec, Trajectory, episode_seed
from grpo_cli.errors import EnvFailure, UserError
from grpo_cli.policies.smolvla import SmolVLAAdapter
from grpo_cli.storage import write_rollout


class _Wave:
    """The episodes of one wave, one per env slot: query the policy for some slots, collect their chunks."""

    def __init__(self, adapter: SmolVLAAdapter, slots: EnvSlots, wave: Sequence[EpisodeSpec],
                 max_steps: int | None, n_exec: int, keep_images: bool, sde_noise: float):
        self.adapter, self.slots, self.wave = adapter, slots, wave
        self.n_exec, self.keep_images, self.sde_noise = n_exec, keep_images, sde_noise
        self.trajs = [Trajectory(spec) for spec in wave]
        self.gens = [torch.Generator().manual_seed(spec.noise_seed) for spec in wave]
        self.obs = slots.reset_many([(i, spec.task, spec.init_state) for i, spec in enumerate(wave)])
        self.limits = [max_steps or spec.task.max_steps for spec in wave]
        self.chunks: dict[int, np.ndarray] = {}  # slot -> the actions it is executing

    def query(self, lane: list[int]) -> None:
        """One policy call for every slot of the lane; start their chunks (in parallel with worker processes)."""
        adapter, obs, wave, gens = self.adapter, self.obs, self.wave, self.gens
        batch = adapter.preprocess([obs[i] for i in lane], [wave[i].task.language for i in lane])
        prefix = adapter.encode_prefix(batch)
        noise = adapter.initial_noise([gens[i] for i in lane])
        if adapter.noise_actor is not None:  # a steered policy: its actor sets the noise (policies/noise_actor.py)
            noise = adapter.noise_actor.steer(noise, np.stack([obs[i][STATE_KEY] for i in lane]),
                                              [self.trajs[i].length / self.limits[i] for i in lane],
                                              [gens[i] for i in lane])
        chains = adapter.denoise(prefix, noise, [wave[i].denoise_steps for i in lane], sde_noise=self.sde_noise,
                                 generators=[gens[i] for i in lane])
        actions = adapter.unnormalize(torch.stack([c[-1] for c in chains]))  # (B, H, Da)
        for b, i in enumerate(lane):
            traj = self.trajs[i]
            traj.query_steps.append(traj.length)
            traj.query_states.append(obs[i][STATE_KEY])
            if self.keep_images:
                for key in CAMERAS.values():
                    traj.query_images.setdefault(key, []).append(obs[i][key])
            traj.noise.append(noise[b].numpy())
            traj.chains.append(chains[b].numpy())
            self.chunks[i] = actions[b, :self.n_exec]
        self.slots.submit_chunks([(i, self.chunks[i], self.limits[i] - self.trajs[i].length) for i in lane])

    def collect(self, lane: list[int], on_episode: Callable[[Trajectory], None] | None) -> list[int]:
        """Wait for the lane's chunks; returns the slots whose episodes go on."""
        still_active = []
        for i, (after, rewards, success, last_obs, progress, stalled) in zip(lane, self.slots.gather_chunks(lane),
                                                                             strict=True):
            traj = self.trajs[i]
            self.obs[i] = last_obs
            traj.states += [traj.query_states[-1], *after[:-1]]  # observation before each action
            traj.actions += list(self.chunks[i][: len(rewards)])
            traj.rewards += rewards
            traj.success, traj.progress, traj.stalled = success, progress, stalled
            traj.chunk_progress.append(progress)
            traj.final_state = after[-1]
            if success or stalled or traj.length >= self.limits[i]:
                if on_episode:
                    on_episode(traj)
            else:
                still_active.append(i)
        return still_active


def run_episodes(adapter: SmolVLAAdapter, slots: EnvSlots, episodes: Sequence[EpisodeSpec],
                 max_steps: int | None = None, n_action_steps: int | None = None,
                 keep_images: bool = True, sde_noise: float = 0.0, overlap: bool = False,
                 on_episode: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
    """Run episodes in waves of `slots.size`; inside a wave all slots share each policy call.

    sde_noise > 0 samples chunks with Flow-SDE steps (their Gaussian draws come from the episode's
    own noise stream too); 0 is lerobot's deterministic sampler.
    overlap: split each wave into two lanes (even and odd slots) that take turns, so the policy computes
    one lane's chunks while the other lane's envs step (pays with worker processes). Each lane is one
    policy call, so trajectories differ from overlap=False only through batch composition.

    Returns trajectories in the order of `episodes`.
    """
    n_exec = n_action_steps or adapter.config.n_action_steps
    results: list[Trajectory] = []
    for start in range(0, len(episodes), slots.size):
        wave = _Wave(adapter, slots, episodes[start:start + slots.size], max_steps, n_exec, keep_images, sde_noise)
        everyone = list(range(len(wave.trajs)))
        lanes = [everyone[0::2], everyone[1::2]] if overlap and len(everyone) > 1 else [everyone]
        for lane in lanes:
            wave.query(lane)
        while any(lanes):
            for k, lane in enumerate(lanes):
                if lane:
                    lanes[k] = wave.collect(lane, on_episode)
                    if lanes[k]:
                        wave.query(lanes[k])
        results += wave.trajs
    return results


class LocalRollouts:
    """A trainer's rollout backend on its own node: env slots in this process, or one worker process per
    env (`make_slots` decides). An env failure restarts the slots and reruns the episodes (same seeds, so
    the same trajectories), up to `retries` times; then the run stops with one line. The other backend
    is shards.ShardPool (long-lived workers elsewhere); the trainer is handed one and knows neither."""

    handoff_s: float | None = None  # no hand-off: the envs are local

    def __init__(self, adapter: SmolVLAAdapter, make_slots: Callable[[], EnvSlots], retries: int,
                 log: Callable[[str], None] = print, **episode_options: Any):
        self.adapter, self.make_slots, self.retries, self.log = adapter, make_slots, retries, log
        self.options = episode_options  # run_episodes' keywords: max_steps, n_action_steps, sde_noise, ...
        self.slots: EnvSlots | None = None  # built at the first rollout
        self.env_failures = 0

    def run(self, episodes: Sequence[EpisodeSpec], trainable: Callable[[], dict[str, torch.Tensor]] | None = None,
            label: str = "") -> list[Trajectory]:
        """The episodes' trajectories, in order (`trainable` is for remote backends: local envs share the
        trainer's policy)."""
        for attempt in range(self.retries + 1):
            if self.slots is None:
                self.slots = self.make_slots()
            try:
                return run_episodes(self.adapter, self.slots, episodes, **self.options)
            except EnvFailure as err:
                self.env_failures += 1
                reason = str(err).splitlines()[0]
                if attempt == self.retries:
                    raise UserError(f"{label}envs failed {attempt + 1} times, last: {reason}") from None
                self.log(f"{label}{reason}; restarting the envs (retry {attempt + 1})")
                self.close()
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.slots is not None:
            self.slots.close()
            self.slots = None


def group_episodes(tasks: Sequence[TaskSpec], init_states: Sequence[int], steps_per_member: Sequence[int],
                   seed: int) -> list[EpisodeSpec]:
    """One group per (task, init state): every member shares the init state, each has its own noise."""
    episodes = []
    for task in tasks:
        for init_state in init_states:
            group = len(episodes) // len(steps_per_member)
            for member, k in enumerate(steps_per_member):
                episodes.append(EpisodeSpec(task, init_state, k,
                                            episode_seed(seed, "rollout", task.task_id, init_state, member),
                                            group=group, member=member))
    return episodes


def rollout_part(cfg_json: str, episodes: list[Any], out: str, on_episode: Callable[[Any], None] | None = None
                 ) -> dict[str, int]:
    """Run the given episodes of a rollout and write them to `out` (a shard's part or the whole file).

    The one rollout body: `grpo-vla rollout` calls it in-process, shards call it in workers. Returns
    counts (trajectories, successes, env steps), not the trajectories, which can be large."""
    cfg = RolloutConfig(**{**json.loads(cfg_json), "tasks": (), "init_states": ()})
    adapter = SmolVLAAdapter.load(cfg.policy, device=cfg.device)
    slots = make_env_slots(min(cfg.num_envs or cfg.num_generations, len(episodes)), cfg.image_size,
                           privileged_state=adapter.privileged_state, processes=cfg.parallel_envs,
                           reply_timeout_s=cfg.env_timeout_s)
    try:
        trajs = run_episodes(adapter, slots, episodes, max_steps=cfg.max_steps, n_action_steps=cfg.n_action_steps,
                             keep_images=cfg.store_images, overlap=cfg.overlap_policy,
                             on_episode=on_episode)
        renderers = slots.renderers()
    finally:
        slots.close()
    env_args = {"suite": cfg.suite, "scene": scene_mode(), "image_size": cfg.image_size, "control_freq": 20,
                "max_steps": cfg.max_steps,
                "n_action_steps": cfg.n_action_steps or adapter.config.n_action_steps, "renderers": renderers}
    write_rollout(out, trajs, cfg_json, adapter.identity, env_args)
    return {"trajectories": len(trajs), "successes": sum(bool(t.success) for t in trajs),
            "env_steps": int(sum(t.length for t in trajs))}
