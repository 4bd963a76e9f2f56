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
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from grpo_cli.config import RolloutConfig
from grpo_cli.envs.libero import CAMERAS, STATE_KEY, LiberoEnv, TaskSpec, configure_libero
from grpo_cli.episodes import EpisodeSpec, Trajectory, episode_seed
from grpo_cli.errors import EnvFailure, UserError
from grpo_cli.policies.smolvla import SmolVLAAdapter
from grpo_cli.storage import write_rollout

ChunkResult = tuple[list[np.ndarray], list[float], bool, dict[str, np.ndarray], float, bool]
STALL_DISTANCE = 0.03  # m: a goal object that has moved less than this has not been picked up or pushed


class EnvWorker:
    """One env slot: a LiberoEnv built lazily and rebuilt only when the slot changes task."""

    def __init__(self, image_size: int, images: bool = True, privileged_state: bool = False,
                 progress_shaping: float = 0.0, reach_shaping: float = 0.0, stall_steps: int = 0, worker: int = 0):
        self.image_size, self.images, self.worker = image_size, images, worker
        self.renderers: set[str] = set()  # GL renderers of the envs this slot built (CPU llvmpipe or a GPU)
        self.privileged_state, self.progress_shaping = privileged_state, progress_shaping
        self.reach_shaping = reach_shaping
        self.stall_steps = stall_steps
        self.env: LiberoEnv | None = None

    def reset(self, task: TaskSpec, init_state: int) -> dict[str, np.ndarray]:
        if self.env is None or self.env.spec != task:
            self.close()
            self.env = LiberoEnv(task, image_size=self.image_size, images=self.images,
                                 privileged_state=self.privileged_state, worker=self.worker)
            if self.env.renderer not in self.renderers:
                print(f"[env {self.worker}] GL renderer: {self.env.renderer}", file=sys.stderr, flush=True)
                self.renderers.add(self.env.renderer)
        return self.env.reset(init_state)

    def renderer_names(self) -> set[str]:
        return self.renderers

    def run_chunk(self, actions: np.ndarray, steps_left: int) -> ChunkResult:
        """Execute up to len(actions) steps; stop on success or when steps_left run out.

        Renders cameras only on the last step (the one whose observation the policy reads next).
        Returns (state after each step, reward of each step, success, last observation, goal progress,
        stalled). stalled: `stall_steps` > 0 steps have passed and the goal object has not moved
        STALL_DISTANCE (LIBERO-Object: such episodes never succeed later; docs/NOTEBOOK.md).
        """
        assert self.env is not None, "reset a slot before stepping it"
        n = min(len(actions), steps_left)
        states, rewards, success, obs = [], [], False, {}
        for i in range(n):
            obs, reward, success, _ = self.env.step(actions[i], render=i == n - 1)
            states.append(obs[STATE_KEY])
            rewards.append(reward)
            if success:
                break
        stalled = (not success and 0 < self.stall_steps <= self.env.steps
                   and self.env.target_displacement() < STALL_DISTANCE)
        progress = 1.0 if success else self.env.progress(self.progress_shaping, self.reach_shaping)
        return states, rewards, success, obs, progress, stalled

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


class LocalEnvSlots:
    """Env slots stepped one after another in this process (least memory; no parallelism)."""

    def __init__(self, size: int, image_size: int, images: bool = True, **options: Any):
        self.size = size
        self._workers = [EnvWorker(image_size, images, worker=i, **options) for i in range(size)]
        self._done: dict[int, ChunkResult] = {}  # submitted chunks' results, until gathered

    def reset_many(self, items: Sequence[tuple[int, TaskSpec, int]]) -> list[dict[str, np.ndarray]]:
        try:
            return [self._workers[slot].reset(task, init) for slot, task, init in items]
        except Exception as err:
            raise EnvFailure(f"env reset failed: {type(err).__name__}: {err}") from err

    def run_chunks(self, items: Sequence[tuple[int, np.ndarray, int]]) -> list[ChunkResult]:
        try:
            return [self._workers[slot].run_chunk(actions, left) for slot, actions, left in items]
        except Exception as err:
            raise EnvFailure(f"env step failed: {type(err).__name__}: {err}") from err

    def submit_chunks(self, items: Sequence[tuple[int, np.ndarray, int]]) -> None:
        """Start chunks (here: run them now); `gather_chunks` returns their results."""
        self._done.update(zip([slot for slot, _, _ in items], self.run_chunks(items), strict=True))

    def gather_chunks(self, slots: Sequence[int]) -> list[ChunkResult]:
        return [self._done.pop(slot) for slot in slots]

    def reset(self, slot: int, task: TaskSpec, init_state: int) -> dict[str, np.ndarray]:
        return self.reset_many([(slot, task, init_state)])[0]

    def renderers(self) -> list[str]:
        """The GL renderers the slots' envs got so far, sorted (files record them)."""
        return sorted(set().union(*(w.renderer_names() for w in self._workers)))

    def close(self) -> None:
        for worker in self._workers:
            worker.close()


