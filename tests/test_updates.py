"""The updates probe against autograd, analytic gradients, Hugging Face losses and a slow per-token loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import normprobe
from normprobe.probes.updates import step_statistics

from .conftest import DOCS, FAMILY_NAMES
from .reference import difference_atol, final_norm_module, token_ids


def analytic_grad(hf, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """dCE/dh through the final norm and unembedding, written out by hand (no autograd)."""
    norm = final_norm_module(hf)
    head = hf.get_output_embeddings()
    W = head.weight.double()
    x = h.double()
    weight = norm.weight.double()
    if type(norm).__name__.startswith("Gemma"):
        weight = 1.0 + weight  # Gemma's RMSNorm scales by (1 + w)
    if isinstance(norm, torch.nn.LayerNorm):
        mu = x.mean(-1, keepdim=True)
        sigma = ((x - mu) ** 2).mean(-1, keepdim=True).add(norm.eps).sqrt()
        xhat = (x - mu) / sigma
        y = xhat * weight + norm.bias.double()
    else:
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        sigma = (x * x).mean(-1, keepdim=True).add(eps).sqrt()
        xhat = x / sigma
        y = xhat * weight
    logits = y @ W.T + (head.bias.double() if head.bias is not None else 0)
    dlogits = torch.softmax(logits, -1)
    dlogits[torch.arange(len(targets)), targets] -= 1
    gy = (dlogits @ W) * weight
    if isinstance(norm, torch.nn.LayerNorm):
        return (gy - gy.mean(-1, keepdim=True) - xhat * (gy * xhat).mean(-1, keepdim=True)) / sigma
    return (gy - xhat * (gy * xhat).mean(-1, keepdim=True)) / sigma


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_gradient_matches_analytic_formula(family, family_adapter, hf_model, family_dir):
    adapter = family_adapter(family)
    torch.manual_seed(1)
    h = torch.randn(17, adapter.d_model) * 3
    targets = torch.randint(0, adapter.d_vocab, (17,))
    loss, grad = adapter.readout.loss_and_grad(h.to(adapter.device), targets.to(adapter.device))
    want = analytic_grad(hf_model(family_dir(family)), h, targets)
    torch.testing.assert_close(grad.double().cpu(), want, rtol=1e-4, atol=1e-6)
    assert loss.shape == (17,)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_output_lens_loss_equals_model_loss(family, family_adapter, family_dir, hf_model):
    adapter = family_adapter(family)
    hf = hf_model(family_dir(family))
    result = normprobe.run(adapter, texts=DOCS, probes=["updates"], progress=False, batch_size=3)
    updates = result["updates"]
    total, count = 0.0, 0
    for doc in DOCS:
        ids = token_ids(adapter.tokenizer, doc)
        if len(ids) < 2:
            continue
        with torch.no_grad():
            out = hf(torch.tensor([ids]), labels=torch.tensor([ids]))
        total += float(out.loss) * (len(ids) - 1)
        count += len(ids) - 1
    output = updates[updates.component == "output"].iloc[0]
    assert int(output["count"]) == count
    assert output["lens_loss_mean"] == pytest.approx(total / count, rel=1e-5)
    assert output["layer"] == adapter.n_layers


def test_exact_descent_step_and_orthogonal_update():
    torch.manual_seed(0)
    grad = torch.randn(5, 16)
    eta = torch.tensor([0.5, 1.0, 2.0, 0.1, 3.0])
    stats = step_statistics(-eta[:, None] * grad, grad)
    torch.testing.assert_close(stats["descent_cos"], torch.ones(5))
    torch.testing.assert_close(stats["step_r2"], torch.ones(5))
    torch.testing.assert_close(stats["step_eta"], eta)
    ortho = torch.randn(5, 16)
    ortho -= (ortho * grad).sum(-1, keepdim=True) / (grad * grad).sum(-1, keepdim=True) * grad
    stats = step_statistics(ortho, grad)
    torch.testing.assert_close(stats["descent_cos"], torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats["step_r2"], torch.zeros(5), atol=1e-6, rtol=0)
    ascent = step_statistics(grad, grad)
    torch.testing.assert_close(ascent["descent_cos"], -torch.ones(5))


def _slow_reference(adapter, docs):
    """Per token, per layer, written plainly from Hugging Face modules and autograd (GPT-2 layout)."""
    hf = adapter.hf_model
    norm, head = hf.transformer.ln_f, hf.lm_head
    L = adapter.n_layers
    rows = {}  # (layer, component) -> lists of per-token values
    lens = {l: [] for l in range(L + 1)}
    for doc in docs:
        ids = token_ids(adapter.tokenizer, doc)
        parts = {}
        handles = []
        for l, block in enumerate(hf.transformer.h):
            handles.append(
                block.attn.register_forward_hook(lambda m, i, o, l=l: parts.__setitem__(("attn", l), o[0][0].detach()))
            )
            handles.append(block.mlp.register_forward_hook(lambda m, i, o, l=l: parts.__setitem__(("mlp", l), o[0].detach())))
        captured = {}
        handles.append(norm.register_forward_pre_hook(lambda m, a: captured.setdefault("hL", a[0][0].detach())))
        try:  # the hooks sit on the session's model: never leave them behind
            with torch.no_grad():
                out = hf(torch.tensor([ids], device=adapter.device), output_hidden_states=True)
        finally:
            for handle in handles:
                handle.remove()
        hs = [out.hidden_states[l][0] for l in range(L)] + [captured["hL"]]
        for t in range(len(ids) - 1):
            target = torch.tensor(ids[t + 1], device=adapter.device)
            total = hs[L][t] - hs[0][t]
            deltas_prev = None
            for l in range(L + 1):
                h = hs[l][t].clone().requires_grad_(True)
                loss = torch.nn.functional.cross_entropy(head(norm(h))[None], target[None])
                (g,) = torch.autograd.grad(loss, h)
                lens[l].append(float(loss.detach()))
                if l == L:
                    break
                deltas = {"attn": parts[("attn", l)][t], "mlp": parts[("mlp", l)][t], "block": hs[l + 1][t] - hs[l][t]}
                for c, d in deltas.items():
                    cos = float(torch.dot(d, -g) / (d.norm() * g.norm()))
                    r = rows.setdefault(
                        (l, c),
                        {"cos": [], "norm": [], "rel": [], "eta": [], "total": [], "next": [], "predicted": [], "actual": []}
                        | {"predicted_terms": [], "actual_terms": []},
                    )
                    with torch.no_grad():
                        stepped = torch.nn.functional.cross_entropy(head(norm(h + d))[None], target[None])
                    r["predicted"].append(float(torch.dot(g, d)))
                    r["actual"].append(float(stepped - loss.detach()))
                    # the sizes of the terms behind each difference or signed sum, which set its float32 rounding
                    r["predicted_terms"].append(float(g.norm() * d.norm()))
                    r["actual_terms"].append(float(stepped.abs() + loss.detach().abs()))
                    r["cos"].append(cos)
                    r["norm"].append(float(d.norm()))
                    r["rel"].append(float(d.norm() / hs[l][t].norm()))
                    r["eta"].append(float(torch.dot(d, -g) / torch.dot(g, g)))
                    r["total"].append(float(torch.dot(d, total) / (d.norm() * total.norm())))
                    if deltas_prev is not None:
                        p = deltas_prev[c]
                        rows[(l - 1, c)]["next"].append(float(torch.dot(p, d) / (p.norm() * d.norm())))
                deltas_prev = deltas
    return rows, lens


def test_matches_slow_reference_on_demo_model(demo_adapter):
    docs = DOCS[:4]
    result = normprobe.run(demo_adapter, texts=docs, probes=["updates"], progress=False, batch_size=2)
    table = result["updates"].set_index(["layer", "component"])
    rows, lens = _slow_reference(demo_adapter, docs)
    for (layer, component), r in rows.items():
        got = table.loc[(layer, component)]
        assert got["count"] == len(r["cos"])
        assert got["descent_cos_mean"] == pytest.approx(np.mean(r["cos"]), abs=1e-5)
        assert got["descent_cos_std"] == pytest.approx(np.std(r["cos"]), abs=1e-5)
        assert got["step_r2_mean"] == pytest.approx(np.mean(np.square(r["cos"])), abs=1e-5)
        assert got["update_norm_mean"] == pytest.approx(np.mean(r["norm"]), rel=1e-5)
        assert got["rel_update_mean"] == pytest.approx(np.mean(r["rel"]), rel=1e-5)
        assert got["step_eta_mean"] == pytest.approx(np.mean(r["eta"]), rel=1e-4)
        assert got["total_cos_mean"] == pytest.approx(np.mean(r["total"]), abs=1e-5)
        assert got["lens_loss_mean"] == pytest.approx(np.mean(lens[layer]), rel=1e-5)
        # a mean of differences (of signed sums) is judged on the size of their terms, not on its own
        predicted_atol = difference_atol(np.mean(r["predicted_terms"]))
        assert got["predicted_change_mean"] == pytest.approx(np.mean(r["predicted"]), rel=1e-5, abs=predicted_atol)
        actual_atol = difference_atol(np.mean(r["actual_terms"]))
        assert got["actual_change_mean"] == pytest.approx(np.mean(r["actual"]), rel=1e-5, abs=actual_atol)
        if r["next"]:
            assert got["next_cos_mean"] == pytest.approx(np.mean(r["next"]), abs=1e-5)
        else:
            assert math.isnan(got["next_cos_mean"])
    assert table.loc[(demo_adapter.n_layers, "output")]["lens_loss_mean"] == pytest.approx(
        np.mean(lens[demo_adapter.n_layers]), rel=1e-5
    )
    hist = result["updates_hist"]
    assert hist.groupby(["layer", "component"])["count"].sum().eq(len(rows[(0, "block")]["cos"])).all()


def test_findings_from_table(demo_adapter):
    result = normprobe.run(demo_adapter, texts=DOCS * 4, probes=["updates"], progress=False)
    updates, f = result["updates"], result.findings["updates"]
    steps = updates[updates.component == "block"]
    low = steps["descent_cos_mean"] - 1.96 * steps["descent_cos_std"] / np.sqrt(steps["count"])
    assert f["descent_positive_layers_token_level"]["block"] == [int(l) for l in steps.loc[low > 0, "layer"]]
    losses = updates.drop_duplicates("layer").sort_values("layer")["lens_loss_mean"].to_numpy()
    assert f["lens_loss_falls_every_layer"] == bool((np.diff(losses) < 0).all())
    assert f["lens_loss_total_drop"] == pytest.approx(losses[0] - losses[-1])
    assert f["chance_cos_std"] == pytest.approx(1 / math.sqrt(demo_adapter.d_model))
    uniform = math.log(demo_adapter.d_vocab)
    above = [l for l, loss in enumerate(losses) if loss > uniform]
    assert f["uniform_loss"] == pytest.approx(uniform) and f["readout_not_meaningful_layers"] == above
    first = next(l for l in range(len(losses)) if l not in above)
    assert f["first_meaningful_layer"] == first
    assert f["lens_loss_drop_from_first_meaningful"] == pytest.approx(losses[first] - losses[-1])
    assert f["descent_cos_mean"]["block"] == pytest.approx(dict(zip(steps["layer"], steps["descent_cos_mean"])))


def test_layer_subset_changes_nothing(demo_adapter):
    full = normprobe.run(demo_adapter, texts=DOCS, probes=["updates"], progress=False)["updates"]
    subset = normprobe.run(demo_adapter, texts=DOCS, probes=["updates"], layers=[1, 2], progress=False)["updates"]
    full = full.set_index(["layer", "component"])
    for row in subset.itertuples():
        ref = full.loc[(row.layer, row.component)]
        assert row.lens_loss_mean == pytest.approx(ref["lens_loss_mean"], rel=1e-6)
        if row.component != "output":
            assert row.descent_cos_mean == pytest.approx(ref["descent_cos_mean"], abs=1e-6)
    assert set(subset.layer) == {1, 2, demo_adapter.n_layers}
