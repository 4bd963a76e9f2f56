"""Run configurations: frozen dataclasses, validated on construction, stored as JSON in every output."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from grpo_cli.errors import UserError
from grpo_cli.grpo import GROUP_FILTERS, LOSS_TYPES, RATIO_LEVELS, REWARDS


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
            count, sep, k = part.strip().partition("x")
            if not sep:  # a bare K: uniform over the whole group
                steps = [int(count)] * (num_generations or 1)
                break
            if not k:
                raise ValueError(part)
            steps += [int(k)] * int(count)
    except ValueError:
        raise UserError(f"bad denoise tiers {tiers!r}: use COUNTxSTEPS,... e.g. 1x1,5x10") from None
    if any(k < 1 for k in steps) or not steps:
        raise UserError(f"bad denoise tiers {tiers!r}: every count and step number must be >= 1")
    if num_generations is not None and len(steps) != num_generations:
        raise UserError(f"denoise tiers {tiers!r} give {len(steps)} members but num_generations is "
                        f"{num_generations}")
    return steps


# --- sections ----------------------------------------------------------------------------------------------
# Each command's config is a frozen dataclass built from these sections: fields stay flat (`cfg.lr_head`,
# `--set lr_head=...`, presets), but each is declared once, in the section it belongs to, with a
# one-line docstring. `settings_markdown()` renders them (docs/SETTINGS.md, checked by a test).


@dataclass(frozen=True)
class RuntimeSettings:
    """Env and runtime: what every command that simulates shares (rollout, eval, train)."""

    policy: str = "tiny"
    """`tiny[:SEED]`, a local lerobot policy directory, a training checkpoint or a hub id"""
    suite: str = "libero_10"
    """LIBERO suite: libero_10, libero_object, libero_goal, libero_spatial, libero_90"""
    max_steps: int | None = None
    """episode limit in env steps; None = the suite's (libero_10: 520)"""
    n_action_steps: int | None = None
    """actions executed per chunk before re-querying; None = the policy's n_action_steps"""
    image_size: int = 256
    """camera resolution (lerobot's LIBERO default 256; the policy resizes)"""
    seed: int = 0
    """seeds every episode's flow noise and every random choice of a run"""
    num_envs: int = 0
    """envs stepped in lockstep with one batched policy call; 0 = one per group member (eval: 1)"""
    parallel_envs: bool = False
    """step the envs in spawned worker processes (one env and one torch thread each), in parallel"""
    overlap_policy: bool = False
    """two lanes of envs take turns: the policy computes one lane's chunks while the other's envs step"""
    env_timeout_s: int = 900
    """longest wait for an env worker process's reply (a reset, a chunk) before it counts as hung: it is
    killed and the call fails as an env failure (training restarts the envs: env_failure_retries); 0 = forever"""
    device: str = "cpu"
    """torch device of the policy (cpu, cuda, cuda:1)"""

    def check_runtime(self) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("max_steps must be >= 1")
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise UserError("n_action_steps must be >= 1")
        if self.image_size < 16:
            raise UserError("image_size must be >= 16")
        if self.num_envs < 0 or self.env_timeout_s < 0:
            raise UserError("num_envs and env_timeout_s must be >= 0")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class RolloutConfig(RuntimeSettings):
    """`grpo-vla rollout`: groups of trajectories that differ only in their initial flow noise (seed Eq. 3)."""

    tasks: tuple[int, ...] = (0,)
    """task ids of the suite"""
    init_states: tuple[int, ...] = (0,)
    """one group per (task, init state); every member of a group starts from that init state"""
    num_generations: int = 6
    """trajectories per group (TRL's name)"""
    denoise_tiers: str = "10"
    """denoising steps per member: `1x1,5x10` (seed E2), `1x8,1x9,1x10` (E1) or a uniform K"""
    store_images: bool = True
    """keep the camera frames each chunk was chosen from (the update needs them; off: smaller files)"""

    def __post_init__(self) -> None:
        self.check_runtime()
        if self.num_generations < 1:
            raise UserError("num_generations must be >= 1")
        parse_tiers(self.denoise_tiers, self.num_generations)

    @property
    def steps_per_member(self) -> list[int]:
        return parse_tiers(self.denoise_tiers, self.num_generations)


