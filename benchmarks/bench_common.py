"""Helpers the benchmark scripts share: task lists and results files (imported from this folder)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def task_ids(text: str) -> list[int]:
    """"3", "0-9" or "2,4,6" -> task ids."""
    if "," in text:
        return [int(t) for t in text.split(",")]
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    """A results file written whole or not at all (temp file, then rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, out)
    return out
