"""Plain, slow reference computations written independently of normprobe's code paths."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

# float32 results reached along different paths (thread counts, batch shapes, processes) differ in their
# last bits: about 1e-7 of a value per operation, a few times that after a reduction.
FLOAT32_REL = 1e-6
EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7
# A difference a - b of float32 results carries the rounding of its terms, not of itself: each loss is a
# log-sum-exp over the vocabulary of dot products over d_model, rounded differently by other kernels,
# thread counts and batch shapes (tens of eps of the loss in the worst case), however small a - b is.
DIFFERENCE_ULPS = 64


def difference_atol(*terms, ulps: float = DIFFERENCE_ULPS):
    """Absolute tolerance of a difference of float32 quantities: `ulps` eps32 of the sum of its terms' sizes
    (elementwise for arrays; NaN terms, where there is no difference, give NaN)."""
    return ulps * EPS32 * sum(np.abs(np.asarray(t, dtype=float)) for t in terms)


def assert_difference_close(got, want, atol, rel: float = FLOAT32_REL, what: str = "") -> None:
    """Equal to float32 rounding where `got` and `want` are differences of float32 quantities: within `atol`
    (from `difference_atol`, elementwise) plus `rel` of the value; NaN where both are NaN."""
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    atol = np.broadcast_to(np.asarray(atol, dtype=float), want.shape)
    nan = np.isnan(got) & np.isnan(want)
    ok = nan | (np.abs(got - want) <= np.nan_to_num(atol) + rel * np.abs(want))
    if not ok.all():
        worst = int(np.argmax(np.where(ok, 0, np.abs(got - want) - atol)))
        tolerance = atol.flat[worst] + rel * abs(want.flat[worst])
        raise AssertionError(
            f"{what}: {int((~ok).sum())} of {ok.size} differ beyond the float32 rounding of their terms; "
            f"e.g. {got.flat[worst]!r} against {want.flat[worst]!r} (tolerance {tolerance:.3g})"
        )


def on_host(value):
    """A tensor from the test device (NORMPROBE_TEST_DEVICE) brought to the CPU, to compare with references."""
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def assert_float32_close(got, want, rel: float = FLOAT32_REL, what: str = "") -> None:
    """Equal to float32 rounding: relative `rel` of each value, with an absolute floor of `rel` times the
    largest magnitude among the values, so an entry near 0 (a mean cosine) is judged on its column's scale."""
    got, want = np.asarray(on_host(got), dtype=float), np.asarray(on_host(want), dtype=float)
    finite = want[np.isfinite(want)]
    floor = rel * float(np.abs(finite).max()) if finite.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rel, atol=floor, equal_nan=True, err_msg=what)


def token_ids(tokenizer, doc: str, prepend_bos: bool = True) -> list[int]:
    ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
    if prepend_bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def final_norm_module(hf):
    for path in (
        "transformer.ln_f",
        "gpt_neox.final_layer_norm",
        "model.decoder.final_layer_norm",
        "model.norm",
        "model.final_layernorm",
    ):
        obj = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise LookupError("no final norm found")


@torch.no_grad()
def hf_residuals(hf, ids: list[int]) -> list[torch.Tensor]:
    """h_0..h_L for one document, one at a time: hidden_states[l] for l < L, and the final norm's input."""
    captured = {}
    handle = final_norm_module(hf).register_forward_pre_hook(lambda m, args: captured.setdefault("h", args[0]))
    try:
        out = hf(torch.tensor([ids]), output_hidden_states=True)
    finally:
        handle.remove()
    n_layers = len(out.hidden_states) - 1
    return [out.hidden_states[l][0].double() for l in range(n_layers)] + [captured["h"][0].double()]


def mean_norm_by_layer_position(hf, tokenizer, docs, prepend_bos=True):
    """{(layer, position): mean norm} over docs; layer L is the last block's output."""
    sums, counts = defaultdict(float), defaultdict(int)
    for doc in docs:
        for layer, h in enumerate(hf_residuals(hf, token_ids(tokenizer, doc, prepend_bos))):
            for position, vector in enumerate(h):
                sums[(layer, position)] += float(vector.norm())
                counts[(layer, position)] += 1
    return {k: sums[k] / counts[k] for k in sums}


def drive_by_hand(probe, adapter, windows, per_batch: int = 1):
    """Feed windows to a set-up probe without the runner: collate, one forward with its hooks, update."""
    from normprobe.batching import collate
    from normprobe.bootstrap import ReplicateWeights

    weights = ReplicateWeights(int(probe.options.get("replicates") or 200))
    for start in range(0, len(windows), per_batch):
        batch = collate(windows[start : start + per_batch], adapter.pad_token_id, adapter.device)
        batch.replicate_weights = weights.for_windows(batch.doc_seeds)  # the document bootstrap, as the runner does
        store = {}
        hooks = [(h, lambda act, hook, h=h: store.__setitem__(h, probe.reduce(h, act, batch))) for h in probe.hook_points()]
        with torch.inference_mode():
            adapter.forward(batch.tokens, batch.mask.long(), hooks)
            probe.update(store, batch)
    return probe
