"""Handing back a mapped checkpoint's pages: values never change, only unmodified file pages go."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from normprobe.logit_readout import Readout
from normprobe.residency import file_mapping_of, release_file_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/pagemap and madvise are Linux's")
PAGE = 4096


def _mapped(path, values: np.ndarray) -> torch.Tensor:
    """A float32 tensor over a copy-on-write mapping of a file (MAP_PRIVATE, as a safetensors checkpoint)."""
    values.astype(np.float32).tofile(path)
    return torch.from_numpy(np.memmap(path, dtype=np.float32, mode="c", shape=values.shape))


def _resident_kb(address: int) -> int:
    """Rss of the mapping holding `address`, from /proc/self/smaps (not from the pagemap the code reads)."""
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(a, 16) for a in head.split("-"))
                inside = low <= address < high
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("no mapping holds the address")


def test_read_pages_of_a_file_are_handed_back_and_read_the_same(tmp_path):
    values = np.random.default_rng(0).normal(size=(256, 1024))  # 1 MiB: 256 pages
    weight = _mapped(tmp_path / "w.bin", values)
    assert file_mapping_of(weight) is not None
    assert float(weight.double().sum()) == pytest.approx(values.astype(np.float32).astype(np.float64).sum(), rel=1e-12)
    assert _resident_kb(weight.data_ptr()) >= 1024
    dropped = release_file_pages(weight)
    assert dropped >= 1024 * 1024 - 2 * PAGE  # every whole page inside the tensor
    assert _resident_kb(weight.data_ptr()) <= 2 * PAGE // 1024
    np.testing.assert_array_equal(weight.numpy(), values.astype(np.float32))  # read again from the file


def test_a_weight_changed_in_place_keeps_its_change(tmp_path):
    values = np.zeros((64, 1024))
    weight = _mapped(tmp_path / "w.bin", values)
    weight[10:20] = 7.0  # copy-on-write: these pages are now this process's own, not the file's
    weight.sum()
    release_file_pages(weight)
    assert float(weight[10:20].min()) == 7.0 and float(weight[10:20].max()) == 7.0
    assert float(weight[:10].abs().max()) == 0.0 and float(weight[20:].abs().max()) == 0.0
    assert _resident_kb(weight.data_ptr()) >= 10 * 1024 * 4 // 1024  # the changed rows stay resident


def test_memory_that_is_no_file_is_left_alone():
    assert file_mapping_of(torch.randn(512, 1024)) is None
    assert file_mapping_of(torch.randn(64, 1024)[:, ::2]) is None  # not one contiguous range


def test_a_readout_over_a_mapped_unembedding_reads_the_same_and_hands_it_back(tmp_path):
    torch.manual_seed(0)
    d, vocab, rows = 64, 12000, 2048  # 3 MB of float32 unembedding, read in 6 chunks of 512 kB
    norm, head = torch.nn.LayerNorm(d), torch.nn.Linear(d, vocab, bias=False)
    in_memory = Readout([norm, head], weight_chunk=rows * d)
    h, targets = 3 * torch.randn(40, d), torch.randint(0, vocab, (40,))
    want_logits, (want_loss, want_grad) = in_memory.logits(h), in_memory.loss_and_grad(h, targets)

    mapped_head = torch.nn.Linear(d, vocab, bias=False)
    mapped_head.weight = torch.nn.Parameter(_mapped(tmp_path / "w_u.bin", head.weight.detach().numpy()), requires_grad=False)
    mapped = Readout([norm, mapped_head], weight_chunk=rows * d)
    got_logits, (got_loss, got_grad) = mapped.logits(h), mapped.loss_and_grad(h, targets)
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=0)  # the same products on the same bytes
    torch.testing.assert_close(got_loss, want_loss, rtol=0, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=0)

    weight = mapped_head.weight
    release_file_pages(weight)
    mapped.logits(h)
    # A fault maps up to 64 kB of cached pages around it (the kernel's fault-around), so a chunk's
    # reads can leave the window past its ends mapped; the 3 MB read stay resident without the release.
    assert _resident_kb(weight.data_ptr()) <= 64 * (vocab // rows + 1) + 8
