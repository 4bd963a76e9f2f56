"""SmolVLA adapter: the only module that knows lerobot's SmolVLA internals (lerobot 0.4.4).

Dimension legend
    B   batch (members of a group, or several groups)      H    chunk size (50)
    Dm  max_action_dim (32, zero padded)                    Da   real action dims (7 on LIBERO)
    K   denoising steps of a member (1, 8, 9, 10, 100, ...)  L    prefix length (images + text + state)

Flow convention (lerobot): x_t = t*noise + (1-t)*action, v ~ noise - action; sampling integrates from
t = 1 (x_K = noise z) to t = 0 (x_0 = normalised action chunk) with Euler steps x <- x - (1/K) v.
A chain is the list x_K, ..., x_0, shape (K+1, H, Dm): with it a likelihood can be recomputed later.

Policy sources: `tiny[:SEED]` (built offline from lerobot's classes with a generated SmolVLM
directory), a local lerobot `save_pretrained` directory, or a hub id.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_cli import grpo
from grpo_cli.envs.libero import PRIVILEGED_STATE_DIM
from grpo_cli.errors import UserError
from grpo_cli.policies.noise_actor import ACTOR_FILE, NoiseActor
from grpo_cli.policies.offline_vlm import SMOLVLM2_500M, TinyVLMSpec, write_tiny_vlm
from grpo_cli.storage import open_kind

DEFAULT_HUB_POLICY = "HuggingFaceVLA/smolvla_libero"
VLM_SUBDIR = "vlm"  # a saved policy carries its VLM config/tokenizer here, so it can be moved
IMAGE_KEYS = ("observation.images.image", "observation.images.image2")
STATE_KEY = "observation.state"
TINY_STATE_DIM = 8
TINY_ACTION_DIM = 7


def _cache_dir() -> Path:
    return Path(os.environ.get("GRPO_VLA_CACHE", Path.home() / ".cache" / "grpo-vla"))


@dataclass
class Prefix:
    """Encoded observation prefix, computed once per query and reused by every denoising step.

    pad_masks (B, L) bool; kv: lerobot's cache {layer: {key_states, value_states: (B, L, Hkv, Dh)}}.
    """

    pad_masks: torch.Tensor
    kv: dict[int, dict[str, torch.Tensor]]

    def select(self, index: torch.Tensor) -> Prefix:
        """The prefix of a subset of the batch (index: (B',) long)."""
        kv = {layer: {name: t.index_select(0, index) for name, t in cache.items()}
              for layer, cache in self.kv.items()}
        return Prefix(self.pad_masks.index_select(0, index), kv)


class SmolVLAAdapter:
    """What GRPO needs from a SmolVLA: prefix encoding, chains from given noise, unnormalisation."""

    def __init__(self, policy: Any, preprocessor: Any, postprocessor: Any, identity: dict[str, Any]):
        self.policy = policy.eval()
        self.model = policy.model  # VLAFlowMatching
        self.config = policy.config
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.identity = identity
        self.chunk_size: int = self.config.chunk_size
        self.max_action_dim: int = self.config.max_action_dim
        self.action_dim: int = self.config.output_features["action"].shape[0]
        self.image_keys = [k for k in IMAGE_KEYS if k in self.config.input_features]
        self.state_dim: int = self.config.input_features[STATE_KEY].shape[0]
        self.noise_actor: NoiseActor | None = None  # set: a steered policy, its actor picks each chunk's noise

    @property
    def privileged_state(self) -> bool:
        """True for policies trained with the goal objects' positions appended to the robot state."""
        return self.state_dim == PRIVILEGED_STATE_DIM

    # --- loading ---------------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str, device: str = "cpu") -> SmolVLAAdapter:
        """Load from `tiny[:SEED]`, a local directory, or a hub id (errors explain what to pass instead)."""
        for name in ("tiny", "random-smolvla"):
            if source == name or source.startswith(f"{name}:"):
                seed = int(source.split(":", 1)[1]) if ":" in source else 0
                return build_tiny(seed=seed, device=device, real_size=name == "random-smolvla")
        path = Path(source).expanduser()
        if path.is_file() and path.suffix in (".h5", ".hdf5"):
            return _load_checkpoint(path, device)
        if path.exists():
            if not (path / "config.json").is_file():
                raise UserError(f"{path} is not a lerobot policy directory (no config.json); pass a "
                                "directory written by `save_pretrained`, a hub id, or `tiny`")
            return _load_pretrained(str(path.resolve()), device, local_vlm=path / VLM_SUBDIR)
        if source.count("/") != 1 or source.startswith((".", "/")):
            raise UserError(f"policy {source!r} is neither a local directory nor a hub id (owner/name); "
                            "pass a directory, a hub id, or `tiny`")
        return _load_pretrained(source, device, local_vlm=None)

    def save_pretrained(self, directory: str | Path) -> Path:
        """lerobot's `save_pretrained` layout, plus the VLM directory under `vlm/` with relative paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vlm_source = Path(self.config.vlm_model_name)
        self.policy.save_pretrained(directory)
        self.preprocessor.save_pretrained(directory)
        self.postprocessor.save_pretrained(directory)
        if vlm_source.is_dir() and vlm_source.resolve() != (directory / VLM_SUBDIR).resolve():
            shutil.copytree(vlm_source, directory / VLM_SUBDIR, dirs_exist_ok=True)
        if vlm_source.is_dir():  # relocatable: no absolute path of this machine in the saved JSON
            _rewrite_json(directory / "config.json", lambda c: c.update(vlm_model_name=VLM_SUBDIR))
            _rewrite_json(directory / "policy_preprocessor.json", _relative_tokenizer)
        (directory / "grpo_vla_identity.json").write_text(json.dumps(self.identity, indent=1))
        if self.noise_actor is not None:  # a steered policy: its actor travels beside the frozen VLA
            self.noise_actor.save(directory / ACTOR_FILE)
        return directory

    def attach_actor(self, path: str | Path, source: str) -> SmolVLAAdapter:
        """Make this (frozen) policy a steered one: its noise actor from a steer checkpoint or actor file."""
        self.noise_actor = NoiseActor.load(path, self.state_dim, self.chunk_size, self.action_dim,
                                           self.config.n_action_steps)
        self.identity = {"source": source, "kind": "steered", "params_sha1": self.identity["params_sha1"],
                         "actor": {**self.noise_actor.source, "actor_sha1": self.noise_actor.digest()},
                         "lineage": self.identity}
        return self

    # --- observation -> model batch -------------------------------------------------------------------
    def preprocess(self, observations: Sequence[dict[str, np.ndarray]], tasks: Sequence[str],
                   actions: np.ndarray | None = None) -> dict[str, Any]:
        """Env observations (uint8 HWC images, (S,) state) -> normalised, tokenised model batch.

        actions (B, H, Da), for training, are normalised into the batch's `action`."""
        batch: dict[str, Any] = {"task": list(tasks)}
        if actions is not None:
            batch["action"] = torch.from_numpy(np.asarray(actions, dtype=np.float32))
        for key in self.image_keys:
            images = np.stack([o[key] for o in observations])  # (B, h, w, 3) uint8
            batch[key] = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        batch[STATE_KEY] = torch.from_numpy(np.stack([o[STATE_KEY] for o in observations])).float()
        return self.preprocessor(batch)

    def encode_prefix(self, batch: dict[str, Any], grad: bool = False) -> Prefix:
        """Run the VLM over images + language + state once; the KV cache serves all denoising steps.

        grad=True keeps the graph, so a trainable backbone (or state projection) gets gradients.
        """
        from lerobot.policies.smolvla.modeling_smolvla import make_att_2d_masks

        policy, model = self.policy, self.model
        with torch.set_grad_enabled(grad):
            images, img_masks = policy.prepare_images(batch)
            state = policy.prepare_state(batch)
            embs, pad_masks, att_masks = model.embed_prefix(
                images, img_masks, batch["observation.language.tokens"],
                batch["observation.language.attention_mask"], state=state)
            att_2d = make_att_2d_masks(pad_masks, att_masks)
            position_ids = torch.cumsum(pad_masks, dim=1) - 1
            _, kv = model.vlm_with_expert.forward(attention_mask=att_2d, position_ids=position_ids,
                                                  past_key_values=None, inputs_embeds=[embs, None],
                                                  use_cache=True, fill_kv_cache=True)
        return Prefix(pad_masks, kv)

    def velocity(self, prefix: Prefix, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v_theta(x_t, t | prefix): x_t (B, H, Dm), t (B,) -> (B, H, Dm) float32 (differentiable)."""
        return self.model.denoise_step(prefix_pad_masks=prefix.pad_masks, past_key_values=prefix.kv,
                                       x_t=x_t, timestep=t)

    @torch.no_grad()
    def denoise(self, prefix: Prefix, noise: torch.Tensor, num_steps: Sequence[int], sde_noise: float = 0.0,
                generators: Sequence[torch.Generator] | None = None) -> list[torch.Tensor]:
        """Denoising chains from the given noise, one K per batch member.

        noise (B, H, Dm); num_steps (B,) ints. Returns B chains, chain b of shape (K_b+1, H, Dm), with
        chain[0] = noise and chain[-1] = the normalised action chunk. Members sharing a K run as one
        batch over the shared prefix cache, with exactly lerobot's time grid (t_k = 1 - k/K).

        sde_noise = 0: lerobot's deterministic Euler sampler. sde_noise = a > 0: Flow-SDE, each step
        x_{t-dt} ~ N(mu_theta, sigma_t^2 dt) (see grpo.sde_step_mean), the Gaussian draws taken from
        `generators[b]` so a member's chain does not depend on the rest of the batch.
        """
        if noise.shape[1:] != (self.chunk_size, self.max_action_dim) or len(num_steps) != noise.shape[0]:
            raise ValueError(f"noise must be (B, {self.chunk_size}, {self.max_action_dim}) with one K each")
        if sde_noise > 0 and (generators is None or len(generators) != noise.shape[0]):
            raise ValueError("Flow-SDE sampling needs one generator per batch member")
        chains: list[torch.Tensor | None] = [None] * noise.shape[0]
        for k in sorted(set(int(s) for s in num_steps)):
            if k < 1:
                raise ValueError(f"denoising steps must be >= 1, got {k}")
            members = [b for b, s in enumerate(num_steps) if int(s) == k]
            index = torch.tensor(members, dtype=torch.long, device=noise.device)
            sub = prefix.select(index) if len(index) < noise.shape[0] else prefix
            x = noise.index_select(0, index)
            steps = [x]
            for step in range(k):
                t = torch.tensor(1.0 + step * (-1.0 / k), dtype=torch.float32,  # lerobot's grid
                                 device=x.device).expand(len(index))
                v = self.velocity(sub, x, t)
                if sde_noise > 0:
                    sigma = grpo.sde_sigma(t, 1.0 / k, sde_noise)
                    # CPU generators: a member's draws are the same on every device
                    xi = torch.stack([torch.randn(x.shape[1:], generator=generators[b]) for b in members]).to(x.device)
                    x = grpo.sde_step_mean(x, v, t, 1.0 / k, sigma) + (sigma * (1.0 / k) ** 0.5).view(-1, 1, 1) * xi
                else:
                    x = x + (-1.0 / k) * v  # lerobot's update, bit for bit
                steps.append(x)
            stacked = torch.stack(steps, dim=1)  # (B_k, K+1, H, Dm)
            for j, b in enumerate(members):
                chains[b] = stacked[j]
        return chains  # type: ignore[return-value]

    def transitions(self, prefix: Prefix, chains: torch.Tensor, likelihood: str, sde_noise: float = 0.5,
                    ode_sigma: float = 0.1, fpo_draws: tuple[torch.Tensor, torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The Gaussian steps that score stored chains under the current parameters (differentiable).

        prefix for B samples; chains (B, K+1, H, Dm), all with the same K. Returns (targets, means, stds)
        with targets and means (B, J, H, Dm) and stds (B, J), J scored steps:
        - `sde` (J = K): step k is N(x_{k+1}; mu_theta(x_k, t_k), sigma_k^2 dt), the exact transition
          of a chain sampled with `denoise(..., sde_noise)`.
        - `ode` (J = 1): the seed's reading. Re-run the deterministic Euler sampler from the stored
          noise and score the stored chunk under N(f_theta(z), ode_sigma^2). At theta = theta_old
          f_theta(z) equals the stored chunk: the log-prob sits at its maximum, its gradient is 0.
        - `fpo` (J = draws): FPO's surrogate. `fpo_draws` = (taus (B, J), noise (B, J, H, Dm)); draw j scores
          v_theta at the conditional-flow point between its noise and the executed chunk x_0 against the
          velocity target, under std grpo.FPO_STD, so a log-ratio is a flow-matching loss difference. It
          needs no sampler likelihood: chunks come from the deterministic sampler that eval uses.
        """
        k = chains.shape[1] - 1
        dt = 1.0 / k
        batch = chains.shape[0]
        if likelihood == "sde":
            means, stds = [], []
            for step in range(k):
                t = torch.full((batch,), 1.0 + step * (-dt), device=chains.device)
                x_t = chains[:, step]
                sigma = grpo.sde_sigma(t, dt, sde_noise)
                means.append(grpo.sde_step_mean(x_t, self.velocity(prefix, x_t, t), t, dt, sigma))
                stds.append(sigma * dt**0.5)
            return chains[:, 1:], torch.stack(means, 1), torch.stack(stds, 1)
        if likelihood == "ode":
            x = chains[:, 0]
            for step in range(k):
                t = torch.full((batch,), 1.0 + step * (-dt), device=chains.device)
                x = x - dt * self.velocity(prefix, x, t)
            return chains[:, -1:], x[:, None], torch.full((batch, 1), ode_sigma, device=chains.device)
        if likelihood == "fpo":
            if fpo_draws is None:
                raise ValueError("likelihood 'fpo' needs fpo_draws")
            taus, noise = fpo_draws
            draws = taus.shape[1]
            x_tau, target = grpo.cfm_point(chains[:, -1].repeat_interleave(draws, 0), noise.flatten(0, 1),
                                           taus.flatten())
            owner = torch.arange(batch, device=chains.device).repeat_interleave(draws)
            v = self.velocity(prefix.select(owner), x_tau, taus.flatten())
            return (target.view(batch, draws, *target.shape[1:]), v.view(batch, draws, *v.shape[1:]),
                    torch.full((batch, draws), grpo.FPO_STD, device=chains.device))
        raise ValueError(f"likelihood must be 'sde', 'ode' or 'fpo', got {likelihood!r}")

    @property
    def action_mask(self) -> torch.Tensor:
        """(Dm,) bool: the real action dims; lerobot pads the rest with noise-only targets."""
        return torch.arange(self.max_action_dim) < self.action_dim

    def chain_logprob(self, prefix: Prefix, chains: torch.Tensor, likelihood: str, sde_noise: float = 0.5,
                      ode_sigma: float = 0.1) -> torch.Tensor:
        """log pi_theta(chain) over the real action dims, (B,): the sum of `transitions`' log-densities."""
        targets, means, stds = self.transitions(prefix, chains, likelihood, sde_noise, ode_sigma)
        steps = targets.shape[1]
        flat = grpo.gaussian_logprob(targets.flatten(0, 1), means.flatten(0, 1), stds.flatten(), self.action_mask)
        return flat.view(-1, steps).sum(1)

    def unnormalize(self, x0: torch.Tensor) -> np.ndarray:
        """Normalised chunk (B, H, Dm) -> env actions (B, H, Da), float32, as lerobot's postprocessor."""
        return self.postprocessor(x0[..., : self.action_dim]).numpy().astype(np.float32)

    def sample_noise(self, generator: torch.Generator, batch: int = 1) -> torch.Tensor:
        """z ~ N(0, I) of shape (batch, H, Dm) from a caller-owned generator (reproducible per stream)."""
        return torch.randn((batch, self.chunk_size, self.max_action_dim), generator=generator)

    def initial_noise(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """The chains' starting noise (B, H, Dm): one draw from each episode's own stream (seed Eq. 3)."""
        return torch.cat([self.sample_noise(g) for g in generators])


def _quiet() -> contextlib.AbstractContextManager:
    """lerobot prints progress lines on stdout while building; keep our stdout for results."""
    return contextlib.redirect_stdout(io.StringIO())


HEAD_PREFIXES = ("model.vlm_with_expert.lm_expert.", "model.state_proj.", "model.action_in_proj.",
                 "model.action_out_proj.", "model.action_time_mlp_in.", "model.action_time_mlp_out.")
BACKBONE_PREFIX = "model.vlm_with_expert.vlm.model."  # vision + connector + text (lm_head is unused)
MODULES = {"vision": "model.vlm_with_expert.vlm.model.vision_model.",
           "connector": "model.vlm_with_expert.vlm.model.connector.",
           "text": "model.vlm_with_expert.vlm.model.text_model.",
           "expert": "model.vlm_with_expert.lm_expert.",
           "heads": HEAD_PREFIXES[1:]}


def module_of(name: str) -> str:
    """Which part of SmolVLA a parameter belongs to (for per-module drift)."""
    for module, prefixes in MODULES.items():
        if name.startswith(prefixes):
            return module
    return "other"


def parameter_groups(policy: torch.nn.Module, train_backbone: bool, train_vision_encoder: bool = False
                     ) -> dict[str, list[torch.nn.Parameter]]:
    """Set requires_grad explicitly (lerobot 0.4.4's own freeze patterns miss layers) and return groups.

    `head`: action expert + action/state/time projections; `backbone`: the VLM's connector and text
    model, plus the vision encoder only if `train_vision_encoder` (lerobot freezes it by default).
    """
    groups: dict[str, list[torch.nn.Parameter]] = {"head": [], "backbone": []}
    for name, param in policy.named_parameters():
        if name.startswith(HEAD_PREFIXES):
            param.requires_grad_(True)
            groups["head"].append(param)
        elif (train_backbone and name.startswith(BACKBONE_PREFIX)
              and (train_vision_encoder or not name.startswith(MODULES["vision"]))):
            param.requires_grad_(True)
            groups["backbone"].append(param)
        else:
            param.requires_grad_(False)
    return groups


def _rewrite_json(path: Path, edit: Any) -> None:
    if path.exists():
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data, indent=4))


def _relative_tokenizer(pipeline: dict[str, Any]) -> None:
    for step in pipeline.get("steps", []):
        if step.get("registry_name") == "tokenizer_processor":
            step.setdefault("config", {})["tokenizer_name"] = VLM_SUBDIR


def _load_pretrained(source: str, device: str, local_vlm: Path | None) -> SmolVLAAdapter:
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    overrides: dict[str, Any] = {"device_processor": {"device": device}}
    try:
        config = PreTrainedConfig.from_pretrained(source)
        if local_vlm is not None and local_vlm.is_dir():
            config.vlm_model_name = str(local_vlm.resolve())
            overrides["tokenizer_processor"] = {"tokenizer_name": str(local_vlm.resolve())}
        config.device = device
        with _quiet():
            policy = SmolVLAPolicy.from_pretrained(source, config=config)
        pre, post = make_pre_post_processors(config, pretrained_path=source,
                                             preprocessor_overrides=overrides,
                                             postprocessor_overrides={})
    except UserError:
        raise
    except OSError as err:  # hub unreachable, repo missing, files missing
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise UserError(f"cannot load policy {source!r} ({'hub is offline' if offline else err.__class__.__name__}): "
                        "pass a local lerobot policy directory with --policy PATH, or --policy tiny") from None
    identity = {"source": source, "kind": "pretrained", "params_sha1": params_digest(policy)}
    saved = Path(source) / "grpo_vla_identity.json"
    if saved.is_file():
        identity["lineage"] = json.loads(saved.read_text())
    adapter = SmolVLAAdapter(policy, pre, post, identity)
    actor = Path(source) / ACTOR_FILE
    return adapter.attach_actor(actor, source) if actor.is_file() else adapter


def _load_checkpoint(path: Path, device: str) -> SmolVLAAdapter:
    """A grpo-vla training checkpoint: its base policy with the checkpoint's parameters; a `steer`
    checkpoint: its frozen base policy, unchanged, steered by the checkpoint's noise actor."""
    with open_kind(path, "checkpoint") as f:
        base = json.loads(f.attrs["policy"])
        if json.loads(f.attrs["extra"]).get("algorithm") == "steer":
            adapter = SmolVLAAdapter.load(base["source"], device=device)
            if adapter.identity["params_sha1"] != base["params_sha1"]:
                raise UserError(f"{path} steers {base['source']}, whose parameters have changed since the run")
            return adapter.attach_actor(path, str(path))
        params = {name: torch.from_numpy(ds[()]) for name, ds in f["params"].items()}
        step = int(f.attrs["step"])
    adapter = SmolVLAAdapter.load(base["source"], device=device)
    adapter.policy.load_state_dict(params, strict=True)
    adapter.identity = {"source": str(path), "kind": "checkpoint", "step": step,
                        "params_sha1": params_digest(adapter.policy), "lineage": base}
    return adapter


def tiny_config(vlm_dir: Path, device: str = "cpu", image_size: int = 64, state_dim: int = TINY_STATE_DIM,
                spec: TinyVLMSpec | None = None, num_vlm_layers: int | None = None) -> Any:
    """A SmolVLA config over a generated backbone for LIBERO's observation/action spaces: small and
    CPU-friendly by default; `spec=SMOLVLM2_500M, num_vlm_layers=16` is SmolVLA's real size."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    spec = spec or TinyVLMSpec()
    inputs = {key: PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size)) for key in IMAGE_KEYS}
    inputs[STATE_KEY] = PolicyFeature(FeatureType.STATE, (state_dim,))
    return SmolVLAConfig(vlm_model_name=str(vlm_dir), load_vlm_weights=False,
                         num_vlm_layers=num_vlm_layers or spec.text_layers,
                         resize_imgs_with_padding=(spec.image_size, spec.image_size), device=device,
                         input_features=inputs,
                         output_features={"action": PolicyFeature(FeatureType.ACTION, (TINY_ACTION_DIM,))})


def build_tiny(seed: int = 0, device: str = "cpu", stats: dict[str, dict[str, Any]] | None = None,
               state_dim: int = TINY_STATE_DIM, real_size: bool = False) -> SmolVLAAdapter:
    """SmolVLA from lerobot's real classes with a generated SmolVLM directory and seeded random weights.

    `stats` are lerobot-style normalisation statistics; by default identity (mean 0, std 1).
    `real_size`: SmolVLA's real shapes (SmolVLM2-500M backbone, 16 VLM layers, 512 px), for speed and
    memory measurements without the hub (source `random-smolvla[:SEED]`).
    """
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors

    if real_size:
        vlm_dir = write_tiny_vlm(_cache_dir() / "random-smolvlm2-500m", SMOLVLM2_500M)
        config = tiny_config(vlm_dir, device=device, image_size=256, state_dim=state_dim, spec=SMOLVLM2_500M,
                             num_vlm_layers=16)
    else:
        vlm_dir = write_tiny_vlm(_cache_dir() / "tiny-smolvlm")
        config = tiny_config(vlm_dir, device=device, state_dim=state_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _quiet():
            policy = SmolVLAPolicy(config)
    if stats is None:
        stats = {STATE_KEY: {"mean": torch.zeros(state_dim), "std": torch.ones(state_dim)},
                 "action": {"mean": torch.zeros(TINY_ACTION_DIM), "std": torch.ones(TINY_ACTION_DIM)}}
    pre, post = make_smolvla_pre_post_processors(config, dataset_stats=stats)
    identity = {"source": f"{'random-smolvla' if real_size else 'tiny'}:{seed}", "kind": "tiny",
                "params_sha1": params_digest(policy)}
    return SmolVLAAdapter(policy, pre, post, identity)


def params_digest(policy: torch.nn.Module) -> str:
    """SHA-1 over parameter names and values: tells two policies apart in trajectory files."""
    digest = hashlib.sha1()
    for name, tensor in sorted(policy.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
