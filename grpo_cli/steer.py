"""Noise steering (DSRL, Wagenmaker et al. 2025): SAC trains a noise actor for a frozen flow policy.

The LIBERO episode is the environment and the VLA's denoising sits inside it: the actor's action is a
chunk's initial noise (policies/noise_actor.py), the frozen policy turns it into the chunk, and the envs
execute it. The VLA's weights never move (each step checks). SAC itself is stable-baselines3's: its
networks, replay buffer, target critics, entropy tuning and `SAC.train`; the episodes are ours
(rollout.LocalRollouts: the env slots, retries and seeded noise streams every other command uses).

One step, top to bottom (as DSRL's pi0 code alternates whole trajectories and updates):
  1. collect  one episode per env slot; (task, init state) drawn from (seed, step). Until
              `warmup_env_steps` the chunks use the SFT's own N(0, I) noise, then the actor's
  2. store    per chunk: (actor inputs, noise action, reward, next inputs, done) into SAC's replay buffer
  3. update   `utd` SAC gradient steps per chunk collected, once warm-up is over
  4. metrics

Resume is bit-exact: a step's checkpoint holds the SAC networks, optimizers, entropy coefficient and the
whole replay buffer, and every random draw of step s derives from (seed, s) (the replay sampling of SB3
uses numpy's and torch's global generators: they are seeded before each update).

Dimension legend: policies/noise_actor.py (B, H, Dm, Da, P, F); C chunks of an episode.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_cli.config import SteerConfig
from grpo_cli.envs.libero import task_spec
from grpo_cli.envs.slots import make_env_slots
from grpo_cli.episodes import EpisodeSpec, Trajectory, episode_seed, usable_init_states
from grpo_cli.errors import UserError
from grpo_cli.policies.noise_actor import (
    ACTING_PREFIX,
    ActorSpec,
    NoiseActor,
    actor_features,
    noise_action,
    steer_policy_class,
)
from grpo_cli.policies.smolvla import SmolVLAAdapter, params_digest
from grpo_cli.presets import resolve
from grpo_cli.rollout import LocalRollouts
from grpo_cli.runs import run_loop
from grpo_cli.storage import read_checkpoint, write_checkpoint

REPLAY_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones")


def chunk_rewards(traj: Trajectory, kind: str) -> np.ndarray:
    """(C,) SAC rewards of an episode's chunks. `success` (DSRL's): -1 per chunk, 0 on the chunk that succeeds
    (it ends the episode). `progress`: that plus each chunk's change in goal progress (0 for the first)."""
    rewards = -np.ones(len(traj.chains), dtype=np.float32)
    if traj.success:
        rewards[-1] = 0.0
    if kind == "progress":
        progress = np.asarray(traj.chunk_progress, dtype=np.float32)
        rewards[1:] += np.diff(progress)
    return rewards


def chunk_transitions(traj: Trajectory, spec: ActorSpec, limit: int, kind: str) -> dict[str, np.ndarray]:
    """An episode's (C,) transitions in SAC's terms: observations and next_observations (C, F), actions
    (C, P*Da), rewards (C,), dones (C,): only the success chunk is terminal; an episode cut by its step
    limit bootstraps from the state it reached."""
    chunks = len(traj.chains)
    states = [*traj.query_states[:chunks], traj.final_state]
    elapsed = [*(q / limit for q in traj.query_steps[:chunks]), traj.length / limit]
    features = actor_features(np.stack(states), elapsed, spec.actor_inputs)
    dones = np.zeros(chunks, dtype=np.float32)
    dones[-1] = float(traj.success)
    return {"observations": features[:-1], "next_observations": features[1:],
            "actions": np.stack([noise_action(n, spec.positions, spec.action_dim, spec.noise_bound)
                                 for n in traj.noise[:chunks]]),
            "rewards": chunk_rewards(traj, kind), "dones": dones}


