"""The noise actor of a steered policy (DSRL): a SAC actor that picks each chunk's initial flow noise.

Dimension legend
    B   episodes queried together       H   chunk size (50)       Dm  padded action dim (32)
    Da  real action dims (7)            P   steered chunk positions (steer_positions; 0 = H)
    F   the actor's inputs (the policy's state, + the elapsed fraction of the episode with `state+time`)

The frozen flow policy maps noise z (H, Dm) to an action chunk; the actor chooses z[:P, :Da] from the
observation, bounded by tanh to [-noise_bound, noise_bound]. Positions after P repeat the last steered row
(as DSRL's pi0 code does), and lerobot's padded dims keep the episode's own N(0, I) draw. The actor's
Gaussian draws come from the episode's noise stream, so a steered episode is as reproducible as an SFT one.

The SAC networks are stable-baselines3's (`SACPolicy`); this module builds them and samples the actor, and
`grpo_cli/steer.py` trains them. A steered policy is the frozen VLA (`SmolVLAAdapter`) with `noise_actor` set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_cli.storage import atomic_h5, open_h5

ACTOR_FILE = "noise_actor.h5"  # beside an exported policy: `SmolVLAAdapter.load(dir)` attaches it
ACTING_PREFIX = "acting_actor."  # a checkpoint's averaged acting actor (actor_averaging > 0), else `actor.`


def steered_noise(base: torch.Tensor, steered: torch.Tensor, positions: int, action_dim: int) -> torch.Tensor:
    """The chunk's full initial noise: base (B, H, Dm) with its first `positions` rows' real dims replaced by
    steered (B, P*Da), and the later rows' real dims repeating the last steered row."""
    out = base.clone()
    block = steered.reshape(base.shape[0], positions, action_dim).to(base.dtype)
    out[:, :positions, :action_dim] = block
    out[:, positions:, :action_dim] = block[:, -1:, :]
    return out


def noise_action(noise: np.ndarray, positions: int, action_dim: int, bound: float) -> np.ndarray:
    """The actor's action behind a chunk's noise (H, Dm) -> (P*Da,), in SAC's [-1, 1] scale (warm-up
    chunks, drawn from N(0, I), may lie outside it: the critic learns from them as they were executed)."""
    return (np.asarray(noise)[:positions, :action_dim].reshape(-1) / bound).astype(np.float32)


def actor_features(states: np.ndarray, elapsed: Sequence[float], inputs: str) -> np.ndarray:
    """What actor and critics see: the policy's state (B, S), with `state+time` also the elapsed fraction."""
    states = np.asarray(states, dtype=np.float32).reshape(len(elapsed), -1)
    if inputs == "state+time":
        return np.concatenate([states, np.asarray(elapsed, dtype=np.float32)[:, None]], axis=1)
    return states


@dataclass(frozen=True)
class ActorSpec:
    """What shapes the actor: its inputs, its noise block, its bound and its hidden layers."""

    state_dim: int
    chunk_size: int
    action_dim: int
    positions: int
    noise_bound: float
    actor_inputs: str
    hidden_sizes: tuple[int, ...]

    @classmethod
    def of(cls, settings: dict[str, Any], state_dim: int, chunk_size: int, action_dim: int,
           policy_action_steps: int) -> ActorSpec:
        """From a steer config (dict) and the frozen policy's shapes; steer_positions 0 = the positions the
        env executes (the config's n_action_steps, else the policy's)."""
        positions = int(settings["steer_positions"]) or int(settings.get("n_action_steps") or policy_action_steps)
        if positions > chunk_size:
            from grpo_cli.errors import UserError

            raise UserError(f"steer_positions {positions} exceeds the policy's chunk size {chunk_size}")
        return cls(state_dim, chunk_size, action_dim, positions, float(settings["noise_bound"]),
                   settings["actor_inputs"], tuple(int(h) for h in settings["hidden_sizes"]))

    @property
    def obs_dim(self) -> int:
        return self.state_dim + (1 if self.actor_inputs == "state+time" else 0)

    @property
    def act_dim(self) -> int:
        return self.positions * self.action_dim

    def spaces(self) -> tuple[Any, Any]:
        from gymnasium import spaces

        return (spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32),
                spaces.Box(-self.noise_bound, self.noise_bound, (self.act_dim,), np.float32))