def _worker_main(conn: Any, image_size: int, images: bool, options: dict[str, Any], worker_index: int) -> None:
    """Loop of one env worker process: one env, one torch thread, commands over a pipe."""
    import signal
    import traceback

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and closes us
    torch.set_num_threads(1)
    worker = EnvWorker(image_size, images, worker=worker_index, **options)
    try:
        while True:
            command, args = conn.recv()
            if command == "close":
                break
            try:
                conn.send(("ok", getattr(worker, command)(*args)))
            except Exception:  # noqa: BLE001 - report any env failure to the parent, keep serving
                conn.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        worker.close()


def _rss_mb(pid: int | None) -> float:
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return float("nan")
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return kib / 1024 if kib is not None else float("nan")


class ProcessEnvSlots:
    """One spawned worker process per slot (EGL contexts do not survive fork), stepped in parallel.

    The policy stays in the parent; each call sends every slot its command, then gathers the replies,
    so env stepping of all slots overlaps. Trajectories equal LocalEnvSlots' for the same slot count.
    """

    def __init__(self, size: int, image_size: int, images: bool = True, **options: Any):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.size = size
        self._conns, self._procs = [], []
        for index in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, image_size, images, options, index), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def _died(self, slot: int) -> EnvFailure:
        self._procs[slot].join(timeout=1)
        return EnvFailure(f"env worker {slot} died (exit code {self._procs[slot].exitcode})")

    def _send(self, items: Sequence[tuple[int, str, tuple]]) -> None:
        for slot, command, args in items:
            try:
                self._conns[slot].send((command, args))
            except OSError:
                raise self._died(slot) from None

    def _recv(self, slots: Sequence[int]) -> list[Any]:
        results = []
        for slot in slots:
            try:
                status, value = self._conns[slot].recv()
            except (EOFError, OSError):
                raise self._died(slot) from None
            if status == "error":
                raise EnvFailure(f"env worker {slot} failed: {value.strip().splitlines()[-1]}\n{value}")
            results.append(value)
        return results

    def _call(self, items: Sequence[tuple[int, str, tuple]]) -> list[Any]:
        self._send(items)
        return self._recv([slot for slot, _, _ in items])

    def reset_many(self, items: Sequence[tuple[int, TaskSpec, int]]) -> list[dict[str, np.ndarray]]:
        return self._call([(slot, "reset", (task, init)) for slot, task, init in items])

    def run_chunks(self, items: Sequence[tuple[int, np.ndarray, int]]) -> list[ChunkResult]:
        return self._call([(slot, "run_chunk", (actions, left)) for slot, actions, left in items])

    def submit_chunks(self, items: Sequence[tuple[int, np.ndarray, int]]) -> None:
        """Start chunks in the workers and return at once; `gather_chunks` waits for their results."""
        self._send([(slot, "run_chunk", (actions, left)) for slot, actions, left in items])

    def gather_chunks(self, slots: Sequence[int]) -> list[ChunkResult]:
        return self._recv(slots)

    def reset(self, slot: int, task: TaskSpec, init_state: int) -> dict[str, np.ndarray]:
        return self.reset_many([(slot, task, init_state)])[0]

    def renderers(self) -> list[str]:
        """The GL renderers the workers' envs got so far, sorted (files record them)."""
        return sorted(set().union(*self._call([(slot, "renderer_names", ()) for slot in range(self.size)])))

    def worker_rss_mb(self) -> list[float]:
        """Resident memory of each worker process in MiB (Linux /proc; NaN where unreadable)."""
        return [_rss_mb(proc.pid) for proc in self._procs]

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("close", ()))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        self._conns, self._procs = [], []


EnvSlots = LocalEnvSlots | ProcessEnvSlots


def make_env_slots(size: int, image_size: int, images: bool = True, processes: bool = False,
                   privileged_state: bool = False, progress_shaping: float = 0.0, reach_shaping: float = 0.0,
                   stall_steps: int = 0) -> EnvSlots:
    """`processes=True`: one spawned worker per slot, stepped in parallel; else all in this process.

    privileged_state: append the goal objects' positions to the state (policies trained that way);
    progress_shaping, reach_shaping: the shaping weights of each trajectory's goal progress."""
    configure_libero()  # missing assets: one line here, not an env failure in every slot
    return (ProcessEnvSlots if processes else LocalEnvSlots)(
        size, image_size, images, privileged_state=privileged_state, progress_shaping=progress_shaping,
        reach_shaping=reach_shaping, stall_steps=stall_steps)


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
                           privileged_state=adapter.privileged_state, processes=cfg.parallel_envs)
    try:
        trajs = run_episodes(adapter, slots, episodes, max_steps=cfg.max_steps, n_action_steps=cfg.n_action_steps,
                             keep_images=cfg.store_images, overlap=cfg.overlap_policy,
                             on_episode=on_episode)
        renderers = slots.renderers()
    finally:
        slots.close()
    env_args = {"suite": cfg.suite, "image_size": cfg.image_size, "control_freq": 20, "max_steps": cfg.max_steps,
                "n_action_steps": cfg.n_action_steps or adapter.config.n_action_steps, "renderers": renderers}
    write_rollout(out, trajs, cfg_json, adapter.identity, env_args)
    return {"trajectories": len(trajs), "successes": sum(bool(t.success) for t in trajs),
            "env_steps": int(sum(t.length for t in trajs))}
