"""The GRPO loop, top to bottom: rollout groups -> rewards -> advantages -> inner epochs -> log -> checkpoint.

Dimension legend
    G   groups in a step (tasks_per_step)      n   members of a group (num_generations, +1 with E5/E6)
    B   chunks in a minibatch                  K   denoising steps         H, Dm  chunk, padded action dim

Every random choice of step s is derived from (seed, s): which task and init state, every noise
stream. A resumed run therefore repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_cli import grpo
from grpo_cli.config import TrainConfig
from grpo_cli.drift import drift
from grpo_cli.envs.libero import task_spec
from grpo_cli.envs.slots import make_env_slots
from grpo_cli.episodes import EpisodeSpec, Trajectory, episode_seed, usable_init_states
from grpo_cli.errors import UserError
from grpo_cli.groups import Member, ReplayPool, SolvedInitStates, assemble_rewards, filtered_groups
from grpo_cli.policies.smolvla import SmolVLAAdapter, module_of, parameter_groups
from grpo_cli.presets import resolve
from grpo_cli.rollout import LocalRollouts
from grpo_cli.runs import run_loop
from grpo_cli.shards import ShardPool
from grpo_cli.storage import read_checkpoint, write_checkpoint
from grpo_cli.value import ChunkValue

RETIRED_POOL_PREFIX = "success_bc/"  # self-imitation's buffer in checkpoints of earlier versions: dropped on load


class Trainer:
    """Holds the policy, optimizer and run state; `step()` is one GRPO step."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, log: Callable[[str], None] = print,
                 rollouts: Any = None):
        """`rollouts`: the backend that rolls out episodes (`run(episodes, trainable, label)`, `close()`),
        e.g. shards.ShardPool; None = this node's envs (rollout.LocalRollouts)."""
        self.cfg, self.run_dir, self.log = cfg, Path(run_dir), log
        self.adapter = SmolVLAAdapter.load(cfg.policy, device=cfg.device)
        self.groups = parameter_groups(self.adapter.policy, cfg.train_backbone, cfg.train_vision_encoder)
        self.names = [n for n, p in self.adapter.policy.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [{"params": self.groups["head"], "lr": cfg.lr_head, "name": "head"},
             {"params": self.groups["backbone"], "lr": cfg.lr_backbone, "name": "backbone"}],
            weight_decay=cfg.weight_decay)
        # beta = 0 loads no reference model at all (TRL's rule).
        self.reference = SmolVLAAdapter.load(cfg.policy, device=cfg.device) if cfg.beta > 0 else None
        if self.reference is not None:
            self.reference.policy.requires_grad_(False)
        self.initial = {n: p.detach().clone() for n, p in self.adapter.policy.named_parameters()}
        self.pool = ReplayPool(cfg.replay_pool_size)
        self.value = ChunkValue(cfg.value_buffer_steps, seed=cfg.seed) if cfg.advantage_baseline == "value" else None
        self.solved = SolvedInitStates(cfg.skip_solved, init_states=cfg.init_states)
        self.step_index = 0
        self.tasks = [task_spec(cfg.suite, t) for t in cfg.tasks]
        for task in self.tasks:
            usable_init_states(cfg.init_states, task, "init_states")
        self.episodes_lost = 0  # this step's episodes lost with failed shards (shard_failure = continue)
        self.rollouts = rollouts if rollouts is not None else LocalRollouts(
            self.adapter, lambda: make_env_slots(
                cfg.num_envs or cfg.num_generations, cfg.image_size, processes=cfg.parallel_envs,
                privileged_state=self.adapter.privileged_state, progress_shaping=cfg.progress_shaping,
                reach_shaping=cfg.reach_shaping, stall_steps=cfg.stall_steps, reply_timeout_s=cfg.env_timeout_s),
            cfg.env_failure_retries, log, max_steps=cfg.max_steps, n_action_steps=cfg.n_action_steps,
            keep_images=True, sde_noise=cfg.sde_noise if cfg.likelihood == "sde" else 0.0, overlap=cfg.overlap_policy)

    # --- one GRPO step ---------------------------------------------------------------------------------
    def step(self, env_step_room: int | None = None) -> dict[str, float]:
        """One GRPO step; env_step_room: env steps left in the run's budget (bounds resampling).
        The checkpoint after it is the loop's (`train`)."""
        rng = np.random.default_rng([self.cfg.seed, self.step_index])
        t0 = time.perf_counter()
        handoff_before = self.rollouts.handoff_s
        self.episodes_lost = 0

        # 1. Collect: G groups, one (task, init state) each, members differing only in their noise (Eq. 3);
        #    a group filter drops groups without signal and resamples them (bounded).
        groups, rolled = self.collect_groups(rng, env_step_room)
        # 2. Rewards: Eq. 4's tier weights; E5's fallback or E6's replay for all-fail groups.
        batch, counts = assemble_rewards(groups, self.cfg, self.fallback, self.pool, rng)
        # 3. Advantages: Eq. 1 per group, then per chunk against the learned value (GAE) when asked.
        value_stats = self.advantages(batch)
        t_rollout = time.perf_counter() - t0

        # 4. Update: num_iterations epochs of Eq. 5 (clipped surrogate + beta KL) over fixed minibatches.
        t1 = time.perf_counter()
        members = [m for group in batch for m in group if m.advantage != 0.0 or m.chunk_advantages is not None]
        update = self._update(members, rng) if members else {}
        t_update = time.perf_counter() - t1

        # 5. Metrics.
        timing = {"time/rollout": t_rollout, "time/update": t_update,
                  **({"time/shard_handoff": self.rollouts.handoff_s - handoff_before} if handoff_before is not None
                     else {})}
        metrics = self.step_metrics(batch, groups, rolled, counts, {**value_stats, **update}, timing)
        self.step_index += 1
        return metrics

    def collect_groups(self, rng: np.random.Generator, env_step_room: int | None
                       ) -> tuple[list[list[Trajectory]], list[list[Trajectory]]]:
        """This step's groups after the group filter, and every group rolled out (filtered ones too)."""
        cfg, s = self.cfg, self.step_index

        def rollout_groups(first: int, count: int) -> list[list[Trajectory]]:
            episodes = []
            for g in range(first, first + count):
                task, init_state = self.solved.draw(self.tasks, rng)
                episodes += [EpisodeSpec(task, init_state, k, episode_seed(cfg.seed, "train", s, g, m),
                                         group=g, member=m) for m, k in enumerate(cfg.steps_per_member)]
            trajs = self._run(episodes)
            groups = [trajs[i:i + cfg.num_generations] for i in range(0, len(trajs), cfg.num_generations)]
            # A group with a member lost to a failed shard (shard_failure = continue) is not comparable.
            whole = [g for g in groups if all(t is not None for t in g)]
            self.episodes_lost += len(trajs) - sum(len(g) for g in whole)
            return whole

        groups, rolled = filtered_groups(rollout_groups, cfg, env_step_room)
        for trajs in rolled:
            self.solved.record(trajs[0].spec.task.task_id, trajs[0].spec.init_state, all(t.success for t in trajs))
        return groups, rolled

    def fallback(self, g: int, first: Trajectory) -> Trajectory:
        """E5: one extra trajectory of group g with K = fallback_steps, from the group's init state."""
        cfg, s = self.cfg, self.step_index
        spec = EpisodeSpec(first.spec.task, first.spec.init_state, cfg.fallback_steps,
                           episode_seed(cfg.seed, "train", s, g, cfg.num_generations), group=g,
                           member=cfg.num_generations)
        traj = self._run([spec])[0]
        if traj is None:
            raise UserError(f"step {s + 1}: the fallback rollout was lost with its failed shard")
        return traj

    def advantages(self, batch: list[list[Member]]) -> dict[str, float]:
        """Eq. 1 per group (zero-std groups give exactly 0); with advantage_baseline = value, per-chunk
        advantages from the learned value replace them once it is fitted. Returns the value's statistics."""
        rewards = [torch.tensor([m.reward for m in members]) for members in batch]
        for members, adv in zip(batch, grpo.ragged_group_advantages(rewards, self.cfg.scale_rewards), strict=True):
            for m, a in zip(members, adv.tolist(), strict=True):
                m.advantage = a
        return self._value_advantages(batch) if self.value is not None else {}

    def step_metrics(self, batch: list[list[Member]], groups: list[list[Trajectory]],
                     rolled: list[list[Trajectory]], counts: dict[str, int], update: dict[str, float],
                     timing: dict[str, float]) -> dict[str, float]:
        """The step's metrics (README, "Logged metrics")."""
        cfg, s = self.cfg, self.step_index
        rewards = [torch.tensor([m.reward for m in members]) for members in batch]
        natural = [t for trajs in rolled for t in trajs]  # every rollout, filtered-out groups included
        all_rewards = torch.cat(rewards) if rewards else torch.zeros(0)
        zero_std = [bool(grpo.zero_std_groups(r[None])[0]) for r in rewards]
        d = drift(dict(self.adapter.policy.named_parameters()), self.initial, module_of)
        env_steps = sum(t.length for t in natural) + sum(m.traj.length for g in batch for m in g
                                                         if m.origin == "fallback")
        stepped = any(m.advantage != 0.0 or m.chunk_advantages is not None for group in batch for m in group)
        return {
            "step": s + 1, "reward": float(all_rewards.mean()) if len(all_rewards) else 0.0,
            "reward_std": float(all_rewards.std(unbiased=False)) if len(all_rewards) else 0.0,
            "success_rate": float(np.mean([t.success for t in natural])),
            "frac_reward_zero_std": float(np.mean(zero_std)) if zero_std else 1.0,
            "frac_all_fail": counts["all_fail_groups"] / max(len(groups), 1),
            "frac_all_success": counts["all_success_groups"] / max(len(groups), 1),
            "frac_groups_filtered": 1 - len(groups) / len(rolled), "groups_rolled_out": len(rolled),
            **({"frac_init_states_skipped": self.solved.frac_skipped(self.tasks)} if cfg.skip_solved else {}),
            "progress": float(np.mean([t.progress for t in natural])),
            "frac_stalled": float(np.mean([t.stalled for t in natural])),
            **{f"reward_composition/{k}": v for k, v in counts.items()},
            "step_skipped": float(not stepped), "drift_pct": d["total"]["drift_pct"],
            "drift_rel_l2": d["total"]["rel_l2"],
            **{f"drift/{module}": v["drift_pct"] for module, v in d.items() if module != "total"},
            **{f"lr/{g['name']}": g["lr"] for g in self.optimizer.param_groups},
            "env_failures": self.rollouts.env_failures, "episodes_lost": self.episodes_lost, **timing,
            "env_steps": env_steps,
            "SPS": env_steps / max(timing["time/rollout"] + timing["time/update"], 1e-9), **update,
        }

    def _value_advantages(self, batch: list[list[Member]]) -> dict[str, float]:
        """advantage_baseline = value: per-chunk advantages r - V(s_c) from a value fitted on earlier steps
        (the group advantages stay when there are none yet); then this step's chunks join its buffer."""
        assert self.value is not None
        members = [m for group in batch for m in group]
        states = [np.stack(m.traj.query_states[:len(m.traj.chains)]) for m in members]
        rewards = torch.tensor([m.reward for m in members])
        stats: dict[str, float] = {}
        if self.value.fitted and members:
            values = [self.value(s) for s in states]
            for m, a in zip(members, grpo.value_advantages(
                    rewards, values, self.cfg.scale_rewards, self.cfg.gae_lambda), strict=True):
                m.chunk_advantages = a.tolist()
            residual = torch.cat([r - v for r, v in zip(rewards, values, strict=True)])
            target = torch.cat([r.expand(len(v)) for r, v in zip(rewards, values, strict=True)])
            # How much of the rewards' variance the value explains on chunks it never saw (1 = all, <= 0 = none).
            stats = {"value/explained_variance": float(1 - residual.var() / target.var().clamp_min(1e-8)),
                     "value/fit_loss": self.value.loss}
        if members:
            self.value.add(np.concatenate(states), np.repeat(rewards.numpy(), [len(s) for s in states]))
            self.value.fit()
        return stats

    def _run(self, episodes: list[EpisodeSpec]) -> list[Trajectory]:
        """Roll out the episodes on the backend (env failures are retried there, same seeds)."""
        trainable = {id(p) for p in self.groups["head"] + self.groups["backbone"]}
        return self.rollouts.run(episodes, lambda: {n: p.detach().clone() for n, p in
                                                    self.adapter.policy.named_parameters() if id(p) in trainable},
                                 label=f"step {self.step_index + 1}: ")

    @property
    def score_mask(self) -> torch.Tensor:
        """(Dm,): the chunk elements that enter the likelihood, the real action dims."""
        return self.adapter.action_mask

    def _score(self, adapter: SmolVLAAdapter, chunks: list[tuple[Member, int]], grad: bool,
               targets: list[torch.Tensor | None] | None = None
               ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per chunk: element-wise log-densities (J, H, Dm) of its J scored steps under `adapter`, and the
        transition means (J, H, Dm) and stds (J,) for the KL (legend: grpo.py). Chunks sharing K run as one
        batch. `targets[i]` (J, H, Dm), where given, replaces chunk i's stored targets (see `_update`)."""
        cfg = self.cfg
        by_k: dict[int, list[int]] = {}
        for i, (m, _) in enumerate(chunks):
            by_k.setdefault(m.traj.spec.denoise_steps, []).append(i)
        logp: list[torch.Tensor] = [torch.empty(0)] * len(chunks)
        means: list[torch.Tensor] = [torch.empty(0)] * len(chunks)
        stds: list[torch.Tensor] = [torch.empty(0)] * len(chunks)
        for idx in by_k.values():
            picked = [chunks[i] for i in idx]
            obs = [{**{key: m.traj.query_images[key][c] for key in adapter.image_keys},
                    "observation.state": m.traj.query_states[c]} for m, c in picked]
            batch = adapter.preprocess(obs, [m.traj.spec.task.language for m, _ in picked])
            chains = torch.from_numpy(np.stack([m.traj.chains[c] for m, c in picked]))  # (B_k, K+1, H, Dm)
            with torch.set_grad_enabled(grad):
                prefix = adapter.encode_prefix(batch, grad=grad and cfg.train_backbone)
                stored, mean, std = adapter.transitions(prefix, chains, cfg.likelihood, cfg.sde_noise,
                                                        cfg.ode_sigma, self._fpo_draws(picked, chains))
                if targets is not None:
                    stored = torch.stack([stored[j] if targets[i] is None else targets[i]  # type: ignore[misc]
                                          for j, i in enumerate(idx)])
                lp = grpo.gaussian_logdensity(stored.flatten(0, 1), mean.flatten(0, 1), std.flatten(),
                                              self.score_mask).view(stored.shape)
            for j, i in enumerate(idx):
                logp[i], means[i], stds[i] = lp[j], mean[j], std[j]
        return logp, means, stds

    def _fpo_draws(self, chunks: list[tuple[Member, int]], chains: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`fpo`: each chunk's (time, noise) draws, seeded by its episode's noise seed and its index, so
        theta_old and every later scoring of the chunk use the same points. (B,) chunks -> (B, J), (B, J, H, Dm)."""
        if self.cfg.likelihood != "fpo":
            return None
        draws = [grpo.fpo_draws(torch.Generator().manual_seed(int(np.random.SeedSequence(
            [m.traj.spec.noise_seed, c]).generate_state(1, np.uint64)[0] >> 1)), self.cfg.fpo_samples,
            tuple(chains.shape[2:])) for m, c in chunks]
        return (torch.stack([t for t, _ in draws]).to(chains.device),
                torch.stack([n for _, n in draws]).to(chains.device))

    def _update(self, members: list[Member], rng: np.random.Generator) -> dict[str, float]:
        cfg = self.cfg
        chunks_of = {id(m): [(m, c) for c in range(len(m.traj.chains))] for m in members}
        # Minibatches of whole trajectories, fixed for the step: pi_old is scored with exactly the batch
        # composition used later, so at theta = theta_old the ratio is exactly 1 (batched float math differs
        # in the last bits between batch shapes, and chain log-probs sum thousands of terms).
        minibatches, current = [], []
        for i in rng.permutation(len(members)):
            current.append(members[i])
            if sum(len(m.traj.chains) for m in current) >= cfg.minibatch_size:
                minibatches.append(current)
                current = []
        minibatches += [current] if current else []
        stats: dict[str, list[float]] = {}
        targets: list[list[torch.Tensor | None] | None] = [None] * len(minibatches)
        with torch.no_grad():  # pi_old: the policy that sampled (for replayed trajectories: scored now)
            scored = [self._score(self.adapter, [c for m in mb for c in chunks_of[id(m)]], grad=False)
                      for mb in minibatches]
            old = [logp for logp, _, _ in scored]
            if cfg.likelihood == "ode":
                # The seed's reading scores a chunk under N(f_theta(z), sigma^2). f_theta_old(z) recomputed in
                # the scoring batch's shapes differs from the stored chunk (sampling's shapes) by float
                # rounding, and Adam turns that rounding's gradient into full learning-rate steps. So the
                # target is theta_old's own recomputation: at theta_old the gradient is exactly 0, as the
                # equation says. Replayed chunks (E6), sampled by an older policy, keep their stored target.
                for b, mb in enumerate(minibatches):
                    chunks = [c for m in mb for c in chunks_of[id(m)]]
                    means = scored[b][1]
                    targets[b] = [None if m.origin == "replay" else mean
                                  for (m, _), mean in zip(chunks, means, strict=True)]
                    stats.setdefault("ode/rescore_max_abs", []).append(max(
                        float((mean[-1] - torch.from_numpy(m.traj.chains[c][-1])).abs().max())
                        for (m, c), mean in zip(chunks, means, strict=True)))
                    # the log-density of each retargeted chunk at its own mean: no second forward pass
                    stds = scored[b][2]
                    old[b] = [lp if t is None else grpo.gaussian_logdensity(t, t, s, self.score_mask)
                              for lp, t, s in zip(old[b], targets[b], stds, strict=True)]
        self.adapter.policy.train()
        params = self.groups["head"] + self.groups["backbone"]
        for _ in range(cfg.num_iterations):
            for b in rng.permutation(len(minibatches)).tolist():  # one optimizer step per minibatch
                mb = minibatches[b]
                chunks = [c for m in mb for c in chunks_of[id(m)]]
                logp, means, stds = self._score(self.adapter, chunks, grad=True, targets=targets[b])
                logratio, adv, owner = grpo.ratio_samples(
                    logp, old[b], torch.tensor([m.advantage if m.chunk_advantages is None
                                                else m.chunk_advantages[c] for m, c in chunks]), cfg.ratio_level,
                    [len(chunks_of[id(m)]) for m in mb], self.score_mask)
                kl = torch.zeros(())
                if self.reference is not None:
                    with torch.no_grad():
                        _, ref_means, _ = self._score(self.reference, chunks, grad=False)
                    kl = torch.stack([grpo.gaussian_kl_same_std(m, r, s, self.score_mask).sum()
                                      for m, r, s in zip(means, ref_means, stds, strict=True)]).mean()
                loss, policy_loss, clip = grpo.policy_loss(logratio, adv, grpo.sample_weights(owner, cfg.loss_type),
                                                           cfg.epsilon, cfg.epsilon_high, cfg.dual_clip, kl, cfg.beta)
                if not torch.isfinite(loss):
                    stats.setdefault("nonfinite_loss_skipped", []).append(1.0)
                    continue
                if self.reference is not None and cfg.beta > 0:
                    grads = torch.autograd.grad(policy_loss, params, retain_graph=True, allow_unused=True)
                    stats.setdefault("grad_norm/policy_term", []).append(_norm(grads))
                    grads = torch.autograd.grad(cfg.beta * kl, params, retain_graph=True, allow_unused=True)
                    stats.setdefault("grad_norm/kl_term", []).append(_norm(grads))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for key, value in {"loss": loss, "loss/policy": policy_loss, "kl": kl, **clip}.items():
                    stats.setdefault(key, []).append(float(torch.as_tensor(value).detach()))
                for name in ("head", "backbone"):
                    stats.setdefault(f"grad_norm/{name}", []).append(_norm([p.grad for p in self.groups[name]]))
                # No signal, no step: Adam's momentum would otherwise keep moving on a zero gradient.
                no_signal = all(p.grad is None or not p.grad.any() for p in params)
                stats.setdefault("frac_minibatches_no_signal", []).append(float(no_signal))
                if no_signal:
                    continue
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
        self.adapter.policy.eval()
        reduce = {"ratio/max": np.max, "ratio/min": np.min, "ode/rescore_max_abs": np.max}
        return {k: float(reduce.get(k, np.mean)(v)) for k, v in stats.items()}

    # --- checkpoints -----------------------------------------------------------------------------------
    def save(self) -> Path:
        path = self.run_dir / "checkpoints" / f"step_{self.step_index:06d}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_checkpoint(path, step=self.step_index, params=dict(self.adapter.policy.state_dict()),
                         optimizer_state=self.optimizer.state_dict(), param_names=self.names,
                         config_json=self.cfg.to_json(), policy=self.adapter.identity,
                         reference=self.reference.identity if self.reference else None,
                         replay=self.pool.entries,
                         extra={"solved_streaks": self.solved.streaks},
                         value_buffer=self.value.buffer if self.value is not None else ())
        return path

    def load(self, path: Path) -> None:
        ckpt = read_checkpoint(path, task_lookup=lambda t: task_spec(self.cfg.suite, t))
        missing = self.adapter.policy.load_state_dict(ckpt["params"], strict=True)
        assert not missing.missing_keys
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.pool = ReplayPool(self.cfg.replay_pool_size, {k: v for k, v in ckpt["replay"].items()
                                                           if not k.startswith(RETIRED_POOL_PREFIX)})
        if self.value is not None:
            self.value.load_buffer(ckpt["value_buffer"])
        self.solved = SolvedInitStates(self.cfg.skip_solved, ckpt["extra"].get("solved_streaks"), self.cfg.init_states)
        self.step_index = ckpt["step"]
        torch.set_rng_state(ckpt["rng_torch"])

    def close(self) -> None:
        self.rollouts.close()


def _norm(grads: Any) -> float:
    total = sum(float(g.pow(2).sum()) for g in grads if g is not None)
    return math.sqrt(total)


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, log: Callable[[str], None] = print,
          on_step: Callable[[dict[str, float]], None] | None = None, stop: threading.Event | None = None) -> Path:
    """Run (or resume) a GRPO run in `run_dir` (runs.run_loop); returns the last checkpoint written."""
    run_dir = Path(run_dir)
    # shard workers start at the first rollout
    return run_loop(lambda: Trainer(cfg, run_dir, log, rollouts=ShardPool(cfg, run_dir, log)
                                    if cfg.rollout_shards else None), cfg, run_dir, resume, log, on_step, stop)


def run_job(cfg_json: str, run_dir: str, resume: bool, stop: threading.Event) -> Path:
    """A GRPO run as a SLURM job's body (runs.TrainJob)."""
    return train(resolve(None, json.loads(cfg_json)), run_dir, resume=resume, stop=stop)
