"""`trace --columns lens`: the readout's columns exactly as a full trace gives them, and nothing else computed."""

from __future__ import annotations

import numpy as np
import pytest

import normprobe
from normprobe import NormprobeError
from normprobe.tracing import EXTRA_COLUMNS, LENS_COLUMNS

TEXT = "The return statement leaves the current function call."


def test_lens_columns_equal_the_full_trace(tmp_path, demo_adapter):
    full = normprobe.trace(demo_adapter, TEXT, top_k=3)
    lens = normprobe.trace(demo_adapter, TEXT, top_k=3, columns="lens")
    assert list(lens.table.columns) == list(full.table.columns)
    for column in ("layer", "position", "token_id", "target_id", *LENS_COLUMNS):
        left, right = full.table[column], lens.table[column]
        if left.dtype == object:
            assert [list(a) for a in left] == [list(b) for b in right], column
        else:
            assert left.equals(right), column
    for column in EXTRA_COLUMNS:
        assert lens.table[column].isna().all(), column
        assert full.table[column].notna().any(), column
    assert lens.meta["columns"] == "lens" and full.meta["columns"] == "all"
    folder = lens.save(tmp_path / "t", plotlyjs="cdn")
    assert (folder / "trace.html").stat().st_size > 0
    np.testing.assert_array_equal(normprobe.tracing.Trace.load(folder).table["entropy"], lens.table["entropy"])


def test_bad_columns_is_one_line(demo_adapter):
    with pytest.raises(NormprobeError, match="--columns must be all or lens"):
        normprobe.trace(demo_adapter, TEXT, columns="norms")
