"""`--readout model` against Hugging Face autograd and ablations written plainly with HF forward hooks.

The reference runs each window alone through an untouched float64 copy of the Hugging Face model:
the loss is the summed cross-entropy of HF's own logits (soft-capped where the family does it), the
end-of-step gradients come from `retain_grad` on the block inputs and outputs and on resid_mid (the
input of the norm before the MLP), and each ablation is a forward hook that replaces a block's output
by its input, or a component's output by zeros, made a leaf: its gradient is g at the step's start.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import normprobe
from normprobe.adapter import DEMO_DIR
from normprobe.batching import Window, collate
from normprobe.readouts.model import COMPONENTS, per_token_steps

from .conftest import DOCS
from .reference import assert_float32_close, token_ids
from .test_model_types import tiny_pair, word_tokenizer  # noqa: F401 - the fixture

REL = 1e-5
# per family: the decoder layers, and per layer the module whose output is attn's update, mlp's update, and
# the module whose input is resid_mid (None: a parallel block adds both to resid_post)
PARTS = {
    "gpt2": (lambda hf: hf.transformer.h, lambda b: b.attn, lambda b: b.mlp, lambda b: b.ln_2),
    "llama": (lambda hf: hf.model.layers, lambda b: b.self_attn, lambda b: b.mlp, lambda b: b.post_attention_layernorm),
    "gpt_neox": (lambda hf: hf.gpt_neox.layers, lambda b: b.attention, lambda b: b.mlp, lambda b: None),
    "gemma2": (
        lambda hf: hf.model.layers,
        lambda b: b.post_attention_layernorm,
        lambda b: b.post_feedforward_layernorm,
        lambda b: b.pre_feedforward_layernorm,
    ),
}


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replaced(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


def hf_token_losses(hf, ids: list[int], edit=None) -> torch.Tensor:
    """Per-token next-token loss of HF's own logits, with `edit` = (module, fn(input, output) -> output) hooked in."""

    def hook(module, args, kwargs, out):
        return edit[1](args[0] if args else kwargs.get("hidden_states"), out)

    handle = edit[0].register_forward_hook(hook, with_kwargs=True) if edit else None
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, :-1]
    finally:
        if handle:
            handle.remove()
    return torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")


def hf_token_losses_with_grad(hf, ids: list[int], edit) -> torch.Tensor:
    """hf_token_losses with autograd on: the summed loss is backpropagated (to the leaf `edit` makes)."""

    def hook(module, args, kwargs, out):
        return edit[1](args[0] if args else kwargs.get("hidden_states"), out)

    handle = edit[0].register_forward_hook(hook, with_kwargs=True)
    try:
        logits = hf(torch.tensor([ids])).logits[0, :-1]
    finally:
        handle.remove()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
    loss.sum().backward()
    return loss.detach()


