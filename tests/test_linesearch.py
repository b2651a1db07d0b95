"""The linesearch probe against a plain loop over Hugging Face modules, its merge, and α* refinement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import normprobe
from normprobe.adapter import DEMO_DIR
from normprobe.probes.linesearch import LineSearchProbe, line_search_findings, refine_minimum

from .conftest import DOCS
from .reference import drive_by_hand, token_ids

ALPHAS = [0.0, 0.5, 1.0, 1.5, 3.0]


def _plain_line_search(hf, tokenizer, docs, alphas):
    """{(layer, component, alpha): per-token losses}: hooks on the HF blocks, CE of lm_head(ln_f(h + αΔ))."""
    norm, head = hf.transformer.ln_f, hf.lm_head
    losses: dict[tuple, list[float]] = {}
    for doc in docs:
        ids = token_ids(tokenizer, doc)
        parts, handles = {}, []
        for l, block in enumerate(hf.transformer.h):
            handles.append(block.attn.register_forward_hook(lambda m, i, o, l=l: parts.__setitem__(("attn", l), o[0][0])))
            handles.append(block.mlp.register_forward_hook(lambda m, i, o, l=l: parts.__setitem__(("mlp", l), o[0])))
            handles.append(
                block.register_forward_hook(
                    lambda m, i, o, l=l: parts.__setitem__(("post", l), o[0][0] if isinstance(o, tuple) else o[0])
                )
            )
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_hidden_states=True)
            for handle in handles:
                handle.remove()
            targets = torch.tensor(ids[1:])
            for l in range(len(hf.transformer.h)):
                h = out.hidden_states[l][0][:-1]
                deltas = {"attn": parts[("attn", l)][:-1], "mlp": parts[("mlp", l)][:-1], "block": parts[("post", l)][:-1] - h}
                for component, delta in deltas.items():
                    for alpha in alphas:
                        loss = torch.nn.functional.cross_entropy(head(norm(h + alpha * delta)), targets, reduction="none")
                        losses.setdefault((l, component, alpha), []).extend(loss.tolist())
    return losses


def test_matches_plain_loop_over_hf_modules(demo_adapter, hf_model):
    docs = DOCS[:4]
    result = normprobe.run(demo_adapter, texts=docs, probes=["linesearch"], progress=False, batch_size=2, alphas=ALPHAS)
    table = result["line_search"]
    assert list(table.columns[:5]) == ["layer", "component", "alpha", "count", "lens_loss_mean"]
    want = _plain_line_search(hf_model(DEMO_DIR), demo_adapter.tokenizer, docs, ALPHAS)
    assert len(table) == len(want)
    for row in table.itertuples():
        values = want[(row.layer, row.component, row.alpha)]
        assert row.count == len(values)
        assert row.lens_loss_mean == pytest.approx(np.mean(values), rel=1e-5)
    # α = 1 on the block is the next layer's own residual: its loss is the next layer's lens loss
    block = table[(table.component == "block") & (table.alpha == 1.0)].set_index("layer")["lens_loss_mean"]
    at_zero = table[(table.component == "block") & (table.alpha == 0.0)].set_index("layer")["lens_loss_mean"]
    for layer in range(demo_adapter.n_layers - 1):
        assert block[layer] == pytest.approx(at_zero[layer + 1], rel=1e-5)
    assert result.findings["linesearch"]["alphas"] == ALPHAS


def test_merge_of_halves_equals_whole(demo_adapter):
    from normprobe.batching import iter_windows

    windows = list(iter_windows(DOCS[:4], demo_adapter.encode, 64, demo_adapter.bos_token_id))

    def probe_over(ws):
        probe = LineSearchProbe(alphas=ALPHAS)
        probe.setup(demo_adapter, 64)
        return drive_by_hand(probe, demo_adapter, ws)

    whole = probe_over(windows)
    first, second = probe_over(windows[:2]), probe_over(windows[2:])
    restored = LineSearchProbe(alphas=ALPHAS)
    restored.setup(demo_adapter, 64)
    restored.load_state_dict(first.state_dict())
    restored.merge(second)
    pd.testing.assert_frame_equal(restored.result()["line_search"], whole.result()["line_search"], rtol=1e-12)
    with pytest.raises(ValueError, match="alphas"):
        LineSearchProbe(alphas=[0.0, 1.0]).load_state_dict(first.state_dict())


def test_alpha_star_is_the_vertex_of_a_parabola():
    alphas = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0])
    for vertex in (0.6, 1.1, 1.7, 2.4):
        losses = 2.0 + 0.7 * (alphas - vertex) ** 2
        star, edge = refine_minimum(alphas, losses)
        assert star == pytest.approx(vertex, rel=1e-12) and not edge
    star, edge = refine_minimum(alphas, 5.0 - alphas)  # still falling at the end of the grid
    assert (star, edge) == (3.0, True)
    rows = [
        {"layer": 0, "component": "block", "alpha": a, "count": 1, "lens_loss_mean": (a - 1.05) ** 2, "n_nonfinite": 0}
        for a in alphas
    ] + [
        {"layer": 1, "component": "block", "alpha": a, "count": 1, "lens_loss_mean": (a - 1.7) ** 2, "n_nonfinite": 0}
        for a in alphas
    ]
    f = line_search_findings(pd.DataFrame(rows))
    assert f["alpha_star"]["block"] == pytest.approx({0: 1.05, 1: 1.7})
    assert f["alpha_star_near_one"]["block"] == [0]
