"""TokenTypeMoments against a plain loop over the values, in its sparse (CPU) and dense (CUDA) layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normprobe.stats import GroupedMoments
from normprobe.type_moments import TokenTypeMoments

N_SLOTS, N_TYPES = 3, 50


def _batches(seed: int, n_batches: int = 4):
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        n = int(rng.integers(1, 40))
        types = rng.integers(0, N_TYPES // 2, size=n) * 2  # even types only: half the vocabulary is never seen
        values = rng.normal(3.0, 1.0, size=(N_SLOTS, n)).astype(np.float32)
        values[rng.random(values.shape) < 0.05] = np.nan
        yield torch.from_numpy(types), torch.from_numpy(values)


def _by_loop(batches) -> dict[tuple[int, int], list[float]]:
    seen: dict[tuple[int, int], list[float]] = {}
    for types, values in batches:
        for slot in range(N_SLOTS):
            for i, t in enumerate(types.tolist()):
                value = float(values[slot, i])
                if np.isfinite(value):
                    seen.setdefault((slot, t), []).append(value)
    return seen


def _fed(batches, dense: bool) -> TokenTypeMoments:
    moments = TokenTypeMoments(N_SLOTS, N_TYPES, dense=dense)
    for types, values in batches:
        moments.add(types, values)
    return moments


def _assert_cells_equal_loop(moments: TokenTypeMoments, seen: dict) -> None:
    cells = moments.cells()
    keys = sorted(seen)
    assert list(zip(cells["slot"].tolist(), cells["type"].tolist())) == keys
    assert cells["count"].tolist() == [len(seen[k]) for k in keys]
    np.testing.assert_allclose(cells["mean"].numpy(), [np.mean(seen[k]) for k in keys], rtol=1e-12, atol=0)
    np.testing.assert_allclose(cells["std"].numpy(), [np.std(seen[k]) for k in keys], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dense", [False, True])
def test_cells_equal_a_plain_loop(dense):
    batches = list(_batches(0))
    moments = _fed(batches, dense)
    _assert_cells_equal_loop(moments, _by_loop(batches))
    if not dense:  # only the types seen hold a row
        assert moments.moments.n_groups < N_SLOTS * N_TYPES
        assert sorted(moments.state_dict()["types"].tolist()) == sorted({t for ts, _ in batches for t in ts.tolist()})


@pytest.mark.parametrize("dense_a, dense_b", [(False, False), (False, True), (True, False)])
def test_merge_equals_one_stream(dense_a, dense_b):
    first, second = list(_batches(1)), list(_batches(2))
    a, b = _fed(first, dense_a), _fed(second, dense_b)
    a.merge(b)
    _assert_cells_equal_loop(a, _by_loop(first + second))


def test_state_round_trip_and_the_dense_layout():
    batches = list(_batches(3))
    moments = _fed(batches, dense=False)
    restored = TokenTypeMoments(N_SLOTS, N_TYPES)
    restored.load_state_dict(moments.state_dict())
    _assert_cells_equal_loop(restored, _by_loop(batches))
    # a checkpoint of the dense layout, group = slot * n_types + type, as GroupedMoments wrote it
    dense = GroupedMoments(N_SLOTS * N_TYPES, track_extremes=False)
    for types, values in batches:
        dense.add((torch.arange(N_SLOTS)[:, None] * N_TYPES + types[None, :]).reshape(-1), values.reshape(-1))
    from_dense = TokenTypeMoments(N_SLOTS, N_TYPES)
    from_dense.load_state_dict(dense.state_dict())
    _assert_cells_equal_loop(from_dense, _by_loop(batches))
    assert from_dense.state_dict()["nonfinite"].sum() == sum(int(v.isnan().sum()) for _, v in batches)


def test_a_state_that_does_not_fit_is_refused():
    state = _fed(list(_batches(4)), dense=False).state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        TokenTypeMoments(N_SLOTS + 1, N_TYPES).load_state_dict(state)
    twice = {k: torch.cat([v, v]) for k, v in state.items()}
    with pytest.raises(ValueError, match="twice"):
        TokenTypeMoments(N_SLOTS, N_TYPES).load_state_dict(twice)
