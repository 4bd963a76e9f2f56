"""SmolVLA adapter on the offline tiny policy (real lerobot classes, generated SmolVLM directory)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from grpo_cli.errors import UserError
from grpo_cli.policies.smolvla import SmolVLAAdapter


def _obs(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"observation.images.image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
             "observation.images.image2": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
             "observation.state": rng.normal(size=8).astype(np.float32)} for _ in range(n)]


def _noise(ad: SmolVLAAdapter, n: int, seed: int) -> torch.Tensor:
    return ad.sample_noise(torch.Generator().manual_seed(seed), n)


def _lerobot_sample(ad: SmolVLAAdapter, batch, noise: torch.Tensor, k: int) -> torch.Tensor:
    images, masks = ad.policy.prepare_images(batch)
    state = ad.policy.prepare_state(batch)
    old = ad.model.config.num_steps
    ad.model.config.num_steps = k
    try:
        with torch.no_grad():
            return ad.model.sample_actions(images, masks, batch["observation.language.tokens"],
                                           batch["observation.language.attention_mask"], state, noise=noise.clone())
    finally:
        ad.model.config.num_steps = old


def test_tiny_is_a_real_smolvla(tiny: SmolVLAAdapter) -> None:
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    assert isinstance(tiny.policy, SmolVLAPolicy)
    assert (tiny.chunk_size, tiny.max_action_dim, tiny.action_dim) == (50, 32, 7)
    assert tiny.identity["source"] == "tiny:0" and len(tiny.identity["params_sha1"]) == 40
    assert SmolVLAAdapter.load("tiny:1").identity["params_sha1"] != tiny.identity["params_sha1"]


def test_random_smolvla_has_the_real_shapes() -> None:
    """`random-smolvla`: SmolVLA at its published size (~450 M parameters, SmolVLM2-500M backbone cut
    to 16 layers, 512 px), random weights, built offline -- what the GPU benchmark times."""
    from grpo_cli.policies.smolvla import parameter_groups

    real = SmolVLAAdapter.load("random-smolvla")
    vlm = real.model.vlm_with_expert.vlm
    assert 440e6 < sum(p.numel() for p in real.policy.parameters()) < 460e6
    assert vlm.config.text_config.hidden_size == 960 and len(vlm.model.text_model.layers) == 16
    assert vlm.config.vision_config.image_size == 512 and real.config.resize_imgs_with_padding == (512, 512)
    assert 90e6 < sum(p.numel() for p in parameter_groups(real.policy, train_backbone=False)["head"]) < 110e6
    assert real.identity["source"] == "random-smolvla:0"


@pytest.mark.parametrize("k", [1, 10, 100])
def test_chain_ends_in_lerobots_sample_actions(tiny: SmolVLAAdapter, k: int) -> None:
    batch = tiny.preprocess(_obs(2), ["put both the alphabet soup and the tomato sauce in the basket"] * 2)
    noise = _noise(tiny, 2, seed=k)
    chains = tiny.denoise(tiny.encode_prefix(batch), noise, [k, k])
    assert [c.shape for c in chains] == [(k + 1, 50, 32)] * 2
    torch.testing.assert_close(torch.stack([c[0] for c in chains]), noise, rtol=0, atol=0)
    expected = _lerobot_sample(tiny, batch, noise, k)
    torch.testing.assert_close(torch.stack([c[-1] for c in chains]), expected, rtol=0, atol=0)


def test_same_noise_same_chunk_different_noise_different_chunk(tiny: SmolVLAAdapter) -> None:
    batch = tiny.preprocess(_obs(1) * 3, ["open the drawer"] * 3)
    prefix = tiny.encode_prefix(batch)
    z = _noise(tiny, 1, seed=0)
    noise = torch.cat([z, z, _noise(tiny, 1, seed=1)])
    chains = tiny.denoise(prefix, noise, [10, 10, 10])
    actions = tiny.unnormalize(torch.stack([c[-1] for c in chains]))
    assert actions.shape == (3, 50, 7) and actions.dtype == np.float32
    np.testing.assert_array_equal(actions[0], actions[1])
    assert np.abs(actions[0] - actions[2]).max() > 1e-3


def test_mixed_tiers_in_one_batch_match_separate_runs(tiny: SmolVLAAdapter) -> None:
    batch = tiny.preprocess(_obs(3), ["pick up the book"] * 3)
    prefix = tiny.encode_prefix(batch)
    noise = _noise(tiny, 3, seed=5)
    mixed = tiny.denoise(prefix, noise, [1, 10, 8])
    for b, k in enumerate([1, 10, 8]):
        alone = tiny.denoise(prefix.select(torch.tensor([b])), noise[b:b + 1], [k])[0]
        assert mixed[b].shape == (k + 1, 50, 32)
        torch.testing.assert_close(mixed[b], alone, atol=1e-5, rtol=1e-5)


def test_saved_policy_is_relocatable(tiny: SmolVLAAdapter, tmp_path) -> None:
    tiny.save_pretrained(tmp_path / "a")
    shutil.move(tmp_path / "a", tmp_path / "b")
    for name in ("config.json", "policy_preprocessor.json"):
        assert str(tmp_path) not in (tmp_path / "b" / name).read_text()
        assert "/.cache/" not in (tmp_path / "b" / name).read_text()
    assert json.loads((tmp_path / "b" / "config.json").read_text())["vlm_model_name"] == "vlm"
    loaded = SmolVLAAdapter.load(str(tmp_path / "b"))
    assert loaded.identity["params_sha1"] == tiny.identity["params_sha1"]
    assert loaded.identity["lineage"]["source"] == "tiny:0"
    obs, noise = _obs(2), _noise(tiny, 2, seed=3)
    a = tiny.denoise(tiny.encode_prefix(tiny.preprocess(obs, ["x"] * 2)), noise, [10, 10])
    b = loaded.denoise(loaded.encode_prefix(loaded.preprocess(obs, ["x"] * 2)), noise, [10, 10])
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_unreachable_sources_are_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="--policy tiny"):
        SmolVLAAdapter.load("HuggingFaceVLA/definitely-not-cached")
    with pytest.raises(UserError, match="no config.json"):
        SmolVLAAdapter.load(str(tmp_path))
    with pytest.raises(UserError, match="neither a local directory nor a hub id"):
        SmolVLAAdapter.load("./missing/dir/x")