def hf_reference(hf, family: str, ids: list[int], ablate: bool = False) -> dict:
    """Per token of one window: {(layer, component): {metric: values}}, and the model's loss per token."""
    layers_of, attn_of, mlp_of, mid_of = PARTS[family]
    layers = layers_of(hf)
    seen, handles = {}, []

    def grab(key, output_side=True):
        def hook(module, args, out=None):
            tensor = _first(out) if output_side else args[0]
            tensor.retain_grad()
            seen[key] = tensor

        return hook

    for l, block in enumerate(layers):
        handles.append(block.register_forward_pre_hook(lambda m, args, l=l: grab(("pre", l), False)(m, args)))
        handles.append(block.register_forward_hook(grab(("post", l))))
        handles.append(attn_of(block).register_forward_hook(grab(("attn", l))))
        handles.append(mlp_of(block).register_forward_hook(grab(("mlp", l))))
        if mid_of(block) is not None:
            handles.append(mid_of(block).register_forward_pre_hook(lambda m, args, l=l: grab(("mid", l), False)(m, args)))
    try:
        logits = hf(torch.tensor([ids])).logits[0, :-1]
    finally:
        for handle in handles:
            handle.remove()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
    loss.sum().backward()
    n, L = len(ids) - 1, len(layers)
    total = seen[("post", L - 1)][0, :n] - seen[("pre", 0)][0, :n]
    out = {}
    for l in range(L):
        pre, post = seen[("pre", l)][0, :n].detach(), seen[("post", l)][0, :n].detach()
        g_post = seen[("post", l)].grad[0, :n]
        g_attn = seen[("mid", l)].grad[0, :n] if ("mid", l) in seen else g_post  # the stream attn is added to
        deltas = {"attn": seen[("attn", l)][0, :n].detach(), "mlp": seen[("mlp", l)][0, :n].detach(), "block": post - pre}
        grads = {"attn": g_attn, "mlp": g_post, "block": g_post}
        for component, d in deltas.items():
            g = grads[component]
            values = {
                "descent_cos_end": torch.nn.functional.cosine_similarity(d, -g, dim=-1),
                "update_norm": d.norm(dim=-1),
                "total_cos": torch.nn.functional.cosine_similarity(d, total.detach(), dim=-1),
            }
            out[(l, component)] = values
        if ablate:
            block = layers[l]
            for component, module in (("block", block), ("attn", attn_of(block)), ("mlp", mlp_of(block))):
                # the update removed, and a leaf where it would be added: its gradient is g at the step's start
                start = {}

                def edit(inp, o, component=component, start=start):
                    base = inp.detach().clone() if component == "block" else torch.zeros_like(_first(o))
                    start["x"] = base.requires_grad_(True)
                    return _replaced(o, start["x"])

                without = hf_token_losses_with_grad(hf, ids, (module, edit))
                g0 = start["x"].grad[0, :n]
                d = deltas[component]
                values = out[(l, component)]
                values["descent_cos"] = torch.nn.functional.cosine_similarity(d, -g0, dim=-1)
                values["predicted_change"] = (g0 * d).sum(-1)
                values["actual_change"] = loss.detach() - without
    return {"steps": out, "loss": loss.detach()}


def _batch(adapter, ids_list):
    return collate([Window(i, ids) for i, ids in enumerate(ids_list)], adapter.pad_token_id, adapter.device)


@pytest.fixture(scope="module")
def tiny_models(word_tokenizer):  # noqa: F811 - the fixture imported above
    made = {}

    def get(family):
        if family not in made:
            adapter, reference = tiny_pair(family, word_tokenizer)
            made[family] = (adapter, reference.double())
        return made[family]

    return get


@pytest.mark.parametrize("family", list(PARTS))
def test_per_token_steps_match_hf_autograd_and_ablation(family, tiny_models):
    adapter, hf = tiny_models(family)
    generator = torch.Generator().manual_seed(1)
    windows = [torch.randint(2, adapter.d_vocab, (n,), generator=generator).tolist() for n in (11, 7)]
    batch = _batch(adapter, windows)  # the shorter window is padded: its pads must change nothing
    with torch.inference_mode():  # as the runner calls it
        loss, steps = per_token_steps(adapter, batch, ablate=True)
    refs = [hf_reference(hf, family, ids, ablate=True) for ids in windows]
    assert_float32_close(loss, torch.cat([r["loss"] for r in refs]), rel=REL, what="loss")
    # actual_change is a difference of two float32 losses: judged on the losses' scale, 1e-5 of the mean loss
    loss_scale = float(loss.mean())
    for (layer, component), got in steps.items():
        for metric in ("descent_cos", "descent_cos_end", "predicted_change", "update_norm", "total_cos", "actual_change"):
            want = torch.cat([r["steps"][(layer, component)][metric] for r in refs])
            what = f"{family} {layer} {component} {metric}"
            if metric == "actual_change":
                np.testing.assert_allclose(got[metric].cpu(), want, rtol=REL, atol=REL * loss_scale, err_msg=what)
            else:
                assert_float32_close(got[metric], want, rel=REL, what=what)
    assert len(steps) == adapter.n_layers * len(COMPONENTS)


def test_rerun_of_the_unchanged_stream_is_the_model(tiny_models):
    """Skipping blocks and injecting the stream is exact: rerunning from any layer gives the model's output."""
    adapter, _ = tiny_models("gemma2")  # sliding-window layers: the skipped blocks must not shift masks
    batch = _batch(adapter, [list(range(2, 14)), list(range(20, 28))])
    streams = {}
    with torch.inference_mode():
        adapter.forward(
            batch.tokens,
            batch.mask.long(),
            [
                (adapter.hook_name("resid_pre", l), lambda a, hook=None, l=l: streams.__setitem__(l, a.clone()))
                for l in range(adapter.n_layers)
            ]
            + [
                (
                    adapter.hook_name("resid_post", adapter.n_layers - 1),
                    lambda a, hook=None: streams.__setitem__("out", a.clone()),
                )
            ],
        )
        for layer in range(adapter.n_layers):
            again = adapter.rerun_from(layer, streams[layer], batch.tokens, batch.mask.long())
            torch.testing.assert_close(again[batch.mask], streams["out"][batch.mask], rtol=0, atol=0)


