"""The chunk value of `advantage_baseline = value` (grpo_cli/value.py)."""

from __future__ import annotations

import numpy as np

from grpo_cli.value import ChunkValue


def test_chunk_value_learns_a_state_dependent_outcome_and_forgets_old_steps() -> None:
    rng = np.random.default_rng(0)
    value = ChunkValue(steps=2, seed=0)
    for _ in range(3):  # e.g. "the object is lifted" (state dim 2 > 0) decides the reward
        states = rng.normal(size=(200, 14)).astype(np.float32)
        value.add(states, 2.0 * (states[:, 2] > 0))
    assert len(value.buffer) == 2 and not value.fitted
    value.fit()
    test = rng.normal(size=(400, 14)).astype(np.float32)
    predicted = value(test).numpy()
    lifted = test[:, 2] > 0.3
    dropped = test[:, 2] < -0.3
    assert predicted[lifted].mean() > 1.5 and predicted[dropped].mean() < 0.5
    assert np.isfinite(value.loss) and value.loss < 0.3
