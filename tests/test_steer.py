"""`grpo-vla steer`: the noise actor's action is the chunk's noise, the VLA never moves, resume is exact."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from grpo_cli.envs.libero import STATE_KEY
from grpo_cli.envs.slots import make_env_slots
from grpo_cli.episodes import EpisodeSpec, episode_seed
from grpo_cli.errors import UserError
from grpo_cli.policies.noise_actor import ActorSpec, NoiseActor, noise_action, sac_policy, steered_noise
from grpo_cli.policies.smolvla import SmolVLAAdapter, params_digest
from grpo_cli.rollout import run_episodes
from grpo_cli.runs import checkpoints
from grpo_cli.steer import chunk_rewards, chunk_transitions, resolve_steer, steer
from grpo_cli.storage import read_checkpoint

CLI = [sys.executable, "-m", "grpo_cli"]
TINY = {"policy": "tiny", "suite": "libero_object", "tasks": "0", "init_states": "0,1,2", "max_steps": "10",
        "n_action_steps": "5", "image_size": "64", "num_envs": "1", "save_every": "100", "warmup_env_steps": "10",
        "utd": "2", "batch_size": "8", "hidden_sizes": "16,16", "steer_positions": "5"}


def random_actor(adapter: SmolVLAAdapter, seed: int = 3, positions: int = 5, bound: float = 1.0) -> NoiseActor:
    spec = ActorSpec(adapter.state_dim, adapter.chunk_size, adapter.action_dim, positions, bound, "state+time",
                     (16, 16))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = sac_policy(spec)
    return NoiseActor(spec, policy.actor, "{}", {"source": "test"})


def one_episode(adapter: SmolVLAAdapter, task0, seed: int = 11):
    slots = make_env_slots(1, 64)
    try:
        spec = EpisodeSpec(task0, 0, 10, episode_seed(seed, "eval", 0, 0))
        return run_episodes(adapter, slots, [spec], max_steps=15, n_action_steps=5)[0]
    finally:
        slots.close()


def test_the_steered_action_is_the_noise_the_frozen_policy_denoises(task0) -> None:
    """The env's action is the noise: the executed chunk is the frozen policy's own sampler applied to
    the actor's noise, the noise block is the actor's bounded sample, the rest as the rule says."""
    adapter = SmolVLAAdapter.load("tiny")
    adapter.noise_actor = random_actor(adapter)
    traj = one_episode(adapter, task0)
    P, Da = 5, adapter.action_dim
    # the episode's own stream: its N(0, I) draw first, then the actor's Gaussian draws
    gen = torch.Generator().manual_seed(traj.spec.noise_seed)
    base = adapter.sample_noise(gen)[0]
    noise = torch.from_numpy(traj.noise[0])
    assert not torch.equal(noise, base)  # the actor moved it
    assert torch.equal(noise[:, Da:], base[:, Da:])  # lerobot's padded dims keep the episode's draw
    assert noise[:, :Da].abs().max() <= 1.0  # bounded by noise_bound
    assert torch.equal(noise[P:, :Da], noise[P - 1:P, :Da].expand(noise.shape[0] - P, Da))  # later rows repeat
    obs = {STATE_KEY: traj.query_states[0], **{k: v[0] for k, v in traj.query_images.items()}}
    expected = adapter.noise_actor.steer(base[None], traj.query_states[0][None], [0.0], [gen])
    torch.testing.assert_close(noise, expected[0], rtol=0, atol=0)  # a = bound * tanh(mu + sigma * eps)
    prefix = adapter.encode_prefix(adapter.preprocess([obs], [task0.language]))
    chain = adapter.denoise(prefix, noise[None], [10])[0]
    torch.testing.assert_close(chain, torch.from_numpy(traj.chains[0]), rtol=0, atol=0)
    np.testing.assert_array_equal(np.stack(traj.actions[:5]), adapter.unnormalize(chain[-1][None])[0, :5])
    # what SAC stores as the action is that block, in its [-1, 1] scale
    np.testing.assert_array_equal(noise_action(traj.noise[0], P, Da, 1.0), noise[:P, :Da].reshape(-1).numpy())


def test_steered_noise_and_rewards_follow_their_rules() -> None:
    settings = {"steer_positions": 0, "noise_bound": 1.0, "actor_inputs": "state", "hidden_sizes": (8,)}
    assert ActorSpec.of({**settings, "n_action_steps": None}, 8, 50, 7, policy_action_steps=50).positions == 50
    assert ActorSpec.of({**settings, "n_action_steps": 10}, 8, 50, 7, policy_action_steps=50).positions == 10
    assert ActorSpec.of({**settings, "steer_positions": 4}, 8, 50, 7, policy_action_steps=50).act_dim == 28
    base = torch.zeros(2, 6, 4)
    out = steered_noise(base, torch.arange(12.0).view(2, 6), positions=2, action_dim=3)
    assert out[0, :, :3].tolist() == [[0, 1, 2], [3, 4, 5], [3, 4, 5], [3, 4, 5], [3, 4, 5], [3, 4, 5]]
    assert out[..., 3].abs().sum() == 0 and base.abs().sum() == 0  # padding untouched, input not modified
    from grpo_cli.episodes import Trajectory

    traj = Trajectory(EpisodeSpec(None, 0, 10, 1), chains=[0, 0, 0], chunk_progress=[0.0, 0.5, 1.0], success=True)
    assert chunk_rewards(traj, "success").tolist() == [-1, -1, 0]
    assert chunk_rewards(traj, "progress").tolist() == [-1, -0.5, 0.5]
    traj.success = False
    assert chunk_rewards(traj, "success").tolist() == [-1, -1, -1]


def test_a_timed_out_episode_bootstraps_and_a_success_ends(task0) -> None:
    from grpo_cli.episodes import Trajectory

    spec = ActorSpec(3, 4, 2, 2, 1.0, "state+time", (8,))
    traj = Trajectory(EpisodeSpec(task0, 0, 10, 1), chains=[0, 0], query_steps=[0, 5],
                      query_states=[np.zeros(3), np.ones(3)], noise=[np.full((4, 3), 0.5), np.full((4, 3), -2.0)],
                      actions=[np.zeros(7)] * 8, chunk_progress=[0.0, 0.0], final_state=np.full(3, 2.0))
    t = chunk_transitions(traj, spec, limit=10, kind="success")
    assert t["observations"].tolist() == [[0, 0, 0, 0.0], [1, 1, 1, 0.5]]
    np.testing.assert_array_equal(t["next_observations"], np.float32([[1, 1, 1, 0.5], [2, 2, 2, 0.8]]))  # reached
    assert t["dones"].tolist() == [0, 0] and t["rewards"].tolist() == [-1, -1]
    assert t["actions"].tolist() == [[0.5] * 4, [-2.0] * 4]  # warm-up noise stays unclipped
    traj.success = True
    assert chunk_transitions(traj, spec, limit=10, kind="success")["dones"].tolist() == [0, 1]


def test_a_steer_run_keeps_every_vla_parameter_and_changes_eval_only_through_its_actor(tmp_path, task0) -> None:
    cfg = resolve_steer({**TINY, "steps": "3"})
    last = steer(cfg, tmp_path / "run")
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["steering"] for m in metrics] == [0.0, 1.0, 1.0]  # warm-up (SFT noise), then the actor
    assert metrics[-1]["gradient_updates"] == 2 * sum(m["chunks"] for m in metrics) > 0
    assert all(m["drift_pct"] == 0.0 for m in metrics)
    tiny = SmolVLAAdapter.load("tiny")
    steered = SmolVLAAdapter.load(str(last))  # a steer checkpoint is a policy: the frozen VLA + its actor
    assert params_digest(steered.policy) == params_digest(tiny.policy) == steered.identity["params_sha1"]
    assert steered.identity["kind"] == "steered" and steered.identity["actor"]["step"] == 3
    ckpt = read_checkpoint(last)
    assert [k for k in ckpt["params"] if k.startswith("actor.")] and ckpt["extra"]["algorithm"] == "steer"
    assert ckpt["arrays"]["replay/actions"].shape == (sum(m["chunks"] for m in metrics), 1, 5 * 7)
    drift = subprocess.run([*CLI, "drift", str(last), "--json"], capture_output=True, text=True)
    assert drift.returncode == 0 and json.loads(drift.stdout)["total"]["drift_pct"] == 0.0, drift.stderr
    export = subprocess.run([*CLI, "export", str(last), "--out", str(tmp_path / "exported")], capture_output=True,
                            text=True)
    assert export.returncode == 0 and (tmp_path / "exported" / "noise_actor.h5").is_file(), export.stderr
    bundled = SmolVLAAdapter.load(str(tmp_path / "exported"))  # the frozen policy and its actor, both
    assert bundled.noise_actor.digest() == steered.noise_actor.digest()
    assert params_digest(bundled.policy) == params_digest(tiny.policy)
    a, b = one_episode(steered, task0), one_episode(tiny, task0)
    assert not np.array_equal(a.noise[0], b.noise[0])  # the actor changes the episode...
    steered.noise_actor = None
    c = one_episode(steered, task0)  # ...and nothing else does: without it, the SFT episode bit for bit
    for x, y in zip(c.actions, b.actions, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill_9", "sigterm"])
def test_steer_resumes_after_kill_9_bit_exact(tmp_path, sig) -> None:
    """A steer run SIGKILLed (or SIGTERMed: the same, the process ends at once) after its second step, then
    resumed, ends equal to an uninterrupted run: SAC's networks, optimizers, entropy coefficient and replay
    buffer, bit for bit; its env worker processes do not outlive it."""
    import psutil

    settings = {**json.loads(resolve_steer({**TINY, "steps": "4"}).to_json())}
    run = tmp_path / "killed"
    (tmp_path / "cfg.yaml").write_text(json.dumps({**settings, "parallel_envs": True}))  # an env worker process
    proc = subprocess.Popen([*CLI, "steer", "--config", str(tmp_path / "cfg.yaml"), "--run-dir", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not (run / "checkpoints" / "step_000002.h5").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "steer died or hung before step 2"
            time.sleep(0.05)
        workers = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(sig)
        proc.wait()
    finally:
        proc.kill()
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"{len(alive)} worker process(es) outlived the trainer"
    assert checkpoints(run)[-1].name in ("step_000002.h5", "step_000003.h5")
    resumed = subprocess.run([*CLI, "steer", "--resume", "--run-dir", str(run)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step_00000" in resumed.stderr
    steer(resolve_steer(settings), tmp_path / "straight")  # in-process envs: the same episodes as a worker's
    a, b = (read_checkpoint(checkpoints(tmp_path / d)[-1]) for d in ("straight", "killed"))
    assert a["step"] == b["step"] == 4 and a["extra"] == b["extra"]
    for name in a["params"]:
        torch.testing.assert_close(a["params"][name], b["params"][name], rtol=0, atol=0)
    for name in a["arrays"]:
        np.testing.assert_array_equal(a["arrays"][name], b["arrays"][name])
    for opt in ("actor", "critic", "ent_coef"):
        for idx, state in a["optimizers"][opt]["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(value, b["optimizers"][opt]["state"][idx][key], rtol=0, atol=0)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4] and lines[-1]["gradient_updates"] > 0


BAD_SETTINGS = [("actor_inputs", "pixels", "actor_inputs must be one of"),
                ("actor_averaging", "1.5", "actor_averaging must be in"),
                ("actor_learning_rate", "0", "actor_learning_rate must be > 0"),
                ("noise_bound", "0", "noise_bound must be > 0"),
                ("utd", "0", "utd must be >= 1"),
                ("steer_reward", "dense", "steer_reward must be one of"),
                ("lr_head", "1e-4", "unknown setting 'lr_head'"),
                ("hidden_sizes", "", "hidden_sizes must be one or more positive layer widths")]


def test_a_bad_steer_setting_is_one_line(tmp_path) -> None:
    """Each bad setting is refused with its own message before anything runs; through the CLI that is one
    line on stderr, exit 2, and no run directory."""
    from grpo_cli.steer import SteerTrainer

    for key, value, message in BAD_SETTINGS:
        with pytest.raises(UserError, match=message):
            resolve_steer({**TINY, key: value})
    with pytest.raises(UserError, match="exceeds the policy's chunk size 50"):  # known once the policy loads
        SteerTrainer(resolve_steer({**TINY, "steer_positions": "60"}), tmp_path / "never")
    for setting in ("actor_inputs=pixels", "steer_positions=60"):
        proc = subprocess.run([*CLI, "steer", *(a for k, v in TINY.items() for a in ("--set", f"{k}={v}")),
                               "--set", setting, "--run-dir", str(tmp_path / "r")], capture_output=True, text=True)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        assert not (tmp_path / "r" / "config.json").exists()


def test_steer_array_over_tasks_and_seeds_is_planned_as_one_run_each(tmp_path) -> None:
    sets = [a for k, v in {**TINY, "tasks": "0,2"}.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.run([*CLI, "steer", *sets, "--per-task", "--seeds", "0,1", "--run-dir", str(tmp_path / "arr"),
                           "--dry-run"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert {Path(d).name: (c["tasks"], c["seed"]) for d, c in plan.items()} == {
        "task0_seed0": ([0], 0), "task0_seed1": ([0], 1), "task2_seed0": ([2], 0), "task2_seed1": ([2], 1)}


def test_actor_rate_and_averaging_act_as_set_and_resume_bit_exact(tmp_path) -> None:
    """actor_learning_rate is the actor's Adam rate (the critics keep learning_rate); with actor_averaging b
    the acting actor moves b of the way to SAC's after each step's updates, is what a checkpoint's policy
    steers with, and a resume from a checkpoint continues it bit for bit."""
    from grpo_cli.steer import SteerTrainer

    cfg = resolve_steer({**TINY, "actor_learning_rate": "1e-5", "actor_averaging": "0.25"})
    straight = SteerTrainer(cfg, tmp_path / "a")
    try:
        metrics = []
        for _ in range(4):
            before = {k: v.clone() for k, v in straight.acting.state_dict().items()}
            metrics.append(straight.step())
            trained = straight.sac.actor.state_dict()
            for name, value in straight.acting.state_dict().items():
                torch.testing.assert_close(value, before[name].lerp(trained[name], 0.25), rtol=0, atol=0)
        assert metrics[0]["steering"] == 0.0 and metrics[-1]["steering"] == 1.0  # warm-up, then the actor acts
        assert all(m["updates"] > 0 and m["actor_change"] > 0 for m in metrics)
        assert [g["lr"] for g in straight.sac.actor.optimizer.param_groups] == [1e-5]
        assert [g["lr"] for g in straight.sac.critic.optimizer.param_groups] == [cfg.learning_rate]
        last = straight.save()
    finally:
        straight.close()
    shapes = (straight.adapter.state_dim, straight.adapter.chunk_size, straight.adapter.action_dim, 5)
    steered = NoiseActor.load(last, *shapes)  # the acting (averaged) actor, not SAC's own
    assert steered.digest() != NoiseActor(steered.spec, straight.sac.actor, "{}", {}).digest()
    assert steered.digest() == NoiseActor(steered.spec, straight.acting, "{}", {}).digest()

    first = SteerTrainer(cfg, tmp_path / "b")
    try:
        for _ in range(2):
            first.step()
        middle = first.save()
    finally:
        first.close()
    resumed = SteerTrainer(cfg, tmp_path / "b")
    try:
        resumed.load(middle)
        for _ in range(2):
            resumed.step()
        for name, value in straight.acting.state_dict().items():
            torch.testing.assert_close(resumed.acting.state_dict()[name], value, rtol=0, atol=0)
        for name, value in straight.sac.policy.state_dict().items():
            torch.testing.assert_close(resumed.sac.policy.state_dict()[name], value, rtol=0, atol=0)
    finally:
        resumed.close()
    plain = SteerTrainer(resolve_steer({**TINY, "actor_averaging": "0"}), tmp_path / "c")
    try:
        with pytest.raises(UserError, match="another actor_averaging setting"):
            plain.load(middle)
    finally:
        plain.close()
