"""The readout's arithmetic: line losses from products against the full readout and float64 autograd, the
first-order check from shared products, memory within one chunk, no readout for norms, --readout-sample."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from normprobe.cli import main
from normprobe.logit_readout import LogitOp, Readout
from normprobe.probes.linesearch import refine_minimum

from .conftest import TEST_DEVICE

ALPHAS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0]


class RMSNorm(torch.nn.Module):
    """Llama's RMSNorm (w) or Gemma's (1 + w), written as Hugging Face writes them."""

    def __init__(self, d: int, plus_one: bool):
        super().__init__()
        self.weight = torch.nn.Parameter(0.3 * torch.randn(d))
        self.variance_epsilon, self.plus_one = 1e-6, plus_one

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return x * (1 + self.weight) if self.plus_one else x * self.weight


class TanhNorm(torch.nn.Module):
    """No affine form: the line algebra must not be used."""

    def forward(self, x):
        return torch.tanh(x)


def _readout(norm_kind: str, op: LogitOp | None, d=24, vocab=300, weight_chunk=24 * 70):
    torch.manual_seed(0)
    norm = {
        "layernorm": torch.nn.LayerNorm(d),
        "rmsnorm": RMSNorm(d, False),
        "rmsnorm_plus_one": RMSNorm(d, True),
        "tanh": TanhNorm(),
    }[norm_kind]
    head = torch.nn.Linear(d, vocab, bias=norm_kind == "layernorm")
    with torch.no_grad():
        head.weight.mul_(8)  # logits of a few units, so soft-capping at 2 bends them
        if norm_kind == "layernorm":
            norm.weight.add_(0.3 * torch.randn(d))
            norm.bias.add_(0.3 * torch.randn(d))
    return Readout([norm, head], op, weight_chunk=weight_chunk), norm, head


def _float64_losses(norm, head, op, h, deltas, alphas, targets):
    """[K, A, N] cross-entropy of op(head(norm(h + αΔ))) in float64, and d loss(h)/dh by autograd."""
    norm64, head64 = copy.deepcopy(norm).double(), copy.deepcopy(head).double()

    def loss(x):
        z = head64(norm64(x))
        if op is not None and op.kind == "softcap":
            z = op.value * torch.tanh(z / op.value)
        elif op is not None:
            z = z * op.value if op.kind == "scale" else z / op.value
        return torch.nn.functional.cross_entropy(z, targets, reduction="none")

    with torch.no_grad():
        lines = torch.stack([torch.stack([loss(h.double() + a * d.double()) for a in alphas]) for d in deltas])
    x = h.double().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x).sum(), x)
    return lines, grad


OPS = {
    "none": None,
    "softcap": LogitOp("softcap", 2.0, "final_logit_softcapping"),
    "scale": LogitOp("scale", 0.5, "logit_scale"),
    "divide": LogitOp("divide", 4.0, "logits_scaling"),
}


@pytest.mark.parametrize(
    "norm_kind, op_name",
    [
        ("layernorm", "none"),
        ("layernorm", "softcap"),
        ("rmsnorm", "scale"),
        ("rmsnorm_plus_one", "softcap"),
        ("rmsnorm_plus_one", "divide"),
        ("tanh", "none"),
    ],
)
def test_line_losses_equal_full_readout_and_float64(norm_kind, op_name):
    op = OPS[op_name]
    readout, norm, head = _readout(norm_kind, op)
    assert (readout.form is None) == (norm_kind == "tanh")
    assert ("full readout at every α" in readout.line_algebra) == (norm_kind == "tanh")
    generator = torch.Generator().manual_seed(1)
    n, d = 40, 24
    h = 3 * torch.randn(n, d, generator=generator)
    deltas = [torch.randn(n, d, generator=generator), -0.5 * h + 0.3 * torch.randn(n, d, generator=generator)]
    targets = torch.randint(0, 300, (n,), generator=generator)
    fast = readout.line_losses(h, deltas, ALPHAS, targets)
    full = torch.stack([torch.stack([readout.loss(h + a * dl, targets) for a in ALPHAS]) for dl in deltas])
    want, want_grad = _float64_losses(norm, head, op, h, deltas, ALPHAS, targets)
    torch.testing.assert_close(fast.double(), full.double(), rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(fast.double(), want, rtol=2e-6, atol=2e-6)
    for k in range(len(deltas)):  # α* of the mean curve, as the findings compute it
        star_fast, _ = refine_minimum(np.array(ALPHAS), fast[k].double().mean(-1).numpy())
        star_want, _ = refine_minimum(np.array(ALPHAS), want[k].mean(-1).numpy())
        assert star_fast == pytest.approx(star_want, rel=1e-5, abs=1e-6)
    # the first-order check: loss and gradient at h and the losses at h + Δ from one set of products
    loss, grad, steps = readout.loss_grad_and_steps(h, deltas, targets)
    torch.testing.assert_close(loss.double(), want[0, 0], rtol=2e-6, atol=2e-6)
    assert float(((grad.double() - want_grad).norm(dim=-1) / want_grad.norm(dim=-1)).max()) < 1e-5
    for k in range(len(deltas)):
        torch.testing.assert_close(steps[k].double(), want[k, ALPHAS.index(1.0)], rtol=2e-6, atol=2e-6)


def test_tuned_lens_line_is_translated_line(demo_adapter, hf_model):
    """T(h + αΔ) = T(h) + α(Δ + AΔ): the fast tuned line against float64 autograd through the HF modules."""
    from normprobe.adapter import DEMO_DIR
    from normprobe.readouts.tuned import TunedReadout, new_translators

    torch.manual_seed(2)
    translators = new_translators(demo_adapter.d_model, demo_adapter.n_layers)
    with torch.no_grad():
        for t in translators:
            t.weight.normal_(0, 0.05)
            t.bias.normal_(0, 0.05)
    A, b = translators[1].weight.double(), translators[1].bias.double()  # the reference's copy, on the CPU
    readout = TunedReadout(demo_adapter, translators)
    hf = copy.deepcopy(hf_model(DEMO_DIR)).double()
    h, delta = 3 * torch.randn(9, demo_adapter.d_model), torch.randn(9, demo_adapter.d_model)
    targets = torch.randint(0, demo_adapter.d_vocab, (9,))
    layer = 1
    device = demo_adapter.device
    fast = readout.line_losses(h.to(device), [delta.to(device)], ALPHAS, targets.to(device), layer)[0].cpu()
    with torch.no_grad():
        for i, a in enumerate(ALPHAS):
            x = h.double() + a * delta.double()
            want = torch.nn.functional.cross_entropy(hf.lm_head(hf.transformer.ln_f(x + x @ A.T + b)), targets, reduction="none")
            torch.testing.assert_close(fast[i].double(), want, rtol=2e-6, atol=2e-6)


class LargestAllocation(torch.utils._python_dispatch.TorchDispatchMode):
    """The largest new storage (in float32 elements: bytes / 4) any operation allocates while active; views
    and in-place results share their input's storage and do not count."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {
            t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes() // 4)
        return out


