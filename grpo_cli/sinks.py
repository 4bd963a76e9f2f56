"""Optional metric sinks beside metrics.jsonl (always written): TensorBoard and Weights & Biases.

Both are off by default (install them with `pip install grpo-vla[logging]`). W&B runs in offline mode
unless WANDB_MODE says otherwise, so it works on compute nodes without network; every (re)start of a run
writes its own offline piece under RUN/wandb/ with the run's one id, and `wandb sync RUN/wandb/offline-run-*`
uploads them into that one run (README, "Logging").
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


class Sinks:
    def __init__(self, run_dir: Path, config: dict[str, Any], tensorboard: bool, wandb: bool, resume: bool,
                 next_step: int = 1):
        """next_step: the first step this process logs. On resume TensorBoard purges what an earlier process
        logged from that step on (steps after the checkpoint, which are redone), so each step appears once."""
        self._tb = self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=next_step if resume else None)
        if wandb:
            import wandb as wb

            os.environ.setdefault("WANDB_MODE", "offline")
            run_id = "grpo-vla-" + hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]  # stable on resume
            self._wandb = wb.init(project=os.environ.get("WANDB_PROJECT", "grpo-vla"), dir=str(run_dir),
                                  name=run_dir.name, config=config, id=run_id,
                                  resume="allow" if resume else None)

    def log(self, metrics: dict[str, float]) -> None:
        step = int(metrics["step"])
        if self._tb is not None:
            for key, value in metrics.items():
                if key != "step":
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if k != "step"}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
