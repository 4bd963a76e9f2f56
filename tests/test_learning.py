"""What makes RL learn: goal progress, the scripted expert, demos -> sft, and a `recommended` run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from grpo_cli.envs.libero import PRIVILEGED_STATE_DIM, LiberoEnv, task_spec
from grpo_cli.errors import UserError
from grpo_cli.expert import (
    GoalExpert,
    chord,
    clear_grasp,
    grasp_offset,
    hand_hits,
    narrowest_grasp,
    plan_subgoals,
    run_expert,
    with_drawers_opened,
)
from grpo_cli.storage import read_demos, write_demos


def _place(env: LiberoEnv, name: str, xyz: np.ndarray) -> None:
    """Teleport a free-jointed object (keeping its orientation) and recompute positions."""
    joint = env.raw_env.objects_dict[name].joints[-1]
    qpos = np.array(env.sim.data.get_joint_qpos(joint))
    qpos[:3] = xyz
    env.sim.data.set_joint_qpos(joint, qpos)
    env.sim.forward()


@pytest.fixture(scope="module")
def object_env():
    env = LiberoEnv(task_spec("libero_object", 0), image_size=64, images=True, privileged_state=True)
    yield env
    env.close()


def test_goal_progress_and_privileged_state(object_env) -> None:
    env = object_env
    obs = env.reset(0)
    target, region = env.goal[0][1], env.goal[0][2]
    assert obs["observation.state"].shape == (PRIVILEGED_STATE_DIM,)
    np.testing.assert_allclose(obs["observation.state"][8:11], env.position(target), atol=1e-6)
    np.testing.assert_allclose(obs["observation.state"][11:], env.position(region), atol=1e-6)
    assert env.progress() == 0.0 and env.progress(shaping=0.5) == 0.0
    start = env.position(target)
    halfway = (start + env.position(region)) / 2
    _place(env, target, halfway)
    assert env.progress() == 0.0  # the predicate does not hold yet
    assert 0.15 < env.progress(shaping=0.5) < 0.35  # half the distance closed: about 0.5 * 0.5
    _place(env, target, env.position(region))
    assert env.goal_flags() == [True] and env.progress() == 1.0 and env.progress(shaping=0.5) == 1.0


def test_reach_shaping_ranks_missed_grasps_by_the_closest_approach(object_env) -> None:
    """A missed grasp leaves the object in place: only the gripper's closest approach tells near misses apart."""
    env = object_env
    env.reset(1)
    target = env.goal[0][1]
    far = env.progress(reach=0.3)
    assert env.progress() == 0.0 and 0.0 <= far < 0.05  # the gripper starts tens of cm away
    above = env.position(target) + np.array([0.0, 0.0, 0.06])
    for _ in range(60):  # OSC delta actions toward a point 6 cm above the object, gripper open
        eef = env.raw_env._observables["robot0_eef_pos"].obs
        env.step(np.r_[np.clip((above - eef) / 0.05, -0.5, 0.5), 0, 0, 0, -1], render=False)
    near = env.progress(reach=0.3)
    assert env.target_displacement() < 0.01  # the object was not touched
    assert near > far + 0.1 and env.progress(shaping=0.5) == 0.0  # object-to-basket shaping sees nothing
    for _ in range(20):  # back up: the closest approach is what counts
        env.step(np.array([0, 0, 0.5, 0, 0, 0, -1]), render=False)
    assert env.progress(reach=0.3) == pytest.approx(near)
    assert near < 0.3  # a near miss never earns a satisfied predicate's credit


def test_reach_shaping_ignores_fixture_goals_and_is_bounded() -> None:
    from grpo_cli.presets import resolve

    env = LiberoEnv(task_spec("libero_goal", 7), image_size=64, images=False)  # turn on the stove
    try:
        env.reset(0)
        assert env.progress(reach=0.3) == env.progress() == 0.0
    finally:
        env.close()
    with pytest.raises(UserError, match="progress_shaping \\+ reach_shaping must be < 1"):
        resolve(None, {"progress_shaping": "0.5", "reach_shaping": "0.5"})


