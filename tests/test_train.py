"""GRPO training on the tiny policy: presets, updates, E5/E6 triggers, exact resume, drift."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grpo_cli.config import TrainConfig
from grpo_cli.drift import drift
from grpo_cli.errors import UserError
from grpo_cli.groups import Member, ReplayPool, SolvedInitStates, assemble_rewards, filtered_groups
from grpo_cli.policies.smolvla import module_of
from grpo_cli.presets import PRESETS, resolve
from grpo_cli.runs import checkpoints
from grpo_cli.train import Trainer, train

SMOKE = {"policy": "tiny", "tasks": "0", "max_steps": "10", "n_action_steps": "5", "image_size": "64",
         "num_envs": "1", "save_every": "1"}


def smoke(exp: str | None, **extra: str) -> TrainConfig:
    return resolve(exp, {**SMOKE, **extra})


def test_presets_follow_the_seed() -> None:
    e1, e2, e3, e4, e5, e6 = (resolve(e, {}) for e in ("e1", "e2", "e3", "e4", "e5", "e6"))
    assert e1.steps_per_member == [8, 9, 10] and e1.tier_weights == (0.1, 0.2, 0.7)
    assert (e1.lr_head, e1.lr_backbone) == (1e-3, 1e-4)
    assert e2.steps_per_member == [1] + [10] * 5 and e2.tier_weights[0] == 0.1 and e2.beta == 0
    assert e3.beta > 0 and e3.lr_head < e2.lr_head and e4.beta == 0 and e4.lr_head == e3.lr_head
    assert (e5.fallback_steps, e5.fallback_failure_reward) == (100, 0.05) and e6.replay_pool
    assert all(resolve(e, {}).likelihood == "ode" for e in PRESETS if e.startswith("e"))
    assert resolve("e5", {"likelihood": "sde"}).likelihood == "sde"
    assert resolve("recommended", {}).gae_lambda == 0.8 and e2.gae_lambda == 1.0  # the seed has no value baseline
    with pytest.raises(UserError, match="valid settings"):
        resolve("e2", {"bogus": "1"})
    with pytest.raises(UserError, match="tier_weights has 2 entries"):
        resolve("e2", {"tier_weights": "1,2"})
    with pytest.raises(UserError, match="loss_type must be one of bnpo, grpo"):
        resolve("e2", {"loss_type": "dapo"})
    with pytest.raises(UserError, match="likelihood must be one of ode, sde"):
        resolve("e2", {"likelihood": "noise"})
    # measured-negative experiments, removed (docs/NOTEBOOK.md, "Removed options"): unknown settings now
    for removed in ("noise_std", "step_weighting", "sde_window", "likelihood_positions",
                    "optimizer_steps_per_iteration", "success_bc_steps", "success_bc_batch_size",
                    "success_bc_epochs", "success_bc_buffer", "success_bc_demos", "success_bc_demo_fraction"):
        with pytest.raises(UserError, match=f"unknown setting '{removed}'"):
            resolve("recommended", {removed: "1"})


def _fake(success: bool, task_id: int = 0) -> SimpleNamespace:
    return SimpleNamespace(success=success, progress=float(success), length=10,
                           spec=SimpleNamespace(task=SimpleNamespace(task_id=task_id), init_state=0))


def test_e5_and_e6_trigger_exactly_on_all_fail_groups() -> None:
    rng = np.random.default_rng(0)
    groups = [[_fake(False)] * 6, [_fake(True)] + [_fake(False)] * 5, [_fake(False)] * 6]
    calls = []

    def fallback(g, first):
        calls.append(g)
        return _fake(g == 2)  # group 0's fallback fails, group 2's succeeds

    batch, counts = assemble_rewards(groups, resolve("e5", {}), fallback, ReplayPool(4), rng)
    assert calls == [0, 2]
    assert [m.reward for m in batch[0]] == [0.0] * 6 + [0.05]
    assert [m.reward for m in batch[1]] == [0.1] + [0.0] * 5  # Eq. 4: the 1-step slot is weighted 0.1
    assert batch[2][-1].reward == 1.0 and batch[2][-1].origin == "fallback"
    assert counts["fallback_failure"] == counts["fallback_success"] == 1 and counts["all_fail_groups"] == 2

    pool = ReplayPool(4)
    e6 = resolve("e6", {})
    batch, counts = assemble_rewards([[_fake(False)] * 6], e6, fallback, pool, rng)
    assert batch == [] and counts["skipped_groups"] == 1  # empty pool: the step has nothing to learn
    success = _fake(True)
    batch, counts = assemble_rewards([[success] + [_fake(False)] * 5, [_fake(False)] * 6], e6, fallback, pool, rng)
    assert counts["replay_injected"] == 1 and batch[1][-1].traj is success and batch[1][-1].reward == 1.0
    assert len(batch[0]) == 6  # a group with a natural success gets no injection


def test_beta_zero_loads_no_reference(tmp_path) -> None:
    t0 = Trainer(smoke("e4"), tmp_path)
    t3 = Trainer(smoke("e3"), tmp_path)
    try:
        assert t0.reference is None and t3.reference is not None
    finally:
        t0.close()
        t3.close()


def _members(tmp_path, likelihood: str) -> list[Member]:
    """Two trajectories sampled the way `likelihood` samples (SDE steps or the deterministic ODE)."""
    from grpo_cli.rollout import EpisodeSpec

    trainer = Trainer(smoke("e2", likelihood=likelihood, num_generations="2", denoise_tiers="2x4", tier_weights=""),
                      tmp_path)
    trajs = trainer._run([EpisodeSpec(trainer.tasks[0], 0, 4, seed, member=i) for i, seed in enumerate((11, 12))])
    trainer.close()
    return [Member(trajs[0], 1.0, advantage=1.0), Member(trajs[1], 0.0, advantage=-1.0)]


@pytest.mark.parametrize("likelihood", ["sde", "ode"])
def test_one_update_moves_exactly_the_trainable_parameters(tmp_path, likelihood: str) -> None:
    members = _members(tmp_path, likelihood)
    cfg = smoke("e2", likelihood=likelihood, num_generations="2", denoise_tiers="2x4", tier_weights="",
                train_backbone="false", minibatch_size="64", lr_head="1e-3")
    trainer = Trainer(cfg, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.adapter.policy.named_parameters()}
    stats = trainer._update(members, np.random.default_rng(0))
    trainer.close()
    assert stats["ratio/min"] == stats["ratio/max"] == 1.0  # first minibatch of the iteration: pi = pi_old
    after = dict(trainer.adapter.policy.named_parameters())
    trainable = set(trainer.names)
    assert trainable and all(n.startswith(("model.vlm_with_expert.lm_expert.", "model.state_proj",
                                           "model.action_")) for n in trainable)
    for name, value in after.items():
        if name not in trainable:
            assert torch.equal(value, before[name]), name
    if likelihood == "sde":
        assert stats["grad_norm/head"] > 1.0
        moved = [n for n in trainable if not torch.equal(after[n], before[n])]
        # state_proj feeds only the prefix, which the update does not differentiate with a frozen backbone
        assert set(moved) == {n for n in trainable if not n.startswith("model.state_proj")}
    else:
        # The seed's reading: the target is f_theta_old(z) recomputed in the scoring batch's shapes, so the
        # gradient is exactly zero and no optimizer step is taken: nothing moves.
        assert stats["grad_norm/head"] == 0.0 and stats["frac_minibatches_no_signal"] == 1.0
        assert all(torch.equal(after[n], before[n]) for n in trainable)


@pytest.mark.parametrize("likelihood, ratio_level, loss_type", [
    ("sde", "trajectory", "bnpo"), ("sde", "chunk", "bnpo"), ("sde", "step", "bnpo"), ("sde", "token", "bnpo"),
    ("sde", "token", "grpo"), ("sde", "step", "grpo"), ("fpo", "token", "bnpo")])
def test_update_raises_the_likelihood_of_positive_advantage_chains(tmp_path, likelihood: str, ratio_level: str,
                                                                   loss_type: str) -> None:
    """One update moves each chunk's log-density the way its advantage points. `sde` scores the K = 4
    sampled denoising steps; `fpo` rolls out with eval's deterministic sampler and scores 3 (time, noise)
    draws per chunk, the same draws every time, so its log-density is minus the flow-matching loss."""
    members = _members(tmp_path, likelihood)
    cfg = smoke("e2", likelihood=likelihood, fpo_samples="3", num_generations="2", denoise_tiers="2x4",
                tier_weights="", train_backbone="false", minibatch_size="64", lr_head="1e-4", ratio_level=ratio_level,
                loss_type=loss_type)
    trainer = Trainer(cfg, tmp_path)
    assert trainer.rollouts.options["sde_noise"] == (0.5 if likelihood == "sde" else 0.0)
    scored = trainer._score(trainer.adapter, [(members[0], 0)], grad=False)[0][0]  # (J, H, Dm)
    assert scored.shape[0] == (4 if likelihood == "sde" else 3)  # K = 4 denoising steps, or 3 draws
    assert (scored[..., :7] != 0).all() and scored[..., 7:].abs().sum() == 0  # real action dims only
    assert torch.equal(scored, trainer._score(trainer.adapter, [(members[0], 0)], grad=False)[0][0])

    def chain_logp() -> list[float]:
        with torch.no_grad():
            return [float(sum(lp.sum() for lp in trainer._score(trainer.adapter, [(m, c) for c in range(
                len(m.traj.chains))], grad=False)[0])) for m in members]

    before = chain_logp()
    stats = trainer._update(members, np.random.default_rng(0))
    after = chain_logp()
    trainer.close()
    assert stats["ratio/min"] == stats["ratio/max"] == 1.0
    assert after[0] > before[0] and after[1] < before[1]  # advantage +1 up, advantage -1 down


def test_every_preset_runs_end_to_end(tmp_path) -> None:
    for exp in PRESETS:
        extra = {"fallback_steps": "20"} if exp == "e5" else {}
        if exp == "e2":  # the optional sinks, offline
            extra = {"log_tensorboard": "true", "log_wandb": "true"}
        if exp == "recommended":  # its 2 groups of 16 cost 3 minutes in CI; 2 groups of 4 exercise the same code
            extra = {"num_generations": "4"}
        last = train(smoke(exp, steps="1", **extra), tmp_path / exp)
        assert last is not None and last.name == "step_000001.h5"
        metrics = [json.loads(line) for line in (tmp_path / exp / "metrics.jsonl").read_text().splitlines()]
        assert len(metrics) == 1 and {"frac_reward_zero_std", "reward_composition/fallback_failure",
                                       "time/rollout", "drift_pct", "SPS"} <= metrics[0].keys()
        if exp == "e5":
            assert metrics[0]["reward_composition/fallback_failure"] + metrics[0][
                "reward_composition/fallback_success"] == 1
        if exp == "e6":
            assert metrics[0]["reward_composition/skipped_groups"] == 1
        if exp == "e2":
            assert list((tmp_path / exp / "tensorboard").glob("events.out.tfevents.*"))
            assert list((tmp_path / exp / "wandb").glob("offline-run-*"))


def test_resume_is_exact(tmp_path) -> None:
    # E5's replay pool and fallback rewards, and the chunk value's buffer (fitted after step 1, used from step 2)
    cfg = smoke("e5", likelihood="sde", steps="4", num_generations="2", denoise_tiers="2x4", tier_weights="",
                fallback_steps="4", lr_head="1e-3", train_backbone="false", advantage_baseline="value")
    train(cfg, tmp_path / "straight")
    train(resolve(None, {**json.loads(cfg.to_json()), "steps": 2}), tmp_path / "split")
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg, tmp_path / "split")
    train(cfg, tmp_path / "split", resume=True)
    from grpo_cli.storage import read_checkpoint

    a = read_checkpoint(checkpoints(tmp_path / "straight")[-1])
    b = read_checkpoint(checkpoints(tmp_path / "split")[-1])
    assert a["step"] == b["step"] == 4
    for name in a["params"]:
        torch.testing.assert_close(a["params"][name], b["params"][name], rtol=0, atol=0)
    first = read_checkpoint(checkpoints(tmp_path / "straight")[0])
    moved = [n for n in a["params"] if not torch.equal(a["params"][n], first["params"][n])]
    assert moved  # the run did learn something between step 1 and 4, so equality is not vacuous
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    assert "value/explained_variance" in json.loads(lines[2])  # step 3, the first after the resume, used V
    assert len(b["value_buffer"]) == 4 and b["value_buffer"][0][0].ndim == 2  # steps 1-4 (value_buffer_steps 4)


def test_kill_9_loses_only_the_step_in_flight(tmp_path) -> None:
    """A trainer SIGKILLed mid-step, then resumed, ends bit-identical to an uninterrupted run, although
    no kept checkpoint (save_every) was ever written: the per-step `save_latest` one carries it."""
    import signal
    import subprocess
    import sys
    import time

    settings = {**json.loads(smoke("e5", likelihood="sde", steps="4", num_generations="2", denoise_tiers="2x4",
                                   tier_weights="", fallback_steps="4", lr_head="1e-3",
                                   train_backbone="false").to_json()), "save_every": 100}
    (tmp_path / "cfg.yaml").write_text(json.dumps(settings))
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "grpo_cli", "train", "--config", str(tmp_path / "cfg.yaml"),
                             "--run-dir", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not (run / "checkpoints" / "step_000002.h5").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "trainer died or hung before step 2"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # step 3 is in flight (its rollout takes seconds)
        proc.wait()
    finally:
        proc.kill()
    # step 1's is replaced once step 2's is in place: a kill between the rename and the removal (a race the
    # kill can win) leaves both, and the resume removes the stale one
    assert [p.name for p in checkpoints(run)] in (["step_000002.h5"], ["step_000001.h5", "step_000002.h5"])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "env_st')  # as if killed while appending step 3's line
    train(resolve(None, settings), run, resume=True)
    train(resolve(None, settings), tmp_path / "straight")
    from grpo_cli.storage import read_checkpoint

    a, b = (read_checkpoint(checkpoints(tmp_path / d)[-1]) for d in ("straight", "killed"))
    assert a["step"] == b["step"] == 4
    for name in a["params"]:
        torch.testing.assert_close(a["params"][name], b["params"][name], rtol=0, atol=0)
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert [p.name for p in checkpoints(run)] == ["step_000004.h5"]


def test_drift_definitions() -> None:
    ref = {"model.vlm_with_expert.lm_expert.w": torch.tensor([1.0, -2.0, 4.0]),
           "model.state_proj.b": torch.tensor([0.5, 0.5])}
    same = drift(ref, ref, module_of)
    assert same["total"]["drift_pct"] == 0 and same["total"]["rel_l2"] == 0
    scaled = {k: v * 1.01 for k, v in ref.items()}
    d = drift(scaled, ref, module_of)
    for key in ("total", "expert", "heads"):
        assert d[key]["drift_pct"] == pytest.approx(1.0) and d[key]["l1_ratio_pct"] == pytest.approx(1.0)
        assert d[key]["rel_l2"] == pytest.approx(0.01)
    assert d["expert"]["numel"] == 3 and d["heads"]["numel"] == 2
    zero = drift({"a": torch.tensor([1e-4])}, {"a": torch.tensor([0.0])}, module_of)
    assert zero["total"]["drift_pct"] == pytest.approx(10.0)  # |1e-4| / floor 1e-3


def test_group_filter_resamples_until_the_batch_is_full() -> None:
    """Degenerate groups are replaced by fresh ones, bounded by max_resample_tries; all rollouts count."""
    outcomes = iter([[False] * 4, [True] * 4, [True, False, False, False],  # round 1: one group kept
                     [False] * 4, [True, True, False, False],  # round 2: one more kept -> 2 of 3
                     [False, True, False, False]])  # round 3: fills the batch
    asked = []

    def rollout_groups(first: int, count: int) -> list:
        asked.append((first, count))
        return [[_fake(s) for s in next(outcomes)] for _ in range(count)]

    cfg = resolve(None, {**SMOKE, "tasks_per_step": "3", "num_generations": "4", "group_filter": "drop_degenerate",
                         "max_resample_tries": "2"})
    kept, rolled = filtered_groups(rollout_groups, cfg)
    assert asked == [(0, 3), (3, 2), (5, 1)]  # fresh group indices, only as many as were dropped
    assert len(kept) == 3 and len(rolled) == 6
    assert all(0 < sum(t.success for t in g) < 4 for g in kept)
    # The budget left bounds the extra rounds: round 1 costs 3 groups x 4 x 10 = 120 env steps, so
    # round 2 (2 groups, ~80) fits in 200 but not in 199, and round 3 (~40 more) not in 200.
    for room, rounds in ((199, [(0, 3)]), (200, [(0, 3), (3, 2)])):
        outcomes = iter([[False] * 4, [True] * 4, [True, False, False, False], [False] * 4, [True, True, False, False]])
        asked.clear()
        filtered_groups(rollout_groups, cfg, env_step_room=room)
        assert asked == rounds
    # Bounded: with no tries left the step goes on with what it has.
    outcomes = iter([[False] * 4] * 3)
    cfg = resolve(None, {**SMOKE, "tasks_per_step": "3", "num_generations": "4", "group_filter": "success_band",
                         "max_resample_tries": "0"})
    kept, rolled = filtered_groups(rollout_groups, cfg)
    assert kept == [] and len(rolled) == 3
    # No filter: one round, everything kept.
    outcomes = iter([[False] * 4] * 2)
    kept, rolled = filtered_groups(rollout_groups, resolve(None, {**SMOKE, "tasks_per_step": "2",
                                                                  "num_generations": "4"}))
    assert len(kept) == len(rolled) == 2


def test_solved_init_states_are_skipped_after_k_all_success_groups() -> None:
    tasks = [SimpleNamespace(task_id=3, num_init_states=4), SimpleNamespace(task_id=7, num_init_states=2)]
    # k = 0: exactly the draws of a run without the option (task, then init state, from the same rng).
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    off = SolvedInitStates(0)
    off.record(3, 0, True)
    for _ in range(20):
        task, init = off.draw(tasks, a)
        expected = tasks[int(b.integers(2))]
        assert (task.task_id, init) == (expected.task_id, int(b.integers(expected.num_init_states)))
    solved = SolvedInitStates(2)
    solved.record(3, 1, True)
    solved.record(3, 1, False)  # a failure resets the streak
    solved.record(3, 1, True)
    assert not solved.skipped(3, 1)
    solved.record(3, 1, True)
    solved.record(7, 0, True)
    solved.record(7, 0, True)
    assert solved.skipped(3, 1) and solved.skipped(7, 0) and solved.frac_skipped(tasks) == pytest.approx(2 / 6)
    rng = np.random.default_rng(0)
    drawn = {(t.task_id, i) for t, i in (solved.draw(tasks, rng) for _ in range(300))}
    assert drawn == {(3, 0), (3, 2), (3, 3), (7, 1)}
    solved.record(7, 1, True)
    solved.record(7, 1, True)  # task 7 has no init state left: only task 3's are drawn
    assert {t.task_id for t, _ in (solved.draw(tasks, rng) for _ in range(50))} == {3}
    for i in (0, 2, 3):
        solved.record(3, i, True)
        solved.record(3, i, True)
    # Every init state solved: all are drawn again rather than stalling the run.
    assert len({(t.task_id, i) for t, i in (solved.draw(tasks, rng) for _ in range(300))}) == 6


def test_skip_solved_counts_groups_and_survives_a_checkpoint(tmp_path, monkeypatch) -> None:
    run = Trainer._run

    def all_succeed(self, episodes):
        trajs = run(self, episodes)
        for t in trajs:
            t.success, t.progress = True, 1.0
        return trajs

    monkeypatch.setattr(Trainer, "_run", all_succeed)
    cfg = smoke("recommended", num_generations="2", max_resample_tries="1", skip_solved="1", tasks_per_step="2")
    trainer = Trainer(cfg, tmp_path)
    metrics = trainer.step()
    trainer.save()
    trainer.close()
    # Both rounds' groups (2 asked + 2 resampled, every one all-success) count, filtered or not.
    assert metrics["groups_rolled_out"] == 4
    solved = {k for k, v in trainer.solved.streaks.items() if v >= 1}
    assert metrics["frac_init_states_skipped"] == pytest.approx(len(solved) / 50) and solved
    resumed = Trainer(cfg, tmp_path)
    resumed.load(checkpoints(tmp_path)[-1])
    resumed.close()
    assert resumed.solved.streaks == trainer.solved.streaks
    rng = np.random.default_rng(1)
    assert not {f"0:{resumed.solved.draw(resumed.tasks, rng)[1]}" for _ in range(200)} & solved


def test_env_step_budget_stops_the_run(tmp_path) -> None:
    cfg = smoke("e2", num_generations="2", denoise_tiers="1x1,1x10", tier_weights="0.1,1", steps="50",
                env_step_budget="40")
    train(cfg, tmp_path / "run", log=lambda _: None)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Stops before a step that would overshoot: every total within budget, the next one past it.
    assert all(m["env_steps_total"] <= 40 for m in metrics) and len(metrics) >= 2
    assert metrics[-1]["env_steps_total"] + metrics[-1]["env_steps"] > 40
    assert checkpoints(tmp_path / "run")[-1].name == f"step_{len(metrics):06d}.h5"


def test_env_failures_are_retried_then_reported(tmp_path, monkeypatch) -> None:
    import grpo_cli.rollout as rollout_module
    from grpo_cli.errors import EnvFailure

    real, calls = rollout_module.run_episodes, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:  # the first rollout dies as if its worker process had been killed
            raise EnvFailure("env worker 0 died (exit code -9)")
        return real(*args, **kwargs)

    monkeypatch.setattr(rollout_module, "run_episodes", flaky)
    logs: list[str] = []
    train(smoke("e2", num_generations="2", denoise_tiers="1x1,1x10", tier_weights="0.1,1", steps="1"),
          tmp_path / "run", log=logs.append)
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert metrics["env_failures"] == 1 and any("restarting the envs (retry 1)" in m for m in logs)

    def broken(*args, **kwargs):
        raise EnvFailure("env step failed: MujocoException: unstable simulation")

    monkeypatch.setattr(rollout_module, "run_episodes", broken)
    with pytest.raises(UserError, match="envs failed 2 times, last: env step failed: MujocoException"):
        train(smoke("e2", num_generations="2", denoise_tiers="1x1,1x10", tier_weights="0.1,1", steps="1",
                    env_failure_retries="1"), tmp_path / "run2", log=logs.append)
    assert not list((tmp_path / "run2").glob("checkpoints/*.h5"))


def test_every_minibatch_is_one_optimizer_step(tmp_path, monkeypatch) -> None:
    counts = []
    real_step = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        counts.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    base = dict(likelihood="sde", steps="1", num_generations="2", denoise_tiers="2x4", tier_weights="",
                fallback_steps="4", lr_head="1e-3", train_backbone="false", minibatch_size="1", num_iterations="2")
    train(smoke("e5", **base), tmp_path / "per_minibatch", log=lambda _: None)
    # minibatch_size 1 chunk, two epochs: at least two minibatches an epoch, each one Adam step -- except a
    # minibatch whose gradient is exactly zero (every ratio clipped), which takes none (no signal, no step)
    metrics = json.loads((tmp_path / "per_minibatch" / "metrics.jsonl").read_text().splitlines()[0])
    minibatches = round(len(counts) / (1 - metrics["frac_minibatches_no_signal"]))
    assert minibatches > 2 and minibatches % 2 == 0 and counts and metrics["step_skipped"] == 0


def test_value_baseline_gives_each_chunk_its_own_advantage(tmp_path) -> None:
    members = _members(tmp_path, resolve("recommended", {}).likelihood)  # sampled as the preset samples
    assert all(len(m.traj.chains) == 2 for m in members)  # SMOKE: 10 steps, chunks of 5
    members[0].chunk_advantages, members[1].chunk_advantages = [1.0, -1.0], [-1.0, 1.0]
    cfg = smoke("recommended", num_generations="2", minibatch_size="64", lr_head="1e-4",
                advantage_baseline="value")
    trainer = Trainer(cfg, tmp_path)

    def chunk_logp() -> list[float]:
        with torch.no_grad():
            return [float(trainer._score(trainer.adapter, [(m, c)], grad=False)[0][0].sum())
                    for m in members for c in range(2)]

    before = chunk_logp()
    trainer._update(members, np.random.default_rng(0))
    after = chunk_logp()
    trainer.close()
    assert [a > b for a, b in zip(after, before, strict=True)] == [True, False, False, True]


def test_value_baseline_runs_from_the_second_step(tmp_path) -> None:
    # tiny-policy failures differ only in their reach: all-fail groups must train (success_band drops them)
    cfg = smoke("recommended", num_generations="2", steps="2", advantage_baseline="value",
                value_buffer_steps="2", reach_shaping="0.3", group_filter="drop_degenerate")
    train(cfg, tmp_path / "run")
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "value/explained_variance" not in metrics[0]  # nothing to fit before the first step: group baseline
    assert np.isfinite(metrics[1]["value/explained_variance"]) and metrics[1]["value/fit_loss"] >= 0
    with pytest.raises(UserError, match="advantage_baseline = value"):
        resolve("recommended", {"advantage_baseline": "value", "ratio_level": "trajectory"})
    with pytest.raises(UserError, match="advantage_baseline must be group or value"):
        resolve("recommended", {"advantage_baseline": "critic"})
    with pytest.raises(UserError, match="gae_lambda must be in"):
        resolve("recommended", {"gae_lambda": "1.5"})


@pytest.mark.parametrize("gae_lambda", [0.0, 1.0])
def test_value_baseline_uses_gae_lambda(tmp_path, gae_lambda: float) -> None:
    members = _members(tmp_path, "sde")  # two trajectories of two chunks, rewards 1 and 0
    cfg = smoke("recommended", num_generations="2", advantage_baseline="value", scale_rewards="none",
                gae_lambda=str(gae_lambda))
    trainer = Trainer(cfg, tmp_path)
    trainer.close()

    class RisingValue:  # V = 0.25 then 0.75 along every trajectory, already fitted
        fitted, loss = True, 0.0

        def __call__(self, states: np.ndarray) -> torch.Tensor:
            return torch.tensor([0.25, 0.75])[: len(states)]

        def add(self, states: np.ndarray, rewards: np.ndarray) -> None:
            pass

        def fit(self) -> None:
            pass

    trainer.value = RisingValue()
    trainer._value_advantages([members])
    expected = [[0.75, 0.25], [-0.25, -0.75]] if gae_lambda == 1.0 else [[0.5, 0.25], [0.5, -0.75]]
    assert [a for m in members for a in m.chunk_advantages] == pytest.approx([a for e in expected for a in e])


def test_e2_is_an_exact_zero_three_steps_with_nonzero_advantages_do_not_move_the_policy(tmp_path) -> None:
    """The seed's E2 (`ode` likelihood): the policy gradient at theta_old is zero by construction, so its
    updates must not move the policy through float noise (before: head gradient norms 32-50, ratios down
    to 0.87, 0.17% drift in three steps of this configuration)."""
    cfg = smoke("e2", reward="progress", progress_shaping="0.5", max_steps="20")
    trainer = Trainer(cfg, tmp_path)
    try:
        metrics = [trainer.step() for _ in range(3)]
    finally:
        trainer.close()
    assert any(m["step_skipped"] == 0.0 for m in metrics)  # graded rewards: non-zero advantages reached the update
    for m in metrics:
        if m["step_skipped"] == 0.0:
            assert m["ratio/min"] == m["ratio/max"] == 1.0 and m["clip_ratio/region_mean"] == 0.0
            assert m["grad_norm/head"] == 0.0 and m["frac_minibatches_no_signal"] == 1.0
            assert m["ode/rescore_max_abs"] < 1e-4  # the stored chunks differ from theta_old's only by rounding
        assert m["drift_pct"] < 0.01
    assert metrics[-1]["drift_pct"] == 0.0


def test_settings_are_declared_once_by_section_with_docstrings_and_documented() -> None:
    import dataclasses
    from pathlib import Path

    from grpo_cli.config import (
        STEER_SECTIONS,
        TRAIN_SECTIONS,
        EvalConfig,
        RolloutConfig,
        RuntimeSettings,
        SteerConfig,
        field_docs,
        settings_markdown,
    )

    declared: dict[str, list[str]] = {}
    for cls in dict.fromkeys([*TRAIN_SECTIONS, *STEER_SECTIONS]):  # train and steer share sections, not copies
        for name, doc in field_docs(cls).items():
            declared.setdefault(name, []).append(cls.__name__)
            assert doc, f"{cls.__name__}.{name} has no docstring"
    assert {n for n, owners in declared.items() if len(owners) > 1} == set()  # one home per setting
    assert {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(SteerConfig)} \
        == declared.keys()
    assert field_docs(SteerConfig).keys() == {"policy", "exp"}  # steer's own defaults: the policy, its label
    runtime = {f.name for f in dataclasses.fields(RuntimeSettings)}
    for cls in (RolloutConfig, EvalConfig):  # the runtime section is shared, not redeclared
        assert runtime <= {f.name for f in dataclasses.fields(cls)} and not runtime & field_docs(cls).keys()
        assert all(field_docs(cls).values()), cls
    assert field_docs(TrainConfig).keys() == {"policy"}  # train's only own default: never a random policy
    assert (Path(__file__).parents[1] / "docs" / "SETTINGS.md").read_text() == settings_markdown(), \
        "docs/SETTINGS.md is stale: regenerate it (see grpo_cli.config.settings_markdown)"

