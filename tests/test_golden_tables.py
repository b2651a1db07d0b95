"""Every table of small demo runs equals the tables saved in tests/data/golden/ (a guard for restructurings).

`scripts/golden_tables.py` checks bit-identity on one machine, before and after a change. Here the
goldens were written on another machine, whose float kernels (thread counts, SIMD widths) round
differently, so floats are compared to float32 rounding: relative 1e-5 with a floor of that times the
column's largest value. That is ten times FLOAT32_REL, because these values are sums of thousands of
float32 terms, bootstrap percentiles of them and differences of two losses, whose error follows the size
of the terms, not of the result. Everything else (keys, counts, strings, dtypes) must be equal.
`NORMPROBE_WRITE_GOLDENS=1 pytest tests/test_golden_tables.py` rewrites the goldens after a change that
is meant to change numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import normprobe

from .reference import FLOAT32_REL, assert_float32_close

GOLDEN = Path(__file__).parent / "data" / "golden"
DOCS = [
    "The return statement leaves the current function call.",
    "A list is a mutable sequence, typically used to store collections of items.",
]
SMALL = dict(seq_len=12, batch_size=4, replicates=4, progress=False)
ALL_PROBES = ("norms", "updates", "linesearch", "massive")


def _tables(demo_adapter, case: str) -> dict[str, pd.DataFrame]:
    if case == "trace":
        return {"trace": normprobe.trace(demo_adapter, DOCS[0]).table}
    if case == "baselines":
        result = normprobe.run(demo_adapter, DOCS, ALL_PROBES, baselines=["shuffled", "no-bos"], **SMALL)
    else:
        result = normprobe.run(
            demo_adapter, DOCS[:1], ("updates", "linesearch"), readout="model", ablate=True, alphas=[0.0, 1.0, 2.0], **SMALL
        )
    tables = dict(result.tables)
    for kind, frames in result.baselines.items():
        tables.update({f"{kind}.{name}": frame for name, frame in frames.items()})
    tables["claims"] = result.claims
    return tables


def _assert_same(got: pd.DataFrame, want: pd.DataFrame, what: str) -> None:
    assert list(got.columns) == list(want.columns), what
    assert [str(t) for t in got.dtypes] == [str(t) for t in want.dtypes], what
    assert len(got) == len(want), what
    for col in want.columns:
        a, b = [_cells(v) for v in got[col]], [_cells(v) for v in want[col]]
        if want[col].dtype.kind == "f" or (len(b) and isinstance(b[0], list) and all(isinstance(x, float) for x in b[0])):
            assert_float32_close(np.array(a, dtype=float), np.array(b, dtype=float), rel=10 * FLOAT32_REL, what=f"{what}: {col}")
        else:
            assert a == b, f"{what}: {col}"


def _cells(value):
    """A cell as plain Python: a list cell comes back from parquet as an array."""
    return (
        [_cells(v) for v in value] if isinstance(value, (list, np.ndarray)) else value.item() if hasattr(value, "item") else value
    )


@pytest.mark.parametrize("case", ["baselines", "model-ablate", "trace"])
def test_tables_equal_the_goldens(demo_adapter, case):
    tables = _tables(demo_adapter, case)
    folder = GOLDEN / case
    if os.environ.get("NORMPROBE_WRITE_GOLDENS") == "1":
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.parquet"):
            old.unlink()
        for name, frame in tables.items():
            frame.to_parquet(folder / f"{name}.parquet")
    saved = {p.stem: p for p in folder.glob("*.parquet")}
    assert sorted(saved) == sorted(tables)
    for name, frame in tables.items():
        _assert_same(frame.reset_index(drop=True), pd.read_parquet(saved[name]).reset_index(drop=True), f"{case}/{name}")
