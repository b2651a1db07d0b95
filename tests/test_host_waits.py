"""The GPU paths that keep each batch from waiting on the host give the CPU paths' statistics.

GroupedMoments and ReplicateSums add over every group on a GPU (no torch.unique, no boolean selection,
no bool() of a device tensor); here both paths run on the CPU, on the same values, with non-finite ones.
"""

from __future__ import annotations

import torch

from normprobe.batching import Window, collate
from normprobe.stats import GroupedMoments, ReplicateSums


def _values(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 40, (n,), generator=gen) * 3  # most groups untouched
    values = torch.randn(n, generator=gen, dtype=torch.float64) * 5 + 2
    values[::17] = float("nan")
    values[5::23] = float("inf")
    values[7::29] = float("-inf")
    return groups, values


def test_grouped_moments_on_every_group_equal_the_touched_groups_path():
    by_unique, dense = GroupedMoments(130), GroupedMoments(130)
    for seed in (0, 1):  # the second batch meets groups that already hold values
        groups, values = _values(400, seed)
        by_unique.add(groups, values)
        dense._add_on_gpu(groups, values)
    for field in ("count", "total", "m2", "nonfinite", "minimum", "maximum"):
        assert torch.equal(getattr(dense, field), getattr(by_unique, field)), field
    assert by_unique.nonfinite.sum() > 0 and (by_unique.count == 0).sum() > 0


def test_replicate_sums_on_every_group_equal_the_touched_groups_path():
    gen = torch.Generator().manual_seed(2)
    by_unique, dense = ReplicateSums(130, 16), ReplicateSums(130, 16)
    for seed in (0, 1):
        groups, values = _values(400, seed)
        windows = torch.randint(0, 6, (400,), generator=gen)
        weights = torch.poisson(torch.ones(6, 16), generator=gen).double()
        by_unique.add(groups, values, windows, weights)
        dense._add_on_gpu(groups, values, windows, weights)
    # matrix products of other shapes may sum in another order: equal to float64 rounding
    torch.testing.assert_close(dense.total, by_unique.total, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(dense.weight, by_unique.weight, rtol=1e-13, atol=1e-12)
    assert (by_unique.weight > 0).any() and (by_unique.weight == 0).any()


def test_batch_counts_its_tokens_on_the_host():
    batch = collate([Window(0, [5, 6, 7]), Window(1, [8]), Window(2, [9, 9, 9, 9, 9])], 0, "cpu")
    assert batch.lengths == [3, 1, 5] and batch.n_tokens == int(batch.mask.sum()) == 9


def test_selection_through_host_indices_equals_boolean_selection():
    batch = collate([Window(0, [5, 6, 7]), Window(1, [8]), Window(2, [9, 9, 9, 9, 9])], 0, "cpu")
    values = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    later = batch.mask & (batch.positions > 0)
    for x in (values, batch.tokens, batch.positions):
        assert torch.equal(batch.real(x), x[batch.mask]) and torch.equal(batch.later(x), x[later])
    batch.real_index = batch.later_index = None  # a batch made by hand: the boolean selection itself
    assert torch.equal(batch.real(values), values[batch.mask]) and torch.equal(batch.later(values), values[later])
