"""Writable per-user folders for what grpo-vla caches beside a possibly read-only install."""

from __future__ import annotations

import os
from pathlib import Path


def first_writable_folder(candidates: list[Path]) -> Path | None:
    """The first candidate folder that exists or can be made (mode 700) and is writable; None if none."""
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    return None
