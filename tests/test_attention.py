"""Attention kernels: sdpa unless a probe reads patterns, checked against eager once per model."""

from __future__ import annotations

import pytest

import normprobe

from .conftest import DOCS, TEST_DEVICE
from .reference import assert_float32_close

ENTROPY = "probes/attention_entropy.py"


def _run(adapter, probes):
    return normprobe.run(adapter, texts=DOCS, probes=probes, batch_size=3, progress=False)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "phi", "gemma"])
def test_norms_run_on_sdpa_unless_patterns_are_read(family, family_adapter):
    adapter = family_adapter(family)
    fast = _run(adapter, ["norms"])
    assert (fast.meta["attention"], fast.meta["attention_reason"]) == ("sdpa", "Hugging Face's default")
    patterns = _run(adapter, ["norms", ENTROPY])
    assert (patterns.meta["attention"], patterns.meta["attention_reason"]) == (
        "eager",
        "a probe reads attention patterns or norm internals",
    )
    # TransformerLens keeps each layer's last pattern; dropped after each layer, eager memory stays flat in depth
    assert not [m for m in adapter.bridge.modules() if "_pattern" in vars(m)]
    again = _run(adapter, ["norms"])  # the same loaded model switches back
    assert again.meta["attention"] == "sdpa"
    for result in (patterns, again):  # eager and sdpa agree to float32 rounding
        assert_float32_close(result["norms"]["mean"], fast["norms"]["mean"], rel=1e-5)
    assert (again["norms"]["mean"].to_numpy() == fast["norms"]["mean"].to_numpy()).all()


def test_a_family_where_sdpa_disagrees_stays_eager(monkeypatch, tmp_path, family_dir):
    import normprobe.attention as attention

    monkeypatch.setattr(attention, "fast_attention_disagreement", lambda *a, **k: 0.4)
    adapter = normprobe.load_model(str(family_dir("qwen2")), device=TEST_DEVICE)  # a fresh model: the check runs once
    result = _run(adapter, ["norms"])
    assert result.meta["attention"] == "eager"
    assert result.meta["attention_reason"] == "sdpa differed from eager by 0.4 (relative) on this model"


def test_sdpa_really_runs_and_patterns_come_back_with_eager(demo_adapter):
    import torch

    from normprobe.attention import fast_attention_disagreement

    tokens = torch.arange(20, device=demo_adapter.device)[None] % demo_adapter.d_vocab
    gap = fast_attention_disagreement(demo_adapter.bridge, demo_adapter.hook_name("resid_post", 3), tokens)
    assert 0 <= gap < 1e-5  # float32 sums in another order, nothing more

    def pattern_fires(reads_patterns):
        fired = []
        assert demo_adapter.select_attention(reads_patterns)[0] == ("eager" if reads_patterns else "sdpa")
        with torch.inference_mode():
            demo_adapter.forward(
                tokens, torch.ones_like(tokens), [("blocks.0.attn.hook_pattern", lambda a, hook: fired.append(1))]
            )
        return bool(fired)

    assert not pattern_fires(False) and demo_adapter.hf_model.config._attn_implementation == "sdpa"
    assert pattern_fires(True) and demo_adapter.hf_model.config._attn_implementation == "eager"
    demo_adapter.select_attention(False)
