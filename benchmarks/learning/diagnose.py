"""Does what a run does on its *training* init states foretell its held-out result?

    python benchmarks/learning/diagnose.py v1=docs/results/heldout.json v2=docs/results/heldout_v2.json \
        v3=docs/results/heldout_v3.json [--out docs/results/heldout_diagnostics.json]

Per `recommended` unit of each held-out results file: the held-out change against its SFT policy
(points), the change in training-rollout success from the first half of the run's steps to the second
(points; seen during training, on training init states only) and the head drift. Per file and over all
files: Spearman's rank correlation of the training trend, and of the drift, with the held-out change.
Exploratory: it reads finished results and changes no method.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout import code_commit, write_json  # noqa: E402


def unit_rows(data: dict[str, Any], arm: str = "recommended") -> list[dict[str, Any]]:
    rows = []
    for u in data["units"]:
        if "sft" not in u or arm not in u:
            continue
        r = u[arm]
        trend = r["training_success_second_half"] - r["training_success_first_half"]
        rows.append({"task": u["task"], "rl_seed": u["rl_seed"],
                     "heldout_delta_points": 100 * (r["successes"] - u["sft"]["successes"]) / r["episodes"],
                     "training_trend_points": 100 * trend,
                     "drift_pct": r["drift_pct"]})
    return rows


def correlations(rows: list[dict[str, Any]]) -> dict[str, Any]:
    delta = [r["heldout_delta_points"] for r in rows]
    out: dict[str, Any] = {"n_units": len(rows)}
    for name in ("training_trend_points", "drift_pct"):
        rho, p = spearmanr([r[name] for r in rows], delta) if len(rows) > 2 else (float("nan"), float("nan"))
        out[f"spearman_{name}"] = {"rho": float(rho), "p": float(p)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", metavar="LABEL=PATH", help="held-out results files")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    files: dict[str, list[dict[str, Any]]] = {}
    for item in args.inputs:
        label, _, path = item.rpartition("=")
        try:
            files[label or path] = unit_rows(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError) as err:
            sys.exit(f"cannot read held-out results {path}: {err}")
    result = {"per_file": {k: {"units": v, **correlations(v)} for k, v in files.items()},
              "all": correlations([r for v in files.values() for r in v]),
              "command": "python " + " ".join(sys.argv), "commit": code_commit()}
    for label, f in [*result["per_file"].items(), ("all", result["all"])]:
        t, d = f["spearman_training_trend_points"], f["spearman_drift_pct"]
        print(f"{label}: {f['n_units']} units; Spearman with the held-out change: training trend "
              f"{t['rho']:+.2f} (p {t['p']:.2g}), drift {d['rho']:+.2f} (p {d['p']:.2g})")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
