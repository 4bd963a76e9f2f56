"""Statistics for success rates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest, bootstrap, fisher_exact, ttest_1samp


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (scipy's); (0, 1) when n == 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n, which is
    where LIBERO per-task success often sits with 20 episodes.
    """
    if n == 0:
        return 0.0, 1.0
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def paired_test(policy: dict[tuple, bool], baseline: dict[tuple, bool]) -> dict[str, float] | None:
    """McNemar's exact test of two evals of the same episodes; None when the episodes differ.

    Episodes are keyed by (task_id, init_state, noise_seed): `grpo-vla eval` with one seed gives two
    policies the same start states and noise seeds, so each episode is a pair. Only the discordant pairs
    carry information: `gained` (baseline failed, policy succeeded) and `lost`; under "no change" each is
    a fair coin, so p is a two-sided binomial test of gained out of gained + lost. It also tells a real
    improvement (gains, few losses) from a reshuffle of outcomes (as many losses as gains).
    """
    if not policy or set(policy) != set(baseline):
        return None
    gained = sum(policy[k] and not baseline[k] for k in policy)
    lost = sum(baseline[k] and not policy[k] for k in policy)
    p = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    return {"gained": gained, "lost": lost, "p": float(p)}


def unit_comparison(baseline: Sequence[bool], policy: Sequence[bool]) -> dict[str, float]:
    """One unit (task x RL seed): the same held-out episodes under the SFT policy and under RL.

    Episode i of both lists is the same episode (init state and noise seed). Returns the change in
    points, Fisher's exact p of the two counts and McNemar's exact p of the pairs (`paired_test`).
    Episode-level tests are valid within one unit only; across units, see `across_units`.
    """
    if len(baseline) != len(policy) or not baseline:
        raise ValueError("a unit compares two evals of the same, non-empty list of episodes")
    n, b, p = len(baseline), int(sum(baseline)), int(sum(policy))
    pairs = paired_test(dict(enumerate(map(bool, policy))), dict(enumerate(map(bool, baseline))))
    assert pairs is not None
    return {"delta_points": 100 * (p - b) / n, "fisher_p": float(fisher_exact([[p, n - p], [b, n - b]])[1]),
            "gained": pairs["gained"], "lost": pairs["lost"], "mcnemar_p": pairs["p"]}


def across_units(deltas: Sequence[float], confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The change over units, each unit one replicate (the unit of replication is the run, not the episode).

    Mean change with Student's t interval and one-sample t-test over units, and a percentile bootstrap
    interval of the mean (10,000 resamples of units, seeded). Intervals need two units or more.
    """
    x = np.asarray(deltas, dtype=float)
    out: dict[str, Any] = {"n_units": len(x), "mean_delta_points": float(x.mean()) if len(x) else float("nan"),
                           "t_interval": None, "t_p": None, "bootstrap_interval": None}
    if len(x) >= 2 and np.ptp(x) > 0:
        test = ttest_1samp(x, 0.0)
        ci = test.confidence_interval(confidence)
        boot = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=10_000, method="percentile",
                         random_state=np.random.default_rng(seed)).confidence_interval
        out.update(t_interval=[float(ci.low), float(ci.high)], t_p=float(test.pvalue),
                   bootstrap_interval=[float(boot.low), float(boot.high)])
    return out