@dataclass(frozen=True)
class EvalConfig(RuntimeSettings):
    """`grpo-vla eval`: the seed's protocol (LIBERO-10, 20 episodes per task over fixed init states, K = 10)."""

    tasks: tuple[int, ...] | None = None
    """task ids; None = every task of the suite"""
    episodes_per_task: int = 20
    """episode i of a task starts from init state init_states[i mod len(init_states)]"""
    init_states: tuple[int, ...] = ()
    """the init states evaluation may use (held out from training's); () = all of each task's (0..49)"""
    denoise_steps: int = 10
    """K, the Euler steps of the flow sampler"""
    sde_noise: float = 0.0
    """0: lerobot's deterministic sampler; a > 0: the Flow-SDE sampler a `likelihood = sde` run trains"""

    def __post_init__(self) -> None:
        self.check_runtime()
        if self.episodes_per_task < 1:
            raise UserError("episodes_per_task must be >= 1")
        if self.denoise_steps < 1:
            raise UserError("denoise_steps must be >= 1")
        if self.sde_noise < 0:
            raise UserError("sde_noise must be >= 0")


LIKELIHOODS = ("ode", "sde", "fpo")


# --- sections every training algorithm shares (GRPO's `train`, the noise actor's `steer`) --------------------
@dataclass(frozen=True)
class TaskSettings:
    """Tasks: what a training run rolls out."""

    tasks: tuple[int, ...] = tuple(range(10))
    """tasks sampled from, uniformly"""
    init_states: tuple[int, ...] = ()
    """the init states training draws from; () = all of each task's. Keep evaluation's out of it"""


@dataclass(frozen=True)
class ShapingSettings:
    """Goal progress: how a trajectory's progress towards the BDDL goal is measured."""

    progress_shaping: float = 0.0
    """weight of distance shaping inside goal progress (0 = predicates only)"""
    reach_shaping: float = 0.0
    """weight of the gripper's closest approach to the goal object inside goal progress (0 = off);
    progress_shaping + reach_shaping < 1 so that a near miss earns less than a satisfied predicate"""

    def check_shaping(self) -> None:
        if self.progress_shaping < 0 or self.reach_shaping < 0:
            raise UserError("progress_shaping and reach_shaping must be >= 0")
        if self.progress_shaping + self.reach_shaping >= 1:
            raise UserError(f"progress_shaping + reach_shaping must be < 1 (a near miss must earn less than "
                            f"a satisfied predicate), got {self.progress_shaping} + {self.reach_shaping}")


@dataclass(frozen=True)
class RunSettings:
    """Run length and env failures."""

    steps: int = 6000
    """steps of the run (a GRPO step; a `steer` step is one wave of episodes, one per env, and its updates)"""
    env_step_budget: int = 0
    """stop once the run has taken this many env steps (0 = no limit): compare presets at equal budget"""
    env_failure_retries: int = 2
    """restarts of the envs when one fails or its worker dies mid-rollout (the rollout is rerun, same seeds)"""

    def check_run(self) -> None:
        if self.steps < 1 or self.env_step_budget < 0 or self.env_failure_retries < 0:
            raise UserError("steps must be >= 1, env_step_budget and env_failure_retries >= 0")



@dataclass(frozen=True)
class SamplingSettings:
    """Sampling: which groups a step rolls out, and how the policy samples and scores its chunks."""

    tasks_per_step: int = 1
    """groups (one task + init state each) per GRPO step; the seed used 1"""
    skip_solved: int = 0
    """never draw again an init state whose last this-many groups all succeeded (RIPT-VLA's dynamic
    sampling; 0 = off): saves the env steps of groups that a filter would drop; checkpointed"""
    num_generations: int = 6
    """trajectories per group (TRL's name)"""
    denoise_tiers: str = "10"
    """denoising steps per member: `1x1,5x10` (seed E2), `1x8,1x9,1x10` (E1) or a uniform K"""
    likelihood: str = "ode"
    """`ode` (the seed's reading: zero policy gradient at theta_old, exactly), `sde` (Flow-SDE: stochastic
    sampling steps and their Gaussian density) or `fpo` (FPO: the deterministic sampler, and flow-matching
    loss differences as log-ratios)"""
    sde_noise: float = 0.5
    """Flow-SDE noise level a (sigma_t = a sqrt(t / (1 - t))) of `likelihood = sde`'s sampler and density"""
    ode_sigma: float = 0.1
    """std of `likelihood = ode`'s Gaussian around the recomputed chunk (scales its zero gradient's terms)"""
    fpo_samples: int = 4
    """`likelihood = fpo`: (time, noise) draws per chunk at which the flow-matching loss is compared"""
    stall_steps: int = 0
    """training rollouts end (as failures) once this many steps have passed and the goal's object has not
    moved 3 cm (0 = off; tasks whose goal object is a fixture never stall). Evaluation never stops early."""


