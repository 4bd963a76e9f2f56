"""Behaviour cloning of a SmolVLA on LIBERO-layout demos with lerobot's flow-matching loss.

Dimension legend
    B   samples in a batch      H   chunk size (50)     Dm  padded action dim (32)     Da  real action dims (7)

A sample is one demo step t: the observation at t and the action chunk a[t : t+H]; steps past the
demo's end repeat its last action and are masked out of the loss (lerobot's dataset pads the same
way; lerobot 0.4.4's SmolVLA.forward reads the mask from a misspelt key, so we apply it here).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from grpo_cli.envs.libero import PRIVILEGED_STATE_DIM, STATE_DIM, scene_look
from grpo_cli.errors import UserError
from grpo_cli.policies.smolvla import IMAGE_KEYS, STATE_KEY, SmolVLAAdapter, build_tiny, parameter_groups
from grpo_cli.storage import read_demos

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class SFTConfig:
    """Behaviour cloning settings (lerobot's SmolVLA optimiser defaults where they apply)."""

    demos: tuple[str, ...] = ()
    policy: str = "tiny"
    """`tiny[:SEED]` (fresh weights, normalisation stats from the demos) or a policy to continue from"""
    privileged_state: bool = False
    """append the goal objects' positions to the state (tiny policies only; demos must record them)"""
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 1e-10
    max_grad_norm: float = 10.0
    train_backbone: bool = True
    """also train the VLM (a tiny VLM has random weights; a pretrained one usually stays frozen)"""
    train_vision_encoder: bool = False
    only_successful: bool = True
    seed: int = 0
    log_every: int = 50
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.demos:
            raise UserError("give at least one demo file")
        if self.steps < 1 or self.batch_size < 1:
            raise UserError("steps and batch_size must be >= 1")
        if self.lr <= 0:
            raise UserError("lr must be > 0")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class DemoSet:
    """All demo steps in memory: images {key: (N, h, w, 3) uint8}, state (N, S), actions (N, Da),
    episode start/end row of every step, language of every step."""

    images: dict[str, np.ndarray]
    state: np.ndarray
    actions: np.ndarray
    start: np.ndarray
    end: np.ndarray
    language: list[str]

    def __len__(self) -> int:
        return len(self.state)

    @classmethod
    def load(cls, paths: tuple[str, ...], privileged_state: bool, only_successful: bool) -> DemoSet:
        demos = [d for p in paths for d in read_demos(p, privileged_state)]
        kept = [d for d in demos if d["success"] or not only_successful]
        if not kept:
            raise UserError(f"no {'successful ' if only_successful else ''}demos in {', '.join(paths)}")
        sizes = {d["images"][IMAGE_KEYS[0]].shape[1:] for d in kept}
        if len(sizes) > 1:
            raise UserError(f"demos have different image sizes {sorted(sizes)}; record them at one size")
        looks = {scene_look(d["scene"]) for d in kept}
        if len(looks) > 1:
            raise UserError("the demos were rendered in different scenes (lowpoly and LIBERO's): record them all "
                            "with one GRPO_VLA_SCENE")
        lengths = [len(d["actions"]) for d in kept]
        ends = np.cumsum(lengths)
        starts = ends - lengths
        return cls(images={k: np.concatenate([d["images"][k] for d in kept]) for k in IMAGE_KEYS},
                   state=np.concatenate([d["state"] for d in kept]),
                   actions=np.concatenate([d["actions"] for d in kept]),
                   start=np.repeat(starts, lengths), end=np.repeat(ends, lengths),
                   language=[d["language"] for d in kept for _ in range(len(d["actions"]))])

    def stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """lerobot-style mean/std normalisation statistics of state and action."""
        def ms(x: np.ndarray) -> dict[str, torch.Tensor]:
            return {"mean": torch.from_numpy(x.mean(0)).float(),
                    "std": torch.from_numpy(np.maximum(x.std(0), 1e-3)).float()}
        return {STATE_KEY: ms(self.state), "action": ms(self.actions)}

    def batch(self, rows: np.ndarray, horizon: int) -> tuple[list[dict[str, np.ndarray]], list[str],
                                                             np.ndarray, np.ndarray]:
        """Observations, languages, action chunks (B, H, Da) and pad flags (B, H) of the given rows."""
        index = rows[:, None] + np.arange(horizon)[None]  # (B, H)
        pad = index >= self.end[rows][:, None]
        index = np.minimum(index, self.end[rows][:, None] - 1)
        obs = [{**{k: self.images[k][r] for k in IMAGE_KEYS}, STATE_KEY: self.state[r]} for r in rows]
        return obs, [self.language[r] for r in rows], self.actions[index], pad


def flow_matching_loss(adapter: SmolVLAAdapter, obs: list[dict[str, np.ndarray]], languages: list[str],
                       actions: np.ndarray, pad: np.ndarray, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
    """lerobot's flow-matching loss, masked to real action dims and in-episode steps (scalar).

    obs and languages of B samples, actions (B, H, Da) in env units, pad (B, H) bool (steps past the
    episode's end). With a generator the flow noise and times are drawn from it (a fixed evaluation loss)."""
    policy, model = adapter.policy, adapter.model
    batch = adapter.preprocess(obs, languages, actions=actions)
    images, img_masks = policy.prepare_images(batch)
    state = policy.prepare_state(batch)
    target = policy.prepare_action(batch)  # (B, H, Dm), normalised and zero padded
    noise = time = None
    if generator is not None:
        noise = torch.randn(target.shape, generator=generator)
        time = _beta_sample(len(obs), generator)
    losses = model.forward(images, img_masks, batch["observation.language.tokens"],
                           batch["observation.language.attention_mask"], state, target, noise, time)
    mask = (~torch.from_numpy(pad))[:, :, None] & adapter.action_mask[None, None]  # (B, H, Dm)
    return (losses * mask).sum() / mask.sum()


def _beta_sample(n: int, generator: torch.Generator) -> torch.Tensor:
    """lerobot's time schedule t = 0.999 * Beta(1.5, 1) + 0.001, drawn from a generator (inverse CDF:
    Beta(1.5, 1) has CDF t^1.5)."""
    u = torch.rand(n, generator=generator)
    return u.pow(1 / 1.5) * 0.999 + 0.001


def sft(cfg: SFTConfig, out_dir: str | Path, log: Callable[[str], None] = print,
        on_step: Callable[[dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train and save a policy directory at `out_dir` (written to a temp dir, then renamed)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UserError(f"{out_dir} already exists; choose another --out")
    data = DemoSet.load(cfg.demos, cfg.privileged_state, cfg.only_successful)
    state_dim = data.state.shape[1]
    if cfg.policy == "tiny" or cfg.policy.startswith("tiny:"):
        seed = int(cfg.policy.split(":", 1)[1]) if ":" in cfg.policy else cfg.seed
        adapter = build_tiny(seed=seed, stats=data.stats(), state_dim=state_dim, device=cfg.device)
    else:
        adapter = SmolVLAAdapter.load(cfg.policy, device=cfg.device)
        if adapter.state_dim != state_dim:
            raise UserError(f"policy {cfg.policy} reads a {adapter.state_dim}-dim state but the demos give "
                            f"{state_dim} (privileged_state adds {PRIVILEGED_STATE_DIM - STATE_DIM})")
    groups = parameter_groups(adapter.policy, cfg.train_backbone, cfg.train_vision_encoder)
    params = groups["head"] + groups["backbone"]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))))
    rng = np.random.default_rng(cfg.seed)
    held_out = rng.choice(len(data), size=min(len(data), 4 * cfg.batch_size), replace=False)

    def eval_loss() -> float:
        adapter.policy.eval()
        with torch.no_grad():
            return float(flow_matching_loss(adapter, *data.batch(held_out, adapter.chunk_size),
                                            torch.Generator().manual_seed(cfg.seed)))

    first = eval_loss()
    log(f"{len(data)} demo steps, {int((data.start == np.arange(len(data))).sum())} demos; "
        f"fixed-noise loss before: {first:.4f}")
    torch.manual_seed(cfg.seed)
    t0, running = time.perf_counter(), []
    for step in range(cfg.steps):
        adapter.policy.train()
        rows = rng.integers(len(data), size=cfg.batch_size)
        loss = flow_matching_loss(adapter, *data.batch(rows, adapter.chunk_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        optimizer.step()
        schedule.step()
        running.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            metrics = {"step": step + 1, "loss": float(np.mean(running)), "grad_norm": grad_norm,
                       "lr": schedule.get_last_lr()[0], "time": time.perf_counter() - t0}
            running = []
            if on_step:
                on_step(metrics)
    last = eval_loss()
    log(f"fixed-noise loss after: {last:.4f}")
    adapter.policy.eval()
    adapter.identity = {"source": str(out_dir), "kind": "sft", "base": adapter.identity,
                        "demos": list(cfg.demos), "steps": cfg.steps}
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    adapter.save_pretrained(tmp)
    (tmp / "sft_config.json").write_text(json.dumps(json.loads(cfg.to_json()), indent=1))
    summary = {"loss_before": first, "loss_after": last, "demo_steps": len(data),
               "train_seconds": time.perf_counter() - t0}
    (tmp / "sft_summary.json").write_text(json.dumps(summary, indent=1))
    tmp.rename(out_dir)
    return summary
