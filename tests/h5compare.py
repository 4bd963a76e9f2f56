"""Every dataset and attribute of two HDF5 files, compared (tests import this helper)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

VOLATILE_ATTRS = ("created",)  # the write time


def _contents(path: Path) -> tuple[dict[str, np.ndarray], dict[tuple[str, str], str]]:
    datasets: dict[str, np.ndarray] = {}
    attrs: dict[tuple[str, str], str] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            datasets[name] = obj[()]
        attrs.update({(name, k): str(v) for k, v in obj.attrs.items()})

    with h5py.File(path) as f:
        f.visititems(visit)
        attrs.update({("/", k): str(v) for k, v in f.attrs.items()})
    return datasets, attrs


def assert_same_h5(a: Path, b: Path, skip_attrs: tuple[str, ...] = VOLATILE_ATTRS) -> int:
    """Assert that a and b hold the same datasets, bit for bit, and the same attributes except `skip_attrs`;
    returns the number of datasets compared."""
    data_a, attrs_a = _contents(a)
    data_b, attrs_b = _contents(b)
    assert sorted(data_a) == sorted(data_b)
    differ = [name for name in data_a if data_a[name].shape != data_b[name].shape
              or data_a[name].dtype != data_b[name].dtype or not np.array_equal(data_a[name], data_b[name])]
    assert not differ, f"{len(differ)} of {len(data_a)} datasets differ, e.g. {differ[:5]}"
    keep = {k: v for k, v in attrs_a.items() if k[1] not in skip_attrs}
    assert keep == {k: v for k, v in attrs_b.items() if k[1] not in skip_attrs}
    return len(data_a)