def steer_sac_class() -> type:
    """stable-baselines3's SAC, with the actor's Adam rate apart from the critics' (DSRL's 1e-4 and 3e-4):
    SB3 sets one rate on every optimizer at the start of each `train` call, so the actor's is set after it."""
    from stable_baselines3 import SAC

    class SteerSAC(SAC):
        actor_learning_rate: float | None = None

        def _update_learning_rate(self, optimizers: Any) -> None:
            super()._update_learning_rate(optimizers)
            if self.actor_learning_rate is not None:
                for group in self.actor.optimizer.param_groups:
                    group["lr"] = self.actor_learning_rate

    return SteerSAC


def squashed_means(actor: Any, observations: np.ndarray) -> torch.Tensor:
    """(N, P*Da) tanh of the actor's Gaussian means: what it would steer towards, for `actor_change`."""
    with torch.no_grad():
        mean, _, _ = actor.get_action_dist_params(torch.from_numpy(observations))
    return torch.tanh(mean)


def _spaces_only_env(spec: ActorSpec) -> Any:
    """A gymnasium env that only declares SAC's spaces: stable-baselines3 builds its networks and buffer
    from an env, and our episodes are stepped by the rollout engine instead (never by SB3)."""
    import gymnasium as gym

    class SpacesOnly(gym.Env):
        observation_space, action_space = spec.spaces()

        def step(self, action: Any) -> Any:
            raise RuntimeError("steer episodes are stepped by grpo_cli.rollout, not by stable-baselines3")

        def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
            raise RuntimeError("steer episodes are reset by grpo_cli.rollout, not by stable-baselines3")

    return SpacesOnly()


def _seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, 7, *keys]).generate_state(1)[0])