def test_progress_ignores_predicates_true_at_the_start() -> None:
    """LIBERO-10 task 8 starts with the stove on: that predicate earns nothing."""
    env = LiberoEnv(task_spec("libero_10", 8), image_size=64, images=False)
    try:
        env.reset(0)
        flags = env.goal_flags()
        assert any(flags) and not all(flags)
        assert env.progress() == 0.0
    finally:
        env.close()


def test_scripted_expert_solves_most_init_states() -> None:
    # No cameras: the expert reads privileged state, and rendering costs ~30 s an episode here
    # (demo images: test_demo_files_use_libero_layout and the demos CLI test).
    env = LiberoEnv(task_spec("libero_object", 0), image_size=64, images=False, privileged_state=True)
    try:
        demos = [run_expert(env, i, noise_std=0.1, seed=0) for i in range(3)]
    finally:
        env.close()
    assert sum(d.success for d in demos) >= 2
    assert all(d.length < 280 for d in demos if d.success)


def test_demos_cli_covers_another_task_of_the_family(tmp_path) -> None:
    """`grpo-vla demos` on LIBERO-Object task 7 (another object): the expert is not tuned to task 0.
    One episode: rendering makes each ~30 s here (all ten tasks: docs/NOTEBOOK.md, 48/50)."""
    import subprocess
    import sys

    out = tmp_path / "demos.h5"
    proc = subprocess.run([sys.executable, "-m", "grpo_cli", "demos", "--tasks", "7", "--init-states", "0",
                           "--image-size", "32", "--workers", "1", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "expert success by task: 7: 1/1" in proc.stdout and "expert success 1/1" in proc.stdout
    demos = read_demos(out, privileged_state=True)
    assert [d["task_id"] for d in demos] == [7] and demos[0]["success"]
    assert demos[0]["language"] == task_spec("libero_object", 7).language != task_spec("libero_object", 0).language
    bad = subprocess.run([sys.executable, "-m", "grpo_cli", "demos", "--init-states", "70", "--out",
                          str(tmp_path / "bad.h5")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: bad --init-states")
    assert not (tmp_path / "bad.h5").exists()


def test_expert_names_the_task_whose_goal_it_cannot_carry_out() -> None:
    env = LiberoEnv(task_spec("libero_10", 9), image_size=64, images=False)  # the mug in, then the door shut
    try:
        env.reset(0)
        with pytest.raises(UserError, match=r"cannot carry out 'close microwave_1' of task 9 \(KITCHEN_SCENE6.*\): "
                                            r"it closes drawers \(slide joints\) only"):
            GoalExpert(env)  # refused before the episode starts, not after the mug is in
    finally:
        env.close()


def test_subgoals_follow_an_order_that_can_be_carried_out() -> None:
    """Turning on first, placements in the file's order, closing last; what already holds is left out."""
    task3 = [("close", "white_cabinet_1_bottom_region"), ("in", "akita_black_bowl_1", "white_cabinet_1_bottom_region")]
    assert plan_subgoals(task3, [False, False]) == task3[::-1]  # the bowl goes in before the drawer closes
    task8 = [("on", "moka_pot_1", "flat_stove_1_cook_region"), ("on", "moka_pot_2", "flat_stove_1_cook_region"),
             ("turnon", "flat_stove_1")]
    assert plan_subgoals(task8, [False, False, True]) == task8[:2]  # the stove is on at reset
    task2 = [("turnon", "flat_stove_1"), ("on", "moka_pot_1", "flat_stove_1_cook_region")]
    assert plan_subgoals(task2[::-1], [False, False]) == task2
    assert plan_subgoals(task8, [True, False, True]) == [task8[1]]
    drawer = "white_cabinet_1_bottom_region"  # a placement into a drawer is preceded by opening it fully
    assert with_drawers_opened(task3[::-1], {drawer}) == [("open", drawer), *task3[::-1]]
    assert with_drawers_opened(task8[:2], {drawer}) == task8[:2]


def test_grasp_offset_moves_the_hand_off_a_tall_neighbour() -> None:
    box_lo, box_hi = np.array([0.0, 0.0, 0.0]), np.array([0.08, 0.04, 0.02])  # 8 cm long along x
    assert grasp_offset(box_lo, box_hi, 0.01, []) == 0.0
    low = (np.array([0.09, -0.05, 0.0]), np.array([0.15, 0.09, 0.005]))  # below the hand: no matter
    assert grasp_offset(box_lo, box_hi, 0.01, [low]) == 0.0
    tall = (np.array([0.07, -0.05, 0.0]), np.array([0.15, 0.09, 0.15]))  # a carton just past the +x end
    dx = grasp_offset(box_lo, box_hi, 0.01, [tall])
    assert -0.025 <= dx < 0  # away from it, and no further than 1.5 cm short of the box's end


def box_points(lo: tuple[float, float], hi: tuple[float, float]) -> np.ndarray:
    grid = np.stack(np.meshgrid(np.linspace(lo[0], hi[0], 15), np.linspace(lo[1], hi[1], 15)), -1)
    return grid.reshape(-1, 2)


def test_narrowest_grasp_passes_a_handle_and_a_spout() -> None:
    """A moka pot seen from above: a 7 x 6.6 cm body, a handle and a spout sticking out along y. Straight, the
    fingers (closing along y) would close on 14.7 cm; turned 90 degrees, on the body's 7 cm."""
    pot = np.concatenate([box_points((-0.035, -0.033), (0.035, 0.033)), box_points((-0.006, -0.089), (0.006, -0.033)),
                          box_points((-0.008, 0.033), (0.008, 0.058))])
    assert chord(pot, np.zeros(2), 0.0)[0] == pytest.approx(0.147)
    yaw, middle, width = narrowest_grasp(pot, pot.mean(0))
    assert abs(yaw) == pytest.approx(np.pi / 2) and width == pytest.approx(0.07)
    assert abs(middle[1]) < 0.0125  # on the body's middle line, whatever the handle does to the points' mean


def test_a_grasp_turns_its_palm_off_a_carton() -> None:
    """A flat box 8 x 4.3 cm long in x, a carton 13 cm tall beside its +y side, under the straight grasp's
    palm (21 cm across the fingers): `clear_grasp` turns and slides the hand to a grasp that misses it,
    the fingers still closing across the box."""
    lo, hi = np.array([0.0, 0.0, 0.0]), np.array([0.08, 0.043, 0.018])
    carton = (np.array([-0.01, 0.06, 0.0]), np.array([0.045, 0.11, 0.13]))
    grasp_z = 0.009
    centre = (lo[:2] + hi[:2]) / 2
    low = (carton[0], carton[1] * [1, 1, 0] + [0, 0, 0.03])  # 3 cm: below the palm, not below the open fingers
    assert hand_hits(centre, grasp_z, 0.0, [carton]) > hand_hits(centre, grasp_z, 0.0, [low]) > 0
    yaw, grip = clear_grasp(box_points(lo[:2], hi[:2]), lo, hi, grasp_z, [carton])
    assert hand_hits(grip, grasp_z, yaw, [carton]) == 0 and yaw != 0.0
    assert chord(box_points(lo[:2], hi[:2]), grip, yaw)[0] < 0.07


@pytest.mark.parametrize(("task", "episodes"), [(7, 2), (5, 1), (2, 1), (3, 1)],
                         ids=["two_objects_in_basket", "book_in_caddy", "stove_knob_then_pot", "bowl_in_drawer_shut"])
def test_expert_carries_out_libero10_placements(task: int, episodes: int) -> None:
    """LIBERO-10 task 7 (alphabet soup and cream cheese into the basket): two sub-goals read from the BDDL
    goal, one after the other, on a table 43 cm higher than LIBERO-Object's. Task 5 (the book into the
    caddy's back compartment): the hand turns to hold the diagonal book across its spine, then turns it
    edgewise over the narrow compartment and steers it in by where it is. Task 2 (an articulated task): the
    hand grips the stove's knob and turns it past its "on" angle, then sets the moka pot on the stove. Task 3
    (articulated): the ajar drawer pushed fully open from inside, the bowl lowered into the 5 mm where it
    passes both the drawer's front wall and the handles above, the drawer pushed shut with the hand tilted."""
    env = LiberoEnv(task_spec("libero_10", task), image_size=64, images=False, privileged_state=True)
    try:
        demos = [run_expert(env, i, noise_std=0.1, seed=0) for i in range(episodes)]
    finally:
        env.close()
    assert all(d.success for d in demos) and all(d.length < 520 for d in demos)


@pytest.fixture(scope="module")
def demo_file(object_env, tmp_path_factory):
    demos = [run_expert(object_env, i, noise_std=0.1, seed=1, max_steps=60) for i in range(2)]
    for d in demos:
        d.success = True  # truncated demos: enough to fit, and `sft` keeps only successful ones
    path = tmp_path_factory.mktemp("demos") / "demos.h5"
    write_demos(path, demos, {0: object_env.spec}, "{}", {})
    return path


def test_demo_files_use_libero_layout(demo_file) -> None:
    with h5py.File(demo_file) as f:
        g = f["data/demo_0"]
        assert {"agentview_rgb", "eye_in_hand_rgb", "ee_states", "gripper_states", "privileged"} <= set(g["obs"])
        assert g["actions"].shape == (60, 7) and g["obs/agentview_rgb"].shape == (60, 64, 64, 3)
        assert json.loads(f["data"].attrs["problem_info"])["language_instruction"].startswith("pick up")
    demos = read_demos(demo_file, privileged_state=True)
    assert demos[0]["state"].shape == (60, PRIVILEGED_STATE_DIM)
    with pytest.raises(UserError, match="no such file"):
        read_demos(demo_file.with_name("missing.h5"), privileged_state=False)


def test_sft_lowers_the_flow_matching_loss_and_recommended_runs(demo_file, tmp_path) -> None:
    from grpo_cli.policies.smolvla import SmolVLAAdapter
    from grpo_cli.presets import resolve
    from grpo_cli.sft import SFTConfig, sft
    from grpo_cli.train import train

    summary = sft(SFTConfig(demos=(str(demo_file),), privileged_state=True, steps=60, batch_size=16, lr=3e-4,
                            warmup_steps=5, log_every=20), tmp_path / "sft", log=lambda _: None)
    assert summary["loss_after"] < 0.8 * summary["loss_before"]
    adapter = SmolVLAAdapter.load(str(tmp_path / "sft"))
    assert adapter.privileged_state and adapter.identity["lineage"]["kind"] == "sft"
    with pytest.raises(UserError, match="already exists"):
        sft(SFTConfig(demos=(str(demo_file),), privileged_state=True, steps=1), tmp_path / "sft")

    cfg = resolve("recommended", {"policy": str(tmp_path / "sft"), "suite": "libero_object", "tasks": "0",
                                  "num_generations": "3", "tasks_per_step": "1", "max_steps": "20",
                                  "n_action_steps": "10", "image_size": "64", "num_envs": "1", "steps": "1",
                                  "denoise_tiers": "2", "progress_shaping": "0.5"})
    train(cfg, tmp_path / "run", log=lambda _: None)
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["groups_rolled_out"] >= 1 and 0.0 <= metrics["progress"] <= 2.0
    assert "frac_groups_filtered" in metrics



def test_sft_refuses_demos_of_different_scenes(demo_file, tmp_path) -> None:
    from grpo_cli.sft import SFTConfig, sft

    lowpoly = tmp_path / "lowpoly.h5"
    shutil.copy(demo_file, lowpoly)
    with h5py.File(lowpoly, "r+") as f:  # the same demos, as `GRPO_VLA_SCENE=lowpoly grpo-vla demos` records them
        f["data"].attrs["env_args"] = json.dumps({"scene": "lowpoly"})
    assert read_demos(lowpoly, privileged_state=True)[0]["scene"] == "lowpoly"
    assert read_demos(demo_file, privileged_state=True)[0]["scene"] == "libero"  # unrecorded: LIBERO's images
    with pytest.raises(UserError, match="rendered in different scenes"):
        sft(SFTConfig(demos=(str(demo_file), str(lowpoly)), privileged_state=True, steps=1), tmp_path / "sft")
    assert not (tmp_path / "sft").exists()


def test_stall_rule_ends_only_episodes_whose_goal_object_never_moved() -> None:
    from grpo_cli.envs.slots import EnvWorker

    task = task_spec("libero_object", 0)
    worker = EnvWorker(64, images=False, privileged_state=True, stall_steps=5)
    try:
        worker.reset(task, 0)
        assert worker.run_chunk(np.zeros((3, 7)), 100)[-1] is False  # 3 steps: too early to tell
        assert worker.run_chunk(np.zeros((3, 7)), 100)[-1] is True  # 6 steps, the soup has not moved
        worker.reset(task, 0)
        env = worker.env
        target = env.goal[0][1]
        _place(env, target, env.position(target) + np.array([0.06, 0.0, 0.0]))  # pushed 6 cm along the table
        assert worker.run_chunk(np.zeros((6, 7)), 100)[-1] is False
        assert env.target_displacement() > 0.03
    finally:
        worker.close()
    off = EnvWorker(64, images=False, privileged_state=True)
    try:
        off.reset(task, 0)
        assert off.run_chunk(np.zeros((10, 7)), 100)[-1] is False  # stall_steps 0: never
    finally:
        off.close()
    stove = EnvWorker(64, images=False, stall_steps=5)  # LIBERO-Goal "turn on the stove": a fixture goal
    try:
        stove.reset(task_spec("libero_goal", 7), 0)
        assert stove.env.goal[0][1] in stove.env.raw_env.fixtures_dict
        assert stove.run_chunk(np.zeros((10, 7)), 100)[-1] is False  # the stall rule never fires
    finally:
        stove.close()


def learning_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """Run benchmarks/learning/NAME with args from the repository root; output captured."""
    root = Path(__file__).parents[1]
    return subprocess.run([sys.executable, str(root / "benchmarks" / "learning" / name), *args],
                          capture_output=True, text=True, cwd=root)


@pytest.mark.parametrize("method", ["recommended", "steer"])
def test_heldout_pipeline_records_each_unit_and_skips_finished_ones(tmp_path, method: str) -> None:
    """benchmarks/learning/heldout.py --quick: demos and RL on training init states, evals on held-out ones,
    one unit written to the results file as it finishes; a second run finds it and runs nothing. The method
    is the arm: GRPO's `recommended` (train) or `steer` (the noise actor, evaluated as a steered policy)."""
    results = tmp_path / "heldout.json"
    args = ["--quick", "--method", method, "--tasks", "0", "--rl-seeds", "0", "--e2-seeds", "", "--out",
            str(tmp_path / "out"), "--results", str(results)]
    first = learning_script("heldout.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads(results.read_text())
    (unit,) = data["units"]
    assert unit["train_init_states"] == [0, 1] and unit["eval_init_states"] == [30]
    assert [k[0] for k in unit["sft"]["episode_keys"]] == [30, 30]  # held-out init state only
    assert unit[method]["episode_keys"] == unit["sft"]["episode_keys"]  # the same episodes, paired
    assert unit[method]["env_steps"] > 0 and "summary" in data and data["commit"] and data["preset"] == method
    assert 0 <= unit["sft"]["init_states_any_success"] <= 1
    config = json.loads((tmp_path / "out" / "task0" / f"run_{method}_seed0" / "config.json").read_text())
    assert config["init_states"] == [0, 1] and config["exp"] == method
    if method == "steer":
        from grpo_cli.storage import read_eval

        policy = read_eval(tmp_path / "out" / "task0" / "eval_steer_seed0.h5")["policy"]
        assert policy["kind"] == "steered" and "gradient_updates" in unit["steer"]
    second = learning_script("heldout.py", *args)
    assert second.returncode == 0 and "[task 0] every arm recorded" in second.stdout, second.stderr[-2000:]
    older = tmp_path / "v1.json"  # a file of an earlier preset version (written before files had versions)
    older.write_text(json.dumps({"units": [{"task": 0, "rl_seed": 0}]}))
    mixed = learning_script("heldout.py", *args[:-1], str(older))
    assert mixed.returncode != 0 and "Traceback" not in mixed.stderr
    assert ("version 1" if method == "recommended" else "measures recommended, not steer") in mixed.stderr


def test_heldout_merge_joins_two_pipelines_and_refuses_mismatched_parts(tmp_path) -> None:
    """--merge: units of two pipelines' files sorted into one, the across-units summary recomputed
    over all of them; parts of another commit, a unit twice, or a task's SFT eval differing are refused."""
    def unit(task: int, seed: int, sft: list[int], rl: list[int]) -> dict:
        return {"task": task, "rl_seed": seed, "sft": {"successes": sum(sft), "episodes": len(sft), "outcomes": sft},
                "recommended": {"successes": sum(rl), "episodes": len(rl), "outcomes": rl}}

    def part(name: str, units: list[dict], commit: str = "abc") -> str:
        path = tmp_path / name
        path.write_text(json.dumps({"preset": "recommended", "version": 3, "protocol": {"suite": "libero_object"},
                                    "commit": commit, "command": f"python heldout.py --results {name}",
                                    "units": units}))
        return str(path)

    sft = [1, 0, 1, 0, 0, 0]
    a = part("a.json", [unit(8, 1, sft, [1, 1, 1, 0, 1, 0]), unit(2, 0, sft, [0, 0, 1, 0, 0, 0])])
    b = part("b.json", [unit(6, 0, sft, [1, 1, 1, 1, 0, 0]), {"task": 6, "rl_seed": 1}])  # a placeholder
    out = tmp_path / "merged.json"
    merged = learning_script("heldout.py", "--merge", a, b, "--results", str(out))
    assert merged.returncode == 0, merged.stderr[-2000:]
    data = json.loads(out.read_text())
    assert [(u["task"], u["rl_seed"]) for u in data["units"]] == [(2, 0), (6, 0), (8, 1)]
    assert data["merged_from"] == [a, b] and data["commit"] == "abc" and "--merge" in data["command"]
    assert data["part_commands"] == {a: "python heldout.py --results a.json", b: "python heldout.py --results b.json"}
    summary = data["summary"]["recommended"]
    assert summary["n_units"] == 3
    assert summary["mean_delta_points"] == pytest.approx(100 * (2 - 1 + 2) / 6 / 3)  # Δ +2, -1, +2 of 6
    for bad, words in [(part("c.json", [unit(4, 0, sft, sft)], commit="other"), "differ in commit"),
                       (part("d.json", [unit(8, 1, sft, sft)]), "task 8 RL seed 1 is in both"),
                       (part("e.json", [unit(2, 1, [0] * 6, sft)]), "SFT evals of the parts differ")]:
        refused = learning_script("heldout.py", "--merge", a, bad, "--results", str(tmp_path / "x.json"))
        assert refused.returncode != 0 and words in refused.stderr and "Traceback" not in refused.stderr
        assert not (tmp_path / "x.json").exists()


def test_diagnose_ranks_the_training_trend_against_the_held_out_change(tmp_path) -> None:
    """benchmarks/learning/diagnose.py: per unit the held-out change and the training-success trend in
    points; Spearman's rho per file as scipy gives it; units still running are left out."""
    from scipy.stats import spearmanr

    trends, deltas = [0.1, -0.2, 0.05, 0.3], [5, -10, 8, 12]
    units = [{"task": t, "rl_seed": 0, "sft": {"successes": 50},
              "recommended": {"successes": 50 + d, "episodes": 100, "training_success_first_half": 0.4,
                              "training_success_second_half": 0.4 + tr, "drift_pct": 1.0 + t}}
             for t, (tr, d) in enumerate(zip(trends, deltas, strict=True))] + [{"task": 9, "rl_seed": 0}]
    (tmp_path / "v.json").write_text(json.dumps({"units": units}))
    out = tmp_path / "diag.json"
    done = learning_script("diagnose.py", f"v={tmp_path / 'v.json'}", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    f = json.loads(out.read_text())["per_file"]["v"]
    assert f["n_units"] == 4 and [u["heldout_delta_points"] for u in f["units"]] == deltas
    assert f["units"][1]["training_trend_points"] == pytest.approx(-20)
    assert f["spearman_training_trend_points"]["rho"] == pytest.approx(spearmanr(trends, deltas)[0])
    bad = learning_script("diagnose.py", f"v={tmp_path / 'missing.json'}")
    assert bad.returncode != 0 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("split", ["train", "inner"])
def test_tuning_script_sees_only_task_0s_training_init_states(tmp_path, split: str) -> None:
    """benchmarks/learning/tune.py --quick: every episode it rolls out or scores is task 0 on a training
    init state (quick: 0 and 1); with --split inner, SFT and RL fit on the first part (0) and the eval
    scores only the rest (1). The candidate's overrides reach the run; the arm is recorded with its paired
    outcomes and a second run of the same candidate runs nothing."""
    results = tmp_path / "tuning.json"
    args = ["--quick", "--split", split, "--name", "cand", "--rl-seeds", "0", "--set", "lr_head=3e-5",
            "--out", str(tmp_path / "out"), "--results", str(results)]
    first = learning_script("tune.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads(results.read_text())
    (arm,) = data["arms"]
    fit, scored = ([0, 1], [0, 1]) if split == "train" else ([0], [1])
    assert data["tune_init_states"] == [0, 1] and arm["name"] == "cand" and arm["overrides"] == {"lr_head": "3e-5"}
    assert (data["fit_init_states"], data["eval_init_states"]) == (fit, scored)
    assert len(arm["outcomes"]) == len(data["sft"]["outcomes"]) == 4
    assert {k[0] for k in arm["episode_keys"]} == set(scored)  # scored on these init states only
    assert arm["gained"] - arm["lost"] == arm["successes"] - data["sft"]["successes"]
    config = json.loads((tmp_path / "out" / "task0" / "run_cand_seed0" / "config.json").read_text())
    assert config["init_states"] == fit and config["tasks"] == [0] and config["lr_head"] == 3e-5
    with h5py.File(tmp_path / "out" / "task0" / "demos.h5") as f:  # SFT's data: the fit init states only
        assert sorted({int(f["data"][d].attrs["init_state"]) for d in f["data"]}) == fit
    second = learning_script("tune.py", *args)
    assert second.returncode == 0 and "recorded already" in second.stdout, second.stderr[-2000:]
    other = learning_script("tune.py", *[a if a != split else {"train": "inner", "inner": "train"}[split]
                                         for a in args])
    assert other.returncode != 0 and "another protocol" in other.stderr and "Traceback" not in other.stderr
    bad = learning_script("tune.py", "--name", "x", "--set", "lr_head")
    assert bad.returncode != 0 and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.timeout(1800)  # ~7 minutes alone: 13 processes each build a LIBERO-10 scene
def test_libero10_pipeline_runs_the_array_and_records_each_arm(tmp_path) -> None:
    """benchmarks/learning/libero10.py --quick: LIBERO-10 demos -> SFT -> its eval -> E1-E6 as one array ->
    their evals -> the report beside the seed's counts, each arm written to the results file with its
    per-episode outcomes (paired with SFT's), E-signatures and the seed's numbers; a second run records nothing
    new. The E-runs wait for a committed preregistration entry (not needed by --quick)."""
    results = tmp_path / "libero10.json"
    args = ["--quick", "--out", str(tmp_path / "out"), "--results", str(results)]
    first = learning_script("libero10.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads(results.read_text())
    arms = [f"e{i}" for i in range(1, 7)]
    assert list(data["arms"]) == ["sft", *arms] and data["commit"] and data["protocol"]["tasks"] == [5]
    for arm in arms:
        value = data["arms"][arm]
        assert value["episode_keys"] == data["arms"]["sft"]["episode_keys"] == [[5, 30, value["episode_keys"][0][2]]]
        assert value["seed"]["label"] == arm.upper() and value["seed"]["tasks"]["5"][1] == 20  # the seed's Table 1
        assert value["train_steps"] >= 1 and {"clip_ratio_mean", "kl_max", "reward_composition"} <= set(value)
        config = json.loads((tmp_path / "out" / "array" / arm / "config.json").read_text())
        assert config["exp"] == arm and config["init_states"] == [0] and config["env_step_budget"] == 40
    assert data["arms"]["sft"]["seed"]["label"] == "Base" and data["arms"]["sft"]["scene"] == "lean"
    assert (tmp_path / "out" / "report" / "report.md").exists()
    second = learning_script("libero10.py", *args)
    assert second.returncode == 0 and all(f"[{a}] recorded" in second.stdout for a in arms), second.stderr[-2000:]
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "learning"))
    import libero10

    assert libero10.preregistered("steer") and not libero10.preregistered("no such entry, anywhere")