def steer_policy_class() -> type:
    """stable-baselines3's SACPolicy with LayerNorm in the critics (Linear -> LayerNorm -> ReLU), as DSRL's
    critics: at 20 updates per chunk on a few hundred transitions, critics without it diverged here
    (docs/NOTEBOOK.md, session 24). The actor is SB3's, unchanged."""
    from stable_baselines3.common.policies import ContinuousCritic
    from stable_baselines3.common.torch_layers import create_mlp
    from stable_baselines3.sac.policies import SACPolicy
    from torch import nn

    class LayerNormCritic(ContinuousCritic):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            inputs = self.q_networks[0][0].in_features
            for idx in range(self.n_critics):  # SB3's q-networks again, with LayerNorm after each hidden Linear
                q_net = nn.Sequential(*create_mlp(inputs, 1, kwargs["net_arch"], kwargs.get("activation_fn", nn.ReLU),
                                                  post_linear_modules=[nn.LayerNorm]))
                self.add_module(f"qf{idx}", q_net)
                self.q_networks[idx] = q_net

    class SteerSACPolicy(SACPolicy):
        def make_critic(self, features_extractor: Any = None) -> ContinuousCritic:
            critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
            return LayerNormCritic(**critic_kwargs).to(self.device)

    return SteerSACPolicy


def sac_policy(spec: ActorSpec) -> Any:
    """The SAC networks (actor, two critics, target critics) for this spec, without training state."""
    obs_space, act_space = spec.spaces()
    return steer_policy_class()(obs_space, act_space, lambda _: 0.0, net_arch=list(spec.hidden_sizes))


class NoiseActor:
    """Samples a chunk's initial noise from the SAC actor; `actor` is stable-baselines3's (shared with
    training, so the rollouts always use the current weights)."""

    def __init__(self, spec: ActorSpec, actor: Any, config_json: str, source: dict[str, Any]):
        """config_json: the steer run's config (it shapes the actor); source: where the weights come from."""
        self.spec, self.actor, self.config_json, self.source = spec, actor, config_json, source

    @torch.no_grad()
    def steer(self, noise: torch.Tensor, states: np.ndarray, elapsed: Sequence[float],
              generators: Sequence[torch.Generator]) -> torch.Tensor:
        """noise (B, H, Dm), each row the episode's own draw -> the steered noise (B, H, Dm). Each actor
        sample a = tanh(mu + sigma * eps) takes eps from the episode's generator, after its N(0, I) draw."""
        spec = self.spec
        obs = torch.from_numpy(actor_features(states, elapsed, spec.actor_inputs))
        was_training = self.actor.training
        self.actor.train(False)
        mean, log_std, _ = self.actor.get_action_dist_params(obs)
        self.actor.train(was_training)
        eps = torch.stack([torch.randn(spec.act_dim, generator=g) for g in generators])
        action = torch.tanh(mean + log_std.exp() * eps)  # SB3's squashed Gaussian, with our own draws
        return steered_noise(noise, action * spec.noise_bound, spec.positions, spec.action_dim)

    def save(self, path: str | Path) -> Path:
        """The actor alone (no critics, no replay): what an exported steered policy carries."""
        with atomic_h5(Path(path)) as f:
            f.attrs["kind"] = "noise_actor"
            f.attrs["config"] = self.config_json
            f.attrs["source"] = json.dumps(self.source, sort_keys=True)
            for name, tensor in self.actor.state_dict().items():
                f.create_dataset(f"params/actor.{name}", data=tensor.detach().cpu().numpy())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, state_dim: int, chunk_size: int, action_dim: int,
             policy_action_steps: int) -> NoiseActor:
        """From a steer checkpoint or a saved actor file (both hold the steer config and `params/actor.*`)."""
        from grpo_cli.errors import UserError

        with open_h5(path) as f:
            if f.attrs.get("kind") not in ("checkpoint", "noise_actor") or "params" not in f:
                raise UserError(f"{path} holds no noise actor")
            config_json = f.attrs["config"]
            settings = json.loads(config_json)
            prefix = ACTING_PREFIX if any(n.startswith(ACTING_PREFIX) for n in f["params"]) else "actor."
            params = {name.removeprefix(prefix): torch.from_numpy(ds[()]) for name, ds in f["params"].items()
                      if name.startswith(prefix)}
            source = (json.loads(f.attrs["source"]) if f.attrs["kind"] == "noise_actor"
                      else {"source": str(path), "step": int(f.attrs["step"])})
        spec = ActorSpec.of(settings, state_dim, chunk_size, action_dim, policy_action_steps)
        policy = sac_policy(spec)
        try:
            policy.actor.load_state_dict(params, strict=True)
        except RuntimeError:
            raise UserError(f"{path}: the noise actor does not fit this policy's shapes") from None
        policy.actor.train(False)
        return cls(spec, policy.actor, config_json, source)

    def digest(self) -> str:
        import hashlib

        h = hashlib.sha1()
        for name, tensor in sorted(self.actor.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