@dataclass(frozen=True)
class RewardSettings:
    """Rewards: what a trajectory earns (seed Eq. 4, E5's fallback, E6's replay, goal progress)."""

    reward: str = "binary"
    """`binary` (success, the seed), `progress` (BDDL goal progress) or `progress+success`"""
    tier_weights: tuple[float, ...] = ()
    """Eq. 4 reward weight per member; () = all 1.0"""
    fallback_steps: int = 0
    """E5: when a group is all-fail, run one extra trajectory with this K (0 = off)"""
    fallback_success_reward: float = 1.0
    """E5: the fallback trajectory's reward when it succeeds"""
    fallback_failure_reward: float = 0.05
    """E5: the fallback trajectory's reward when it fails"""
    replay_pool: bool = False
    """E6: inject a cached success into all-fail groups; skip the step when the pool is empty"""
    replay_pool_size: int = 16
    """successes kept per (task, init state); oldest pruned first"""


@dataclass(frozen=True)
class AdvantageSettings:
    """Advantages: group filters, Eq. 1's normalisation, or per-chunk advantages against a learned value."""

    group_filter: str = "none"
    """`none`, `drop_degenerate` (all-equal rewards) or `success_band` (success rate outside the band)"""
    success_band: tuple[float, ...] = (0.1, 0.9)
    """`group_filter = success_band`: groups whose success rate lies outside [lo, hi] are dropped"""
    max_resample_tries: int = 0
    """extra rollout rounds per step to replace filtered-out groups (keeps the batch full)"""
    scale_rewards: str = "group"
    """Eq. 1's divisor (TRL's name): the `group`'s reward std, the `batch`'s, or `none`"""
    advantage_baseline: str = "group"
    """`group` (Eq. 1: one advantage per trajectory against its group) or `value`: per chunk,
    A = r - V(chunk-start state), V a small MLP refit each step on the previous `value_buffer_steps`
    steps' chunks (grpo_cli/value.py; checkpointed); the first step of a run uses `group`"""
    value_buffer_steps: int = 4
    """advantage_baseline = value: how many earlier steps' chunks the value is fitted on"""
    gae_lambda: float = 1.0
    """advantage_baseline = value: GAE's lambda over a trajectory's chunks. 1: A = r - V(s_c); below 1 a
    chunk is credited more with the change in V it caused, V(s_c+1) - V(s_c) (0: only that)"""


@dataclass(frozen=True)
class LossSettings:
    """Loss: Eq. 5, the clipped surrogate plus beta times the KL to the SFT reference."""

    ratio_level: str = "chunk"
    """PPO ratio per `trajectory`, `chunk`, denoising `step` or action `token` (grpo.ratio_samples)"""
    loss_type: str = "bnpo"
    """TRL's: `bnpo` averages the objective over all samples, `grpo` per trajectory first (grpo.sample_weights)"""
    epsilon: float = 0.2
    """PPO's clip range: ratios outside [1 - epsilon, 1 + epsilon_high] carry no gradient"""
    epsilon_high: float | None = None
    """upper clip (DAPO's clip-higher); None = epsilon"""
    dual_clip: float | None = None
    """dual-clip PPO's c (> 1, e.g. 3): bounds the objective of negative-advantage samples below by c·A"""
    beta: float = 0.0
    """KL weight to the SFT reference; 0 loads no reference"""


