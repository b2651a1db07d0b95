"""The readout's written-out gradient against autograd in float64, for every logit post-processing, over many rows."""

from __future__ import annotations

import pytest
import torch

from normprobe.logit_readout import ROW_CHUNK, LogitOp, Readout


@pytest.mark.parametrize(
    "op",
    [
        None,
        LogitOp("softcap", 2.0, "final_logit_softcapping"),
        LogitOp("scale", 0.5, "logit_scale"),
        LogitOp("divide", 4.0, "logits_scaling"),
    ],
)
def test_loss_and_grad_equal_autograd_in_float64(op):
    torch.manual_seed(0)
    d, vocab, n = 24, 300, 2 * ROW_CHUNK + 37  # more rows than one chunk, and a ragged last chunk
    norm, head = torch.nn.LayerNorm(d), torch.nn.Linear(d, vocab)
    with torch.no_grad():
        norm.weight.add_(0.3 * torch.randn(d))
        head.weight.mul_(8)  # logits of a few units, so soft-capping at 2 bends them
    readout = Readout([norm, head], op)
    h = 3 * torch.randn(n, d)
    targets = torch.randint(0, vocab, (n,))
    loss, grad = readout.loss_and_grad(h, targets)

    x = h.double().requires_grad_(True)
    z = head.double()(norm.double()(x))
    if op is not None and op.kind == "softcap":
        z = op.value * torch.tanh(z / op.value)
    elif op is not None:
        z = z * op.value if op.kind == "scale" else z / op.value
    want_loss = torch.nn.functional.cross_entropy(z, targets, reduction="none")
    (want_grad,) = torch.autograd.grad(want_loss.sum(), x)
    torch.testing.assert_close(loss.double(), want_loss.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(readout.loss(h, targets).double(), want_loss.detach(), rtol=1e-5, atol=1e-5)
    per_token = (grad.double() - want_grad).norm(dim=-1) / want_grad.norm(dim=-1)
    assert float(per_token.max()) < 1e-4
    if op is not None and op.kind == "softcap":
        assert float(readout.logits(h).abs().max()) <= op.value  # the cap is really applied