def _plain_loop(hf, tokenizer, docs):
    """{(layer, component): {metric: per-token values over docs}} and the per-token model loss."""
    rows, losses = {}, []
    for doc in docs:
        ids = token_ids(tokenizer, doc)
        if len(ids) < 2:
            continue
        ref = hf_reference(hf, "gpt2", ids, ablate=True)
        losses.append(ref["loss"])
        for key, values in ref["steps"].items():
            for metric, v in values.items():
                rows.setdefault(key, {}).setdefault(metric, []).append(v)
    return {k: {m: torch.cat(v) for m, v in d.items()} for k, d in rows.items()}, torch.cat(losses)


def test_updates_table_means_match_a_plain_loop(demo_adapter, hf_model):
    docs = DOCS[:3]
    result = normprobe.run(
        demo_adapter, texts=docs, probes=["updates"], progress=False, batch_size=2, readout="model", ablate=True
    )
    assert result.meta["readout"]["kind"] == "model"
    table = result["updates"].set_index(["layer", "component"])
    rows, loss = _plain_loop(copy.deepcopy(hf_model(DEMO_DIR)).double(), demo_adapter.tokenizer, docs)
    for (layer, component), r in rows.items():
        got = table.loc[(layer, component)]
        assert got["count"] == len(r["descent_cos"])
        for metric in ("descent_cos", "descent_cos_end", "predicted_change", "update_norm", "total_cos"):  # on the scale of |x|
            want = pytest.approx(float(r[metric].mean()), rel=REL, abs=REL * float(r[metric].abs().mean()))
            assert got[f"{metric}_mean"] == want, (layer, component, metric)
        assert got["actual_change_mean"] == pytest.approx(float(r["actual_change"].mean()), abs=REL * float(loss.mean()))
        assert got["lens_loss_mean"] == pytest.approx(float(loss.mean()), rel=REL)  # the model's loss at every depth
    assert table.loc[(demo_adapter.n_layers, "output")]["lens_loss_mean"] == pytest.approx(float(loss.mean()), rel=REL)
    from normprobe.report.headline import summary_lines

    assert f"updates: model loss {float(loss.mean()):.4g} nats, read at every layer" in summary_lines(result)[0]
    without = normprobe.run(demo_adapter, texts=docs, probes=["updates"], progress=False, batch_size=2, readout="model")
    steps = without["updates"][without["updates"].component != "output"]
    # without the rerun there is no start of the step: only the end-of-step cosine is measured
    assert steps["actual_change_mean"].isna().all() and steps["predicted_change_mean"].isna().all()
    assert steps["descent_cos_mean"].isna().all() and (steps["count"] > 0).all()
    np.testing.assert_allclose(
        steps["descent_cos_end_mean"], table.reset_index().query("component != 'output'")["descent_cos_end_mean"], rtol=1e-6
    )
    descent = without.claims.query("claim == 'descent'")
    assert (descent["verdict"] == "undetermined").all() and descent["note"].str.contains("--ablate").all()
    # what does not depend on the readout equals the logit readout's, next_cos included
    lens = normprobe.run(demo_adapter, texts=docs, probes=["updates"], progress=False, batch_size=2)["updates"]
    lens = lens[lens.component != "output"]
    for column in ("count", "update_norm_mean", "rel_update_mean", "next_cos_mean", "total_cos_mean"):
        assert_float32_close(steps[column], lens[column], what=column)