class SteerTrainer:
    """The frozen policy, SAC and the env slots; `step()` is one wave of episodes and its SAC updates."""

    def __init__(self, cfg: SteerConfig, run_dir: Path, log: Callable[[str], None] = print):
        from stable_baselines3.common.logger import Logger

        self.cfg, self.run_dir, self.log = cfg, Path(run_dir), log
        self.adapter = SmolVLAAdapter.load(cfg.policy, device=cfg.device)
        if self.adapter.noise_actor is not None:
            raise UserError(f"{cfg.policy} is already a steered policy: steer its frozen policy instead")
        self.adapter.policy.requires_grad_(False)
        self.vla_digest = params_digest(self.adapter.policy)
        self.spec = ActorSpec.of(dataclasses.asdict(cfg), self.adapter.state_dim, self.adapter.chunk_size,
                                 self.adapter.action_dim, self.adapter.config.n_action_steps)
        self.tasks = [task_spec(cfg.suite, t) for t in cfg.tasks]
        self.starts = [(task, i) for task in self.tasks
                       for i in usable_init_states(cfg.init_states, task, "init_states")]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(cfg.seed, 0))  # the networks' initial weights
            self.sac = steer_sac_class()(
                steer_policy_class(), _spaces_only_env(self.spec), learning_rate=cfg.learning_rate,
                buffer_size=cfg.buffer_size, learning_starts=0, batch_size=cfg.batch_size, tau=cfg.tau,
                gamma=cfg.gamma, ent_coef=f"auto_{cfg.ent_coef_init}",
                target_entropy="auto" if cfg.target_entropy is None else cfg.target_entropy,
                policy_kwargs={"net_arch": list(cfg.hidden_sizes)},
                replay_buffer_kwargs={"handle_timeout_termination": False}, device="cpu")
        self.sac.actor_learning_rate = cfg.actor_learning_rate
        self.sac.set_logger(Logger(folder=None, output_formats=[]))
        # The actor that acts (and is saved for eval): SAC's own, or with actor_averaging its running average.
        self.acting = copy.deepcopy(self.sac.actor) if cfg.actor_averaging > 0 else self.sac.actor
        self.actor = NoiseActor(self.spec, self.acting, cfg.to_json(), {"source": str(run_dir)})
        self.rollouts = LocalRollouts(
            self.adapter, lambda: make_env_slots(
                cfg.num_envs or 1, cfg.image_size, processes=cfg.parallel_envs,
                privileged_state=self.adapter.privileged_state, progress_shaping=cfg.progress_shaping,
                reach_shaping=cfg.reach_shaping, reply_timeout_s=cfg.env_timeout_s),
            cfg.env_failure_retries, log, max_steps=cfg.max_steps, n_action_steps=cfg.n_action_steps,
            keep_images=False, overlap=cfg.overlap_policy)
        self.step_index = 0
        self.env_steps = 0  # so far in the run: decides the end of warm-up (checkpointed)

    # --- one step ----------------------------------------------------------------------------------------
    def step(self, env_step_room: int | None = None) -> dict[str, float]:
        cfg, s = self.cfg, self.step_index
        rng = np.random.default_rng([cfg.seed, s])
        t0 = time.perf_counter()

        # 1. Collect: one episode per env slot; the actor picks the noise once warm-up is over.
        steering = self.env_steps >= cfg.warmup_env_steps
        self.adapter.noise_actor = self.actor if steering else None
        episodes = []
        for slot in range(cfg.num_envs or 1):
            task, init_state = self.starts[int(rng.integers(len(self.starts)))]
            episodes.append(EpisodeSpec(task, init_state, self.adapter.config.num_steps,
                                        episode_seed(cfg.seed, "train", s, slot), member=slot))
        trajs = self.rollouts.run(episodes, label=f"step {s + 1}: ")
        self.adapter.noise_actor = None

        # 2. Store every chunk as a SAC transition.
        batches = [chunk_transitions(t, self.spec, cfg.max_steps or t.spec.task.max_steps, cfg.steer_reward)
                   for t in trajs]
        for b in batches:
            for c in range(len(b["rewards"])):
                self.sac.replay_buffer.add(b["observations"][c:c + 1], b["next_observations"][c:c + 1],
                                           b["actions"][c:c + 1], b["rewards"][c:c + 1], b["dones"][c:c + 1], [{}])
        env_steps = sum(t.length for t in trajs)
        chunks = sum(len(b["rewards"]) for b in batches)
        self.env_steps += env_steps
        t_rollout = time.perf_counter() - t0

        # 3. Update: utd gradient steps per chunk, from the end of warm-up on; then the acting actor follows
        #    (itself, or its average); actor_change: how far its squashed means moved on this step's inputs.
        t1 = time.perf_counter()
        updates = cfg.utd * chunks if self.env_steps >= cfg.warmup_env_steps else 0
        sac_stats: dict[str, float] = {}
        inputs = np.concatenate([b["observations"] for b in batches])
        before = squashed_means(self.acting, inputs)
        if updates:
            np.random.seed(_seed(cfg.seed, 1, s))  # SB3 samples its replay batches from numpy's global RNG
            torch.manual_seed(_seed(cfg.seed, 2, s))  # and the actor's draws inside the update from torch's
            self.sac.train(gradient_steps=updates, batch_size=cfg.batch_size)
            sac_stats = {f"sac/{k.removeprefix('train/')}": float(v)
                         for k, v in self.sac.logger.name_to_value.items() if k != "train/n_updates"}
            self.sac.logger.name_to_value.clear()
            if self.acting is not self.sac.actor:
                with torch.no_grad():
                    for average, trained in zip(self.acting.parameters(), self.sac.actor.parameters(), strict=True):
                        average.lerp_(trained, cfg.actor_averaging)
        actor_change = float((squashed_means(self.acting, inputs) - before).abs().mean())
        t_update = time.perf_counter() - t1

        # 4. Metrics; the VLA must not have moved (drift exactly 0, checked by its digest).
        if params_digest(self.adapter.policy) != self.vla_digest:
            raise RuntimeError("the frozen policy's parameters changed during a steer step")
        self.step_index += 1
        rewards = np.concatenate([b["rewards"] for b in batches])
        return {"step": s + 1, "env_steps": env_steps, "chunks": chunks, "steering": float(steering),
                "success_rate": float(np.mean([t.success for t in trajs])),
                "progress": float(np.mean([t.progress for t in trajs])), "reward": float(rewards.mean()),
                "episode_length": float(np.mean([t.length for t in trajs])),
                "replay_size": int(self.sac.replay_buffer.size()), "gradient_updates": int(self.sac._n_updates),
                "updates": updates, "actor_change": actor_change, "drift_pct": 0.0,
                "env_failures": self.rollouts.env_failures,
                **sac_stats, "time/rollout": t_rollout, "time/update": t_update,
                "SPS": env_steps / max(t_rollout + t_update, 1e-9)}

    # --- checkpoints -------------------------------------------------------------------------------------
    def save(self) -> Path:
        path = self.run_dir / "checkpoints" / f"step_{self.step_index:06d}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        sac, rb = self.sac, self.sac.replay_buffer
        size = rb.size()
        write_checkpoint(
            path, step=self.step_index,
            params={**sac.policy.state_dict(), "log_ent_coef": sac.log_ent_coef.detach(), **self._acting_params()},
            optimizer_state=None, param_names=[], config_json=self.cfg.to_json(), policy=self.adapter.identity,
            reference=None, replay={},
            extra={"algorithm": "steer", "env_steps": self.env_steps, "gradient_updates": int(sac._n_updates),
                   "replay_pos": int(rb.pos), "replay_full": bool(rb.full)},
            optimizers={"actor": sac.actor.optimizer.state_dict(), "critic": sac.critic.optimizer.state_dict(),
                        "ent_coef": sac.ent_coef_optimizer.state_dict()},
            arrays={f"replay/{name}": getattr(rb, name)[:size] for name in REPLAY_FIELDS})
        return path

    def _acting_params(self) -> dict[str, torch.Tensor]:
        """The averaged acting actor's weights, as `acting_actor.*` (NoiseActor.load prefers them to `actor.*`)."""
        if self.acting is self.sac.actor:
            return {}
        return {f"{ACTING_PREFIX}{name}": t for name, t in self.acting.state_dict().items()}

    def load(self, path: Path) -> None:
        ckpt = read_checkpoint(path)
        sac, rb = self.sac, self.sac.replay_buffer
        params = dict(ckpt["params"])
        acting = {k.removeprefix(ACTING_PREFIX): params.pop(k) for k in list(params) if k.startswith(ACTING_PREFIX)}
        if bool(acting) != (self.acting is not sac.actor):
            raise UserError(f"{path} was written with another actor_averaging setting than this run's")
        if acting:
            self.acting.load_state_dict(acting, strict=True)
        with torch.no_grad():
            sac.log_ent_coef.copy_(params.pop("log_ent_coef"))
        sac.policy.load_state_dict(params, strict=True)
        sac.actor.optimizer.load_state_dict(ckpt["optimizers"]["actor"])
        sac.critic.optimizer.load_state_dict(ckpt["optimizers"]["critic"])
        sac.ent_coef_optimizer.load_state_dict(ckpt["optimizers"]["ent_coef"])
        for name in REPLAY_FIELDS:
            stored = ckpt["arrays"][f"replay/{name}"]
            getattr(rb, name)[:len(stored)] = stored
        extra = ckpt["extra"]
        rb.pos, rb.full = extra["replay_pos"], extra["replay_full"]
        sac._n_updates = extra["gradient_updates"]
        self.env_steps = extra["env_steps"]
        self.step_index = ckpt["step"]

    def close(self) -> None:
        self.rollouts.close()


def steer(cfg: SteerConfig, run_dir: str | Path, resume: bool = False, log: Callable[[str], None] = print,
          on_step: Callable[[dict[str, float]], None] | None = None, stop: threading.Event | None = None) -> Path:
    """Run (or resume) a steer run in `run_dir` (runs.run_loop); returns the last checkpoint written."""
    return run_loop(lambda: SteerTrainer(cfg, Path(run_dir), log), cfg, run_dir, resume, log, on_step, stop)


def resolve_steer(overrides: dict[str, Any]) -> SteerConfig:
    """Overrides (`--set`, YAML, a saved config.json) -> a validated SteerConfig."""
    return resolve(None, overrides, SteerConfig)


def run_job(cfg_json: str, run_dir: str, resume: bool, stop: threading.Event) -> Path:
    """A steer run as a SLURM job's body (runs.TrainJob)."""
    return steer(resolve_steer(json.loads(cfg_json)), run_dir, resume=resume, stop=stop)
