"""Env slots: the LIBERO envs that episodes step, in this process or one spawned worker process each.

This module and everything it imports stay free of torch and the policy: a worker process imports only
it, so each env worker holds one LIBERO scene and its renderer, not a second copy of torch (~470 MiB).
A test checks that a worker never imports torch.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from grpo_cli.envs.libero import STATE_KEY, LiberoEnv, TaskSpec, arena_mb, configure_libero, scene_mode
from grpo_cli.errors import EnvFailure

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
    """Loop of one env worker process: one env, commands over a pipe. It never imports torch (~470 MiB)."""
    import signal
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and closes us
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


def process_memory_mb(pid: int | str | None, field: str = "VmRSS") -> float:
    """A process's memory in MiB from /proc/PID/status (`VmRSS` now, `VmHWM` its peak; pid "self" for
    this one); NaN where unreadable (not Linux, or the process is gone)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return float("nan")
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{field}:")), None)
    return kib / 1024 if kib is not None else float("nan")


class ProcessEnvSlots:
    """One spawned worker process per slot (EGL contexts do not survive fork), stepped in parallel.

    The policy stays in the parent; each call sends every slot its command, then gathers the replies,
    so env stepping of all slots overlaps. Trajectories equal LocalEnvSlots' for the same slot count.
    """

    def __init__(self, size: int, image_size: int, images: bool = True, reply_timeout_s: float = 0, **options: Any):
        """reply_timeout_s > 0: a worker that sends no reply for that long (a GL deadlock, a stopped process)
        is killed and its call raises EnvFailure, which the trainers' env retries handle."""
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.size, self.reply_timeout_s = size, reply_timeout_s
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
            if self.reply_timeout_s and not self._conns[slot].poll(self.reply_timeout_s):
                self._procs[slot].kill()  # hung: it would hold the job until the scheduler kills it
                raise EnvFailure(f"env worker {slot} sent no reply in {self.reply_timeout_s:g} s (hung); killed it")
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
        return [process_memory_mb(proc.pid) for proc in self._procs]

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
                   stall_steps: int = 0, reply_timeout_s: float = 0) -> EnvSlots:
    """`processes=True`: one spawned worker per slot, stepped in parallel; else all in this process.

    privileged_state: append the goal objects' positions to the state (policies trained that way);
    progress_shaping, reach_shaping: the shaping weights of each trajectory's goal progress;
    reply_timeout_s: with processes, how long a worker may stay silent before it counts as hung (0: forever)."""
    configure_libero()  # missing assets, bad settings: one line here, not an env failure in every slot
    scene_mode(), arena_mb()
    options = {"privileged_state": privileged_state, "progress_shaping": progress_shaping,
               "reach_shaping": reach_shaping, "stall_steps": stall_steps}
    if processes:
        return ProcessEnvSlots(size, image_size, images, reply_timeout_s=reply_timeout_s, **options)
    return LocalEnvSlots(size, image_size, images, **options)