def test_line_search_matches_hf_hooks(demo_adapter, hf_model):
    docs, alphas = DOCS[:2], [0.0, 1.0, 2.0]
    table = normprobe.run(
        demo_adapter, texts=docs, probes=["linesearch"], progress=False, batch_size=2, readout="model", alphas=alphas
    )["line_search"]
    hf = copy.deepcopy(hf_model(DEMO_DIR)).double()
    want: dict[tuple, list] = {}
    for doc in docs:
        ids = token_ids(demo_adapter.tokenizer, doc)
        for l, block in enumerate(hf.transformer.h):
            for alpha in alphas:
                edits = {
                    "block": (block, lambda inp, o, a=alpha: _replaced(o, inp + a * (_first(o) - inp))),
                    "attn": (block.attn, lambda inp, o, a=alpha: _replaced(o, a * _first(o))),
                    "mlp": (block.mlp, lambda inp, o, a=alpha: _replaced(o, a * _first(o))),
                }
                for component, edit in edits.items():
                    want.setdefault((l, component, alpha), []).append(hf_token_losses(hf, ids, edit))
    assert len(table) == len(want)
    for row in table.itertuples():
        values = torch.cat(want[(row.layer, row.component, row.alpha)])
        assert row.count == len(values)
        assert row.lens_loss_mean == pytest.approx(float(values.mean()), rel=REL)


# -- runs: shards, merge and resume give the single run's tables ------------------------------------
RUN = dict(
    probes=["updates", "linesearch"], readout="model", ablate=True, alphas=[0.0, 1.0], layers=[1, 3], batch_size=1, texts=DOCS[:4]
)


def _same_tables(got, want):
    assert got.keys() == want.keys()
    for name in want:
        a, b = want[name], got[name]
        assert list(a.columns) == list(b.columns) and len(a) == len(b), name
        for column in a.columns:
            if a[column].dtype.kind in "iuOT":
                assert (a[column].to_numpy() == b[column].to_numpy()).all(), (name, column)
            else:
                assert_float32_close(b[column], a[column], what=f"{name}:{column}")


def test_shards_merge_and_resume_equal_a_single_run(demo_adapter, tmp_path, monkeypatch):
    from normprobe.live_run import make_probe, merge_state, run_result
    from normprobe.runner import Runner, make_runner
    from normprobe.store import RunFolder

    single = normprobe.run(demo_adapter, progress=False, **RUN)
    assert single.meta["readout"]["kind"] == "model" and single.meta["request"]["ablate"] is True
    shards = [normprobe.run(demo_adapter, progress=False, shard=(i, 2), **RUN) for i in range(2)]
    probes = [
        make_probe(cls, RUN["layers"], {"readout": "model", "ablate": True, "alphas": RUN["alphas"]})
        for cls in make_runner(demo_adapter, **RUN).probe_classes
    ]
    for probe in probes:
        probe.setup(demo_adapter, single.meta["seq_len"])
    for shard in shards:
        merge_state(demo_adapter, probes, shard.probe_states["probes"], single.meta["seq_len"], RUN["layers"])
    merged = run_result(probes, {}, {"docs": 4, "windows": 4, "tokens": 0, "batches": 4, "seconds": 0}, 0.0)
    _same_tables(merged.tables, single.tables)

    step, calls = Runner._step, []

    def stop_at_third(hooked, probes, batch):  # Ctrl-C in the third batch, two checkpoints in
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        step(hooked, probes, batch)

    out = tmp_path / "run"
    runner = make_runner(demo_adapter, **RUN)
    with monkeypatch.context() as patch, RunFolder.open(out, False) as folder:
        patch.setattr(Runner, "_step", staticmethod(stop_at_third))
        with pytest.raises(KeyboardInterrupt):
            runner.execute(progress=False, folder=folder, checkpoint_every=1)
    with pytest.raises(normprobe.NormprobeError, match="ablate"):  # another measurement cannot continue it
        RunFolder.for_resume(out, make_runner(demo_adapter, **{**RUN, "ablate": False}).request())
    runner = make_runner(demo_adapter, **RUN)
    folder, meta, checkpoint = RunFolder.for_resume(out, runner.request())
    with folder:
        resumed = runner.execute(progress=False, folder=folder, resume=(meta, checkpoint), checkpoint_every=1)
    assert resumed.meta["resumed"] == 1
    _same_tables(resumed.tables, single.tables)


def test_ablate_needs_the_model_readout(capsys, tmp_path):
    from normprobe.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "demo", "--probe", "updates", "--ablate", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "--ablate" in err and "--readout model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    with pytest.raises(normprobe.NormprobeError, match="--readout must be model, logit or tuned:DIR"):
        normprobe.run("demo", probes=["updates"], readout="modle")
    from normprobe.tracing import trace

    with pytest.raises(normprobe.NormprobeError, match="trace reads every layer through a lens"):
        trace("nowhere/not-a-model", "hello", readout="model")  # refused before the model is looked for
