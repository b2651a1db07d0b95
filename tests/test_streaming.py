"""Probes that stream layers: what a pass holds at once does not grow with depth, and failures are named."""

from __future__ import annotations

import pytest

import normprobe
from normprobe.hooked import HookedPass

from .conftest import DOCS, TEST_DEVICE
from .reference import assert_float32_close, drive_by_hand


@pytest.fixture(scope="module")
def deep_and_shallow(tmp_path_factory, tokenizers_by_kind):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folders = {}
    for depth in (2, 12):
        torch.manual_seed(depth)
        folder = tmp_path_factory.mktemp(f"depth{depth}")
        GPT2LMHeadModel(
            GPT2Config(vocab_size=384, n_positions=64, n_embd=32, n_layer=depth, n_head=4, bos_token_id=0, eos_token_id=0)
        ).save_pretrained(folder)
        tokenizers_by_kind["shared"].save_pretrained(folder)
        folders[depth] = normprobe.load_model(str(folder), device=TEST_DEVICE)
    return folders


def _most_held(model, probes, monkeypatch) -> int:
    """The most reduced activations the pass held at once for the updates probe, over a whole run."""
    most = {"updates": 0}
    original = HookedPass._make_hook

    def counting(self, hook_name, readers):
        inner = original(self, hook_name, readers)

        def hook(activation, hook=None):
            inner(activation, hook)
            held = self._reduced.get("updates", {})
            most["updates"] = max(most["updates"], len(held))

        return hook

    monkeypatch.setattr(HookedPass, "_make_hook", counting)
    normprobe.run(model, texts=DOCS, probes=probes, batch_size=3, progress=False)
    return most["updates"]


def test_updates_holds_at_most_one_layer_whatever_the_depth(deep_and_shallow, monkeypatch):
    held = {depth: _most_held(model, ["updates"], monkeypatch) for depth, model in deep_and_shallow.items()}
    # one layer's resid_pre, attn_out, mlp_out before its resid_post completes the layer and all are handed over
    assert held[2] == held[12] == 3, held


class Explodes(normprobe.Probe):
    name = "explodes"

    def setup(self, model, seq_len):
        self.points = [("resid_pre", l) for l in range(model.n_layers)]

    def hook_points(self):
        return self.points

    def update_layer(self, layer, activations, batch):
        if layer == 1:
            raise RuntimeError("layer one is on fire")

    def update(self, activations, batch):
        assert activations == {}  # every hook point sat in a layer and was handed over

    def merge(self, other):
        pass

    def result(self):
        return {}


def test_a_streaming_probe_that_raises_is_named(demo_adapter):
    with pytest.raises(normprobe.NormprobeError, match="probe 'explodes' raised RuntimeError: layer one is on fire"):
        normprobe.run(demo_adapter, texts=DOCS, probes=[Explodes], progress=False)


def test_updates_driven_by_hand_equals_the_streaming_run(demo_adapter):
    """A caller that collects a whole batch and calls update (no begin_batch) gets what the runner gets."""
    from normprobe.batching import iter_windows
    from normprobe.probes.updates import UpdatesProbe

    windows = list(iter_windows(DOCS, demo_adapter.encode, 64, demo_adapter.bos_token_id))
    probe = UpdatesProbe()
    probe.setup(demo_adapter, 64)
    by_hand = drive_by_hand(probe, demo_adapter, windows, per_batch=2).result()["updates"]
    streamed = normprobe.run(demo_adapter, texts=DOCS, probes=["updates"], seq_len=64, batch_size=2, progress=False)["updates"]
    assert list(by_hand["count"]) == list(streamed["count"]) and by_hand["count"].sum() > 0
    for column in by_hand.columns:
        if by_hand[column].dtype.kind == "f":
            assert_float32_close(by_hand[column], streamed[column], rel=1e-5, what=column)
