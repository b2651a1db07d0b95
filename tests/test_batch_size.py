"""The automatic batch size: free memory minus a margin, at most half the machine unless --max-memory says
otherwise; flat in depth and vocabulary; eager attention's rows counted; the reason recorded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import normprobe.memory as memory

GIB = 1 << 30


def _model(device, **extra):
    return SimpleNamespace(**{"d_model": 4096, "n_heads": 32, "device": device, "n_layers": 32, "d_vocab": 128_256, **extra})


def _windows_in(budget, window):
    """A plain count: how many windows fit the budget beside the readout chunk."""
    count = 0
    while memory.READOUT_BYTES + (count + 1) * window <= budget:
        count += 1
    return count


@pytest.mark.parametrize("device", ["cuda:0", "cpu"])
def test_batch_fits_half_the_device_unless_asked(device, monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda d: (70 * GIB, 80 * GIB))  # free, total
    model = _model(device)
    deep = _model(device, n_layers=80, d_vocab=256_000)
    sdpa = memory.choose_batch_size(model, 1024)
    eager = memory.choose_batch_size(model, 1024, eager_attention=True)
    assert memory.choose_batch_size(deep, 1024) == sdpa  # neither depth nor vocabulary enters
    window = 4 * 4096 * memory.KEPT_VECTORS * 1024
    assert sdpa.window_bytes == window and eager.window_bytes == window + 8 * 32 * 1024 * 1024
    assert sdpa.budget_bytes == 40 * GIB  # half of 80 GiB, though 70 - 8 GiB margin are free
    assert "half the" in sdpa.reason and "--max-memory" in sdpa.reason
    if device == "cpu":
        assert sdpa.batch_size == eager.batch_size == memory.DEFAULT_TOKEN_BUDGET // 1024
        assert "on the CPU at most 8192 tokens" in sdpa.reason
        return
    assert sdpa.batch_size == _windows_in(40 * GIB, window) == 52  # (40 GiB - 384 MiB) // 768 MiB
    assert eager.batch_size == _windows_in(40 * GIB, eager.window_bytes) == 39
    asked = memory.choose_batch_size(model, 1024, max_memory=55 * GIB)  # above half: the user may
    assert asked.budget_bytes == 55 * GIB and asked.batch_size == _windows_in(55 * GIB, window)
    greedy = memory.choose_batch_size(model, 1024, max_memory=75 * GIB)  # more than is free: what is free
    assert greedy.budget_bytes == 62 * GIB and "below --max-memory" in greedy.reason


def test_max_memory_caps_the_batch_and_the_smallest_is_one_window(monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda d: (20 * GIB, 24 * GIB))
    model = _model("cuda:0")
    window = memory.window_bytes(4096, 32, 512, False)
    capped = memory.choose_batch_size(model, 512, max_memory=2 * GIB)
    assert capped.budget_bytes == 2 * GIB
    assert memory.READOUT_BYTES + capped.batch_size * window <= 2 * GIB < memory.READOUT_BYTES + (capped.batch_size + 1) * window
    assert capped.reason.startswith(f"{capped.batch_size} window(s) of 512 tokens") and "--max-memory 2.00 GiB" in capped.reason
    tiny = memory.choose_batch_size(model, 512, max_memory=100 << 20)
    assert tiny.batch_size == 1 and "exceeds the budget" in tiny.reason
    assert memory.choose_batch_size(model, 512, batch_size=7).reason == "given by --batch-size"
    assert memory.choose_batch_size(model, 512, resumed=3).batch_size == 3
    monkeypatch.setattr(memory, "device_memory", lambda d: (1 * GIB, 24 * GIB))  # little free: never below one
    low = memory.choose_batch_size(model, 512)
    assert low.batch_size == 1 and low.budget_bytes == 0


@pytest.mark.parametrize(
    "text, size",
    [
        ("8GB", 8 * 10**9),
        ("8GiB", 8 * GIB),
        ("8g", 8 * GIB),
        ("1.5 GB", 15 * 10**8),
        ("512MB", 512 * 10**6),
        ("300mib", 300 << 20),
        (4 << 20, 4 << 20),
    ],
)
def test_sizes_parse(text, size):
    assert memory.parse_size(text) == size


@pytest.mark.parametrize("text", ["8 bananas", "GB", "-1GB", "0", "1KB", "nanGB", "", "1e999GB"])
def test_bad_sizes_are_one_line(text):
    from normprobe.errors import NormprobeError

    with pytest.raises(NormprobeError, match="--max-memory must be"):
        memory.parse_size(text)


def test_the_model_readouts_backward_keeps_every_layer(monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda d: (70 * GIB, 80 * GIB))
    model = _model("cuda:0")
    per_token = 4 * 4096 * (memory.KEPT_VECTORS + memory.BACKWARD_VECTORS * 32)
    deep = memory.choose_batch_size(model, 1024, backward=True)
    assert deep.window_bytes == per_token * 1024
    assert deep.batch_size == max(1, _windows_in(40 * GIB, per_token * 1024))
    shallow = _model("cuda:0", n_layers=2)
    assert (
        memory.choose_batch_size(shallow, 256, backward=True).batch_size
        > memory.choose_batch_size(model, 256, backward=True).batch_size
    )


def test_the_readout_set_aside_holds_the_lens_probes_blocks():
    """Three float32 buffers of the larger of a readout's chunk and the lens probe's block."""
    from normprobe.probes.lens import ROW_LOGITS

    assert memory.READOUT_BYTES == 3 * 4 * max(ROW_LOGITS, memory.READOUT_CHUNK) == 384 << 20
