"""Statistics for success rates."""

from __future__ import annotations

from scipy.stats import binomtest


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
