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