@dataclass(frozen=True)
class OptimizerSettings:
    """Optimizer: what trains, how fast, and for how long."""

    lr_head: float = 1e-5
    """AdamW learning rate of the action expert (the flow head)"""
    lr_backbone: float = 1e-6
    """AdamW learning rate of the VLM backbone, when it trains"""
    train_backbone: bool = False
    """lerobot freezes the VLM by default; True trains it with lr_backbone"""
    train_vision_encoder: bool = False
    """with train_backbone: also train the vision encoder (lerobot's freeze_vision_encoder=True keeps it frozen)"""
    weight_decay: float = 0.0
    """AdamW's weight decay (0: a zero gradient leaves the weights where they are)"""
    max_grad_norm: float = 1.0
    """gradients are clipped to this total norm before each optimizer step"""
    num_iterations: int = 1
    """inner epochs over each step's samples (TRL's name)"""
    minibatch_size: int = 16
    """chunks per backward pass; memory stays flat as groups grow"""


@dataclass(frozen=True)
class ShardSettings:
    """Rollout shards and env failures: where each step's episodes run, and what a failure does."""

    rollout_shards: int = 0
    """long-lived rollout workers that roll out each step's episodes (0 = the trainer's own envs)"""
    shard_executor: str = "local"
    """where the shard workers run: `local` subprocesses or a `slurm` array (settings: RUN/slurm.json)"""
    shard_envs: int = 1
    """envs per shard worker, stepped in lockstep with one batched policy call"""
    shard_timeout_s: int = 3600
    """longest wait for a shard worker's part of one hand-off: a worker silent for longer counts as hung, is
    cancelled and resubmitted (env_failure_retries), as a worker that died is"""
    shard_idle_timeout_s: int = 600
    """a worker without work for this long exits (so a dead trainer strands no jobs)"""
    shard_failure: str = "stop"
    """when a rollout shard worker has failed more than env_failure_retries times: `stop` the run with one
    line, or `continue` the step with the groups that arrived (its episodes are logged as `episodes_lost`)"""


@dataclass(frozen=True)
class LoggingSettings:
    """Checkpoints and logging."""

    exp: str = "base"
    """preset name, recorded for reports"""
    save_every: int = 100
    """keep a checkpoint every this many steps"""
    save_latest: bool = True
    """also checkpoint every step, replacing the previous in-between one: a kill -9 loses only the step
    in flight (costs one checkpoint write per step; turn off for very large policies on slow disks)"""
    log_tensorboard: bool = False
    """also write metrics as TensorBoard scalars under RUN_DIR/tensorboard"""
    log_wandb: bool = False
    """also log to Weights & Biases (offline mode unless WANDB_MODE is set)"""


TRAIN_SECTIONS = (RuntimeSettings, TaskSettings, SamplingSettings, ShapingSettings, RewardSettings, AdvantageSettings,
                  LossSettings, OptimizerSettings, RunSettings, ShardSettings, LoggingSettings)


