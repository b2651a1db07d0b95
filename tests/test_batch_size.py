"""The automatic batch size: half the free memory, flat in depth and vocabulary, eager attention's rows counted."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import normprobe.options as options


@pytest.mark.parametrize("device", ["cuda:0", "cpu"])
def test_batch_fits_half_the_free_memory(device, monkeypatch):
    gib = 1 << 30
    monkeypatch.setattr(options, "available_memory", lambda d: 40 * gib)
    model = SimpleNamespace(d_model=4096, n_heads=32, device=device, n_layers=32, d_vocab=128_256)
    deep = SimpleNamespace(**{**vars(model), "n_layers": 80, "d_vocab": 256_000})
    sdpa = options.default_batch_size(model, 1024)
    eager = options.default_batch_size(model, 1024, eager_attention=True)
    assert options.default_batch_size(deep, 1024) == sdpa  # neither depth nor vocabulary enters
    if device == "cpu":
        assert sdpa == eager == options.DEFAULT_TOKEN_BUDGET // 1024
        return
    room = 20 * gib - 3 * 4 * options.READOUT_CHUNK
    assert sdpa == room // (4 * 4096 * options.KEPT_VECTORS) // 1024 == 26
    assert eager == room // (4 * 4096 * options.KEPT_VECTORS + 8 * 32 * 1024) // 1024 == 19
    small = SimpleNamespace(**{**vars(model), "device": device})
    monkeypatch.setattr(options, "available_memory", lambda d: 1 * gib)  # never below one window
    assert options.default_batch_size(small, 1024) == 1


def test_the_model_readouts_backward_keeps_every_layer(monkeypatch):
    gib = 1 << 30
    monkeypatch.setattr(options, "available_memory", lambda d: 40 * gib)
    model = SimpleNamespace(d_model=4096, n_heads=32, device="cuda:0", n_layers=32, d_vocab=128_256)
    room = 20 * gib - 3 * 4 * options.READOUT_CHUNK
    per_token = 4 * 4096 * (options.KEPT_VECTORS + options.BACKWARD_VECTORS * 32)
    assert options.default_batch_size(model, 1024, backward=True) == max(1, room // per_token // 1024)
    shallow = SimpleNamespace(**{**vars(model), "n_layers": 2})
    assert options.default_batch_size(shallow, 256, backward=True) > options.default_batch_size(model, 256, backward=True)
