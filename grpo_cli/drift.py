"""Weight drift between a fine-tuned policy and its SFT reference (the seed's Table 2).

The seed reports "mean absolute percentage difference of parameter values" without a normalisation.
We define, over the N parameters (elements) of a set:

    drift_%     = 100 * mean_i |theta_i - ref_i| / max(|ref_i|, FLOOR)     (the seed's figure)
    l1_ratio_%  = 100 * sum_i |theta_i - ref_i| / sum_i |ref_i|            (magnitude-weighted)
    rel_l2      = ||theta - ref||_2 / ||ref||_2

FLOOR = 1e-3 guards parameters that are (near) zero in the reference, e.g. zero-initialised biases,
whose percentage change would otherwise be unbounded. Reported in total and per module (vision,
connector, text, expert, heads, other).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

FLOOR = 1e-3


def drift(params: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
          module_of: Callable[[str], str]) -> dict[str, dict[str, float]]:
    """{"total": {...}, "<module>": {...}} with drift_pct, l1_ratio_pct, rel_l2, numel per entry."""
    missing = set(reference) ^ set(params)
    if missing:
        raise ValueError(f"parameter names differ: {sorted(missing)[:5]}")
    acc: dict[str, list[float]] = {}
    for name, ref in reference.items():
        ref = ref.detach().double()
        delta = (params[name].detach().double() - ref).abs()
        parts = [float((delta / ref.abs().clamp(min=FLOOR)).sum()), float(delta.sum()), float(ref.abs().sum()),
                 float((delta**2).sum()), float((ref**2).sum()), ref.numel()]
        for key in ("total", module_of(name)):
            acc[key] = [a + b for a, b in zip(acc.get(key, [0.0] * 6), parts, strict=True)]
    return {key: {"drift_pct": 100 * pct / n, "l1_ratio_pct": 100 * l1 / max(ref_l1, 1e-30),
                  "rel_l2": (sq / max(ref_sq, 1e-30)) ** 0.5, "numel": int(n)}
            for key, (pct, l1, ref_l1, sq, ref_sq, n) in acc.items()}