@dataclass(frozen=True)
class TrainConfig(LoggingSettings, ShardSettings, RunSettings, OptimizerSettings, LossSettings, AdvantageSettings,
                  RewardSettings, ShapingSettings, SamplingSettings, TaskSettings, RuntimeSettings):
    """`grpo-vla train`: a GRPO run. Presets e1-e6 and recommended (presets.py) are diffs from these
    defaults; `--set key=value` overrides any field of any section."""

    policy: str = "HuggingFaceVLA/smolvla_libero"
    """the SFT policy to fine-tune (hub id, local directory, or `tiny`): unlike rollout and eval, never a random one"""

    def __post_init__(self) -> None:
        self.check_runtime()
        if self.likelihood not in LIKELIHOODS:
            raise UserError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {self.likelihood!r}")
        if self.loss_type not in LOSS_TYPES:
            raise UserError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        if self.ratio_level not in RATIO_LEVELS:
            raise UserError(f"ratio_level must be one of {', '.join(RATIO_LEVELS)}, got {self.ratio_level!r}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise UserError(f"scale_rewards must be group, batch or none, got {self.scale_rewards!r}")
        if self.advantage_baseline not in ("group", "value"):
            raise UserError(f"advantage_baseline must be group or value, got {self.advantage_baseline!r}")
        if self.advantage_baseline == "value" and (self.ratio_level == "trajectory" or self.value_buffer_steps < 1):
            raise UserError("advantage_baseline = value gives each chunk its own advantage: it needs per-chunk "
                            "ratios (not ratio_level trajectory) and value_buffer_steps >= 1")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise UserError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if self.reward not in REWARDS:
            raise UserError(f"reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        if self.group_filter not in GROUP_FILTERS:
            raise UserError(f"group_filter must be one of {', '.join(GROUP_FILTERS)}, got {self.group_filter!r}")
        if len(self.success_band) != 2 or not 0 <= self.success_band[0] <= self.success_band[1] <= 1:
            raise UserError(f"success_band must be two numbers 0 <= lo <= hi <= 1, got {self.success_band}")
        if self.rollout_shards < 0 or self.shard_envs < 1 or self.shard_executor not in ("local", "slurm"):
            raise UserError("rollout_shards must be >= 0, shard_envs >= 1, shard_executor local or slurm")
        if self.shard_failure not in ("stop", "continue"):
            raise UserError(f"shard_failure must be stop or continue, got {self.shard_failure!r}")
        self.check_shaping()
        self.check_run()
        if self.max_resample_tries < 0 or self.stall_steps < 0 or self.skip_solved < 0:
            raise UserError("max_resample_tries, stall_steps and skip_solved must be >= 0")
        steps = parse_tiers(self.denoise_tiers, self.num_generations)
        if self.tier_weights and len(self.tier_weights) != len(steps):
            raise UserError(f"tier_weights has {len(self.tier_weights)} entries but the group has "
                            f"{len(steps)} members")
        for name in ("tasks_per_step", "num_iterations", "minibatch_size", "save_every", "fpo_samples"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise UserError("dual_clip must be > 1 (or unset)")
        if self.epsilon <= 0 or self.beta < 0 or self.sde_noise <= 0:
            raise UserError("epsilon and sde_noise must be > 0 and beta >= 0")

    @property
    def steps_per_member(self) -> list[int]:
        return parse_tiers(self.denoise_tiers, self.num_generations)


STEER_ACTOR_INPUTS = ("state", "state+time")
STEER_REWARDS = ("success", "progress")


@dataclass(frozen=True)
class SteerSettings:
    """Noise steering (`steer`): SAC picks each chunk's initial flow noise; the VLA's weights never move."""

    noise_bound: float = 1.0
    """the actor's noise lies in [-noise_bound, noise_bound] (tanh-squashed); DSRL used 1 to 1.5"""
    steer_positions: int = 0
    """chunk positions whose noise the actor sets; 0 = the positions the env executes (n_action_steps). Later
    positions repeat the last steered row (DSRL's pi0 code). Only the real action dims are steered; lerobot's
    padding keeps the episode's draw. All 50 positions (350 dims) diverged in tuning (docs/NOTEBOOK.md)"""
    actor_inputs: str = "state"
    """what the actor and critic see: the policy's `state` (robot + goal positions with a privileged-state
    policy), or `state+time` (plus the fraction of the episode's steps used)"""
    steer_reward: str = "success"
    """per chunk: `success` (DSRL's: -1, and 0 on the chunk that succeeds, which ends the episode) or
    `progress` (`success` plus the chunk's change in goal progress, ShapingSettings)"""
    gamma: float = 0.99
    """discount per chunk"""
    utd: int = 20
    """update-to-data ratio: SAC gradient steps per chunk collected (DSRL: 20)"""
    warmup_env_steps: int = 5000
    """env steps rolled out with the SFT's own N(0, I) noise, before the actor acts and before any update"""
    batch_size: int = 256
    """transitions per SAC gradient step"""
    learning_rate: float = 3e-4
    """Adam learning rate of the critics and the entropy coefficient (and of the actor, unless set below)"""
    actor_learning_rate: float | None = 1e-4
    """Adam learning rate of the actor; None = learning_rate (DSRL: 1e-4 actor, 3e-4 critics)"""
    actor_averaging: float = 0.1
    """0: the actor that acts (and is evaluated and exported) is the one SAC trains. b > 0: after each step's
    updates the acting actor's weights move b of the way to the trained one's (an average over about 1/b
    steps): the trained actor jumped between checkpoints in version 1, and 0.1 was tuned for version 2
    (docs/NOTEBOOK.md, session 26)"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """hidden layers of the actor and of each of the two critics (DSRL's LIBERO runs: 128 wide)"""
    buffer_size: int = 100000
    """replay buffer capacity in chunks (transitions); checkpointed whole"""
    target_entropy: float | None = 0.0
    """SAC's entropy target (DSRL: 0); None = stable-baselines3's -(action dims)"""
    ent_coef_init: float = 0.1
    """initial entropy coefficient; tuned automatically towards target_entropy"""


STEER_SECTIONS = (RuntimeSettings, TaskSettings, SteerSettings, ShapingSettings, RunSettings, LoggingSettings)


@dataclass(frozen=True)
class SteerConfig(LoggingSettings, RunSettings, ShapingSettings, SteerSettings, TaskSettings, RuntimeSettings):
    """`grpo-vla steer`: noise-space RL (DSRL) on a frozen policy: `--set key=value` overrides any field."""

    policy: str = "HuggingFaceVLA/smolvla_libero"
    """the SFT policy to steer, frozen (hub id, local directory, or `tiny`): never a random one by default"""
    exp: str = "steer"
    """recorded for reports: steer runs are told apart from GRPO presets by it"""

    def __post_init__(self) -> None:
        self.check_runtime()
        self.check_shaping()
        self.check_run()
        if self.actor_inputs not in STEER_ACTOR_INPUTS:
            raise UserError(f"actor_inputs must be one of {', '.join(STEER_ACTOR_INPUTS)}, got {self.actor_inputs!r}")
        if self.steer_reward not in STEER_REWARDS:
            raise UserError(f"steer_reward must be one of {', '.join(STEER_REWARDS)}, got {self.steer_reward!r}")
        if not self.noise_bound > 0:
            raise UserError(f"noise_bound must be > 0, got {self.noise_bound}")
        if not 0 <= self.gamma <= 1 or not 0 < self.tau <= 1:
            raise UserError("gamma must be in [0, 1] and tau in (0, 1]")
        if self.steer_positions < 0 or self.warmup_env_steps < 0:
            raise UserError("steer_positions and warmup_env_steps must be >= 0")
        for name in ("utd", "batch_size", "buffer_size", "save_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise UserError(f"hidden_sizes must be one or more positive layer widths, got {self.hidden_sizes}")
        if not self.learning_rate > 0 or not self.ent_coef_init > 0:
            raise UserError("learning_rate and ent_coef_init must be > 0")
        if self.actor_learning_rate is not None and not self.actor_learning_rate > 0:
            raise UserError(f"actor_learning_rate must be > 0 (or none), got {self.actor_learning_rate}")
        if not 0 <= self.actor_averaging <= 1:
            raise UserError(f"actor_averaging must be in [0, 1], got {self.actor_averaging}")


def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings of the fields a class itself declares (the string under each field)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:] + [None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            text = after.value.value if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                                         and isinstance(after.value.value, str)) else ""
            docs[node.target.id] = " ".join(text.split())
    return docs


def settings_markdown() -> str:
    """docs/SETTINGS.md: every setting, by section, with its default and docstring (a test keeps the file
    equal to this: `python -c "from grpo_cli.config import settings_markdown as s; print(s(), end='')"
    > docs/SETTINGS.md`)."""
    import dataclasses

    lines = ["# Settings", "", "Generated from `grpo_cli/config.py` (`settings_markdown`); a test checks this file "
             "against it. `grpo-vla train --set KEY=VALUE` (or a YAML `--config`) sets any `train` setting; "
             "rollout and eval take theirs as options. Presets (`grpo_cli/presets.py`) are diffs from the "
             "defaults below.", ""]
    sections = [*TRAIN_SECTIONS[:1], RolloutConfig, EvalConfig, *TRAIN_SECTIONS[1:], TrainConfig, SteerSettings,
                SteerConfig]
    for cls in sections:
        own = field_docs(cls)
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        title = (cls.__doc__ or cls.__name__).split("\n")[0]
        lines += [f"## {title}", "", "| setting | default | meaning |", "|---|---|---|"]
        for name, doc in own.items():
            value = defaults[name]
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            lines.append(f"| `{name}` | `{shown}` | {doc.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)