def test_readout_over_a_large_vocabulary_stays_within_one_chunk():
    """A bfloat16 unembedding of 50k x 32 is read in chunks cast as used: no float32 copy of it ever exists."""
    torch.manual_seed(0)
    d, vocab, n, chunk = 32, 50_000, 8, 1 << 16
    norm, head = torch.nn.LayerNorm(d), torch.nn.Linear(d, vocab, bias=False).to(torch.bfloat16)
    readout = Readout([norm, head], LogitOp("softcap", 30.0, "final_logit_softcapping"), weight_chunk=chunk)
    h, targets = torch.randn(n, d), torch.randint(0, vocab, (n,))
    deltas = [torch.randn(n, d) for _ in range(3)]
    rows = chunk // d
    for call, bound in (
        (lambda: readout.loss(h, targets), n * rows),
        (lambda: readout.line_losses(h, deltas, [0.0, 1.0, 2.0], targets), 4 * n * rows),
        (lambda: readout.loss_and_grad(h, targets), n * vocab),
    ):  # the logits asked for, no more
        with LargestAllocation() as mode:
            call()
        assert chunk <= mode.largest <= max(bound, chunk), mode.largest
        assert mode.largest < vocab * d // 4  # a float32 copy of W_U would be vocab x d
    # and the chunks add up to the whole: the loss equals one full float32 product
    z = 30 * torch.tanh((norm(h) @ head.weight.float().T) / 30)
    torch.testing.assert_close(
        readout.loss(h, targets), torch.nn.functional.cross_entropy(z, targets, reduction="none"), rtol=2e-6, atol=2e-6
    )


def test_norms_run_builds_no_readout(demo_adapter):
    import normprobe

    built, demo_adapter._readout = demo_adapter._readout, None
    try:
        result = normprobe.run(demo_adapter, texts=["A short one."], probes=["norms"], progress=False)
        assert demo_adapter._readout is None
        assert result.meta["line_readout"].startswith("exact from products")
    finally:
        demo_adapter._readout = built


FLAKY = '''
from pathlib import Path

from normprobe.probes.norms import NormsProbe

class FlakyProbe(NormsProbe):
    """Fails once, at its fourth batch: the marker file remembers it across the resume's fresh import."""
    name = "flaky"
    calls = 0

    def update(self, activations, batch):
        FlakyProbe.calls += 1
        marker = Path(__file__).with_suffix(".failed")
        if FlakyProbe.calls == 4 and not marker.exists():
            marker.touch()
            raise ValueError("boom")
        super().update(activations, batch)
'''


def test_readout_sample_same_tables_single_resumed_and_merged(tmp_path, demo_adapter, capsys):
    from normprobe import NormprobeError
    from normprobe.api import merge_shards, run_to_folder

    flaky = tmp_path / "flaky.py"
    flaky.write_text(FLAKY)
    probes = ["updates", "linesearch"]
    options = dict(alphas=[0.0, 1.0], readout_sample=0.3, max_docs=6, batch_size=1, progress=False)
    run_to_folder(demo_adapter, tmp_path / "single", probes=probes, **options)
    with pytest.raises(NormprobeError, match="boom"):
        run_to_folder(demo_adapter, tmp_path / "resumed", probes=probes + [str(flaky)], checkpoint_every=2, **options)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    run_to_folder(demo_adapter, tmp_path / "resumed", probes=probes + [str(flaky)], resume=True, **options)
    for i in range(2):
        run_to_folder(demo_adapter, tmp_path / f"shard{i}", probes=probes, shard=(i, 2), **options)
    merge_shards([tmp_path / "shard0", tmp_path / "shard1"], tmp_path / "merged", device=TEST_DEVICE)

    single = {name: pd.read_parquet(tmp_path / "single" / f"{name}.parquet") for name in ("updates", "line_search")}
    for other in ("resumed", "merged"):
        for name, frame in single.items():
            got = pd.read_parquet(tmp_path / other / f"{name}.parquet")
            pd.testing.assert_frame_equal(got, frame, check_exact=False, rtol=1e-9)
    meta = json.loads((tmp_path / "single" / "run.json").read_text())
    assert meta["request"]["readout_sample"] == 0.3 and meta["options"]["readout_sample"] == 0.3
    predicted = meta["n_tokens"] - meta["n_windows"]  # tokens with a next token
    output = single["updates"].set_index("component").loc["output", "count"]
    assert 0.15 * predicted < output < 0.45 * predicted  # a real 30% sample, not all and not none
    with pytest.raises(SystemExit) as exc:
        main(["run", "demo", "--readout-sample", "0", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 1 and "--readout-sample must be a fraction in (0, 1]" in capsys.readouterr().err


def test_a_bfloat16_unembedding_read_in_chunks_equals_float64_autograd():
    """Every chunk of a bfloat16 W_U is cast into one reused buffer: the losses, the gradient and the losses
    along lines must still be those of the whole readout, computed here in float64 with autograd."""
    torch.manual_seed(1)
    d, vocab, n = 16, 3000, 6
    norm, head = torch.nn.LayerNorm(d), torch.nn.Linear(d, vocab, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    readout = Readout([norm, head], LogitOp("softcap", 30.0, "final_logit_softcapping"), weight_chunk=d * 700)
    assert readout.vocab_step < vocab  # five chunks, the last one short
    h, targets = torch.randn(n, d), torch.randint(0, vocab, (n,))
    deltas = [torch.randn(n, d) for _ in range(2)]
    norm64, w64 = copy.deepcopy(norm).double(), head.weight.double()

    def loss64(x):
        z = norm64(x) @ w64.T
        return torch.nn.functional.cross_entropy(30.0 * torch.tanh(z / 30.0), targets, reduction="none")

    x = h.double().requires_grad_(True)
    want_loss = loss64(x)
    (want_grad,) = torch.autograd.grad(want_loss.sum(), x)
    want_loss = want_loss.detach()
    loss, grad = readout.loss_and_grad(h, targets)
    scale = float(want_loss.abs().max())
    assert (loss.double() - want_loss).abs().max() <= 1e-5 * scale
    assert (grad.double() - want_grad).abs().max() <= 1e-5 * float(want_grad.abs().max())
    assert (readout.loss(h, targets).double() - want_loss).abs().max() <= 1e-5 * scale
    alphas = [0.0, 0.5, 2.0]
    with torch.no_grad():
        want_line = torch.stack([torch.stack([loss64(h.double() + a * dl.double()) for a in alphas]) for dl in deltas])
    got_line = readout.line_losses(h, deltas, alphas, targets).double()
    assert (got_line - want_line).abs().max() <= 1e-5 * float(want_line.abs().max())


def test_unembed_hash_without_a_float32_copy_matches_the_full_copy():
    """tuned-lens's unembed_hash (array_str at precision 1) from edge rows only, for a bfloat16 weight."""
    import hashlib

    from normprobe.readouts.tuned import _printable

    weight = torch.randn(5000, 40, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    full = np.array_str(weight.float().numpy(), precision=1)
    assert np.array_str(_printable(weight), precision=1) == full
    printed = np.array_str(_printable(weight), precision=1)
    assert hashlib.sha256(full.encode()).hexdigest() == hashlib.sha256(printed.encode()).hexdigest()
    small = torch.randn(7, 5).to(torch.bfloat16)  # under the print threshold: printed whole
    assert np.array_str(_printable(small), precision=1) == np.array_str(small.float().numpy(), precision=1)


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    from .test_model_types import word_tokenizer_in

    return word_tokenizer_in(tmp_path_factory.mktemp("words"))


@pytest.mark.parametrize("model_type", ["cohere", "olmo", "nemotron", "granite", "gemma2"])
def test_line_losses_on_real_families_equal_the_full_readout(model_type, word_tokenizer):
    """Hugging Face's own final norms (Cohere's float32 LayerNorm, OLMo's with no eps attribute, Nemotron's
    LayerNorm (1 + w)) and post-processing (× s, / s, soft-cap): the product path, not the fallback."""
    from .test_model_types import tiny_pair

    adapter, _ = tiny_pair(model_type, word_tokenizer)
    assert adapter.facts()["line_readout"].startswith("exact from products"), adapter.facts()["line_readout"]
    readout = adapter.readout
    generator = torch.Generator().manual_seed(3)
    h = 2 * torch.randn(12, adapter.d_model, generator=generator)
    deltas = [torch.randn(12, adapter.d_model, generator=generator) for _ in range(2)]
    targets = torch.randint(0, adapter.d_vocab, (12,), generator=generator)
    fast = readout.line_losses(h, deltas, ALPHAS, targets)
    full = torch.stack([torch.stack([readout.loss(h + a * d, targets) for a in ALPHAS]) for d in deltas])
    torch.testing.assert_close(fast, full, rtol=2e-6, atol=2e-6)
