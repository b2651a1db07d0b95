"""The logit readout: final norm -> (pre-head modules) -> unembedding -> the family's logit post-processing.

Lens loss and the descent gradient read out exactly the logits the model itself produces, in float32.
The final norm and any pre-head module (small: width-sized) are float32 copies; the unembedding is
the model's own weight, read in vocabulary chunks cast to float32 as they are used, so no float32
copy of the whole unembedding ever exists. Post-processing comes from config fields that Hugging
Face's own forward reads (`LOGIT_FIELDS`); the model-type matrix test checks each family.

Along a line h + αΔ the readout needs no new product per α (docs/probe-cost.md): with the norm
written as w ⊙ c(x)/σ(x) + b, the logits are (A + αB)/σ(α) + C with A = W_U(w ⊙ c_h),
B = W_U(w ⊙ c_Δ) and C = W_U b + b_U, so each α costs element-wise work over the vocabulary only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .residency import file_mapping_of, release_file_pages

if TYPE_CHECKING:
    import torch

# config field -> operation, as each family's ForCausalLM.forward applies it after lm_head
LOGIT_FIELDS = {
    "final_logit_softcapping": "softcap",  # Gemma 2/3/4, VaultGemma, nanochat: c * tanh(z / c)
    "logits_soft_cap": "softcap",  # RecurrentGemma
    "logit_scale": "scale",  # Cohere: z * s
    "logits_scaling": "divide",  # Granite: z / s
}
ROW_CHUNK = 1024  # rows of the logits buffer handled at once when a temporary of their size is needed


@dataclass(frozen=True)
class LogitOp:
    kind: str  # "softcap", "scale" or "divide"
    value: float
    field: str  # the config field it comes from

    def apply_(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "softcap":
            return z.div_(self.value).tanh_().mul_(self.value)
        if self.kind == "scale":
            return z.mul_(self.value)
        return z.div_(self.value)

    def slope(self, out: torch.Tensor) -> torch.Tensor | float:
        """d out / d z, written in terms of the output: for c·tanh(z/c) it is 1 - (out/c)²."""
        if self.kind == "softcap":
            return 1.0 - (out / self.value) ** 2
        return self.value if self.kind == "scale" else 1.0 / self.value

    def describe(self) -> str:
        """What it does, with its value: `soft-cap 30·tanh(z/30)`, `logits × 0.0625`, `logits / 4`."""
        return {
            "softcap": f"soft-cap {self.value:g}·tanh(z/{self.value:g})",
            "scale": f"logits × {self.value:g}",
            "divide": f"logits / {self.value:g}",
        }[self.kind]

    def kind_text(self) -> str:
        """What it does, naming the config field instead of a value: the same for every model of a type."""
        return {"softcap": "soft-cap c·tanh(z/c)", "scale": "logits × s", "divide": "logits / s"}[self.kind] + f" ({self.field})"


def logit_op_from_config(config: Any, fields: tuple[str, ...] | None = None) -> LogitOp | None:
    """The post-processing named by the first of `fields` (default: every known field) set in the config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for field, kind in LOGIT_FIELDS.items():
        if fields is not None and field not in fields:
            continue
        value = getattr(text, field, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not (kind != "softcap" and value == 1):
            return LogitOp(kind, float(value), field)
    return None


WEIGHT_CHUNK = 1 << 22  # unembedding entries (vocabulary rows x width) read and cast to float32 at once: 16 MB
ELEMENTWISE_BLOCK = 1 << 17  # logits per block of the per-α element-wise work: 512 kB, so its passes stay in cache


class Readout:
    """h [N, d] -> logits, per-token loss and dloss/dh, all in float32 from the model's own unembedding.

    `modules` are the modules between the residual stream and the logits, the unembedding last
    (a Linear-like module with `weight` [vocab, d'] and maybe `bias`); those before it (the final
    norm, a prediction head) are small and copied in float32. The unembedding is never copied.
    """

    def __init__(self, modules: list[Any], logit_op: LogitOp | None = None, weight_chunk: int = WEIGHT_CHUNK):
        import torch

        *pre, head = modules
        with torch.inference_mode(False):  # built on first use, maybe inside a run: autograd must read these copies
            self.pre = [copy.deepcopy(m).float().eval().requires_grad_(False) for m in pre]
        self.head = head
        self.logit_op = logit_op
        self.weight_chunk = weight_chunk
        self._torch = torch
        weight = head.weight
        self.n_vocab, width = int(weight.shape[0]), int(weight.shape[1])
        self.vocab_step = max(1, weight_chunk // width)
        if len(pre) > 1:
            self.form, self.form_reason = None, "modules between the final norm and the unembedding"
        else:
            self.form, self.form_reason = norm_form(pre[0] if pre else None, width)
        # where the arithmetic runs: the final norm's device (a model spread over devices may keep its head apart)
        self.device = next((p.device for m in self.pre for p in m.parameters()), weight.device)
        self._mapped: tuple[Any, bool] = (None, False)  # (the weight's address and size, whether a file maps it)

    @property
    def modules(self) -> list[Any]:
        return [*self.pre, self.head]

    @property
    def line_algebra(self) -> str:
        """What run.json says about how losses along a line are computed."""
        return line_algebra_text(self.form, self.form_reason)

    # -- the unembedding in chunks ---------------------------------------------------
    def chunks(self):
        """(start, float32 rows of W_U, float32 bias or None) over the vocabulary; float32 weights are views.

        The rows are valid until the next chunk is asked for: use each before taking the next."""
        weight, bias = self.head.weight.detach(), getattr(self.head, "bias", None)
        f32 = dict(device=self.device, dtype=self._torch.float32)
        # Another dtype or device: each chunk is cast into one buffer, valid until the next chunk. A fresh
        # tensor per chunk made the allocator grow the heap by most of a float32 W_U (0.8 GiB for Llama-3.2-1B).
        copied = weight.dtype != self._torch.float32 or weight.device != self._torch.device(self.device)
        buffer = self._torch.empty(min(self.vocab_step, self.n_vocab), weight.shape[1], **f32) if copied else None
        # a checkpoint mapped from its file: each chunk's pages are handed back once read (see residency)
        where = (weight.data_ptr(), weight.numel())
        # /proc/self/maps is read once per weight, not per readout; were the answer stale, the page-by-page
        # check in release_file_pages would still drop only pages that are the file's own
        if self._mapped[0] != where:
            self._mapped = (where, file_mapping_of(weight) is not None)
        mapped = self._mapped[1]
        for start in range(0, self.n_vocab, self.vocab_step):
            part = weight[start : start + self.vocab_step]
            rows = buffer[: part.shape[0]].copy_(part) if buffer is not None else part
            yield start, rows, None if bias is None else bias.detach()[start : start + self.vocab_step].to(**f32)
            if mapped:
                release_file_pages(part)

    def _pre(self, h: torch.Tensor) -> torch.Tensor:
        y = h.to(self.device, self._torch.float32)
        for module in self.pre:
            y = module(y)
        return y

    def _target_rows(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = self.head.weight.detach(), getattr(self.head, "bias", None)
        index, f32 = targets.to(weight.device), dict(device=self.device, dtype=self._torch.float32)
        return weight[index].to(**f32), None if bias is None else bias.detach()[index].to(**f32)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        torch = self._torch
        y = self._pre(h)
        out = torch.empty(y.shape[0], self.n_vocab, dtype=torch.float32, device=y.device)
        for start, rows, bias in self.chunks():
            out[:, start : start + rows.shape[0]] = torch.nn.functional.linear(y, rows, bias)
        return self.logit_op.apply_(out) if self.logit_op else out

    def loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy, holding one vocabulary chunk of logits at a time."""
        torch = self._torch
        with torch.no_grad():
            y = self._pre(h)
            targets = targets.to(y.device)
            if self.n_vocab <= self.vocab_step:  # one chunk: the fused cross-entropy kernel
                ((_, rows, bias),) = self.chunks()
                z = torch.nn.functional.linear(y, rows, bias)
                return torch.nn.functional.cross_entropy(
                    self.logit_op.apply_(z) if self.logit_op else z, targets, reduction="none"
                )
            lse = torch.full((y.shape[0],), float("-inf"), device=y.device)
            for _, rows, bias in self.chunks():
                z = torch.nn.functional.linear(y, rows, bias)
                if self.logit_op:
                    self.logit_op.apply_(z)
                lse = torch.logaddexp(lse, torch.logsumexp(z, dim=-1))
            w_t, b_t = self._target_rows(targets)
            z_t = (y * w_t).sum(-1) + (b_t if b_t is not None else 0)
            if self.logit_op:
                self.logit_op.apply_(z_t)
        return lse - z_t

    def loss_and_grad(self, h: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cross-entropy of `targets` read out from h [N, d], and dCE/dh [N, d], in float32.

        Autograd carries the gradient through the norm and any pre-head module; the unembedding's
        and the post-processing's part, ((softmax - onehot) · f'(z)) @ W_U, is written out. Each
        chunk of W_U is read once for the logits and once for the gradient; the logits of the
        tokens handed in are held once, chunk by chunk, and become dCE/dz in place.
        """
        torch = self._torch
        with torch.inference_mode(False), torch.enable_grad():
            x = h.detach().to(self.device, torch.float32).clone().requires_grad_(True)
            y = x
            for module in self.pre:
                y = module(y)
        targets = targets.to(self.device)
        with torch.inference_mode(False), torch.no_grad():
            y_ = y.detach()
            parts = []
            for _, rows, bias in self.chunks():
                z = torch.nn.functional.linear(y_, rows, bias)
                parts.append(self.logit_op.apply_(z) if self.logit_op else z)
            loss, grad_y = self._loss_and_grad_from_logits(parts, targets, y_.shape[1])
        if x is y:  # no norm before the unembedding
            return loss, grad_y
        with torch.inference_mode(False):
            (grad,) = torch.autograd.grad(y, x, grad_outputs=grad_y)
        return loss, grad.detach()

    def _loss_and_grad_from_logits(self, parts: list, targets: torch.Tensor, width: int):
        """Loss and dCE/dy from post-processed logits held chunk by chunk (the chunks become dCE/dz)."""
        torch = self._torch
        op = self.logit_op
        n = targets.shape[0]
        if not parts:
            raise ValueError("no logits to read out: the vocabulary is empty")
        lse = torch.logsumexp(torch.stack([torch.logsumexp(z, dim=-1) for z in parts]), dim=0)
        z_t = torch.empty(n, device=targets.device)
        grad_y = torch.zeros(n, width, device=targets.device)
        rows_index = torch.arange(n, device=targets.device)
        for (start, rows, _), z in zip(self.chunks(), parts):
            inside = (targets >= start) & (targets < start + z.shape[1])
            z_t[inside] = z[rows_index[inside], targets[inside] - start]
            for r0 in range(0, n, ROW_CHUNK):  # the slope's temporary is at most ROW_CHUNK rows
                block = z[r0 : r0 + ROW_CHUNK]
                slope = op.slope(block) if op else None
                block.sub_(lse[r0 : r0 + ROW_CHUNK, None]).exp_()
                if slope is not None:
                    block.mul_(slope)
            # (p - onehot) · f'(z): the target's entry loses f'(z_t)
            slope_t = op.slope(z_t[inside]) if op else 1.0
            z[rows_index[inside], targets[inside] - start] -= slope_t
            grad_y.addmm_(z, rows)
        return lse - z_t, grad_y

    # -- along a line -----------------------------------------------------------------
    def _bias_logits_chunks(self):
        """C = W_U b + b_U per vocabulary chunk, or None where both are absent."""
        norm_bias = self.form.bias if self.form is not None else None
        for start, rows, bias in self.chunks():
            c = rows @ norm_bias if norm_bias is not None else None
            if bias is not None:
                c = bias if c is None else c + bias
            yield start, rows, c

    def line_losses(
        self, h: torch.Tensor, deltas: list[torch.Tensor], alphas: list[float], targets: torch.Tensor
    ) -> torch.Tensor:
        """Per-token loss at h + αΔ for every Δ in `deltas` and α in `alphas`: [len(deltas), len(alphas), N].

        From the products A and B (one matmul per vocabulary chunk for h and every Δ) where the norm
        has an affine form; otherwise the full readout at every point (`line_algebra` says which).
        """
        torch = self._torch
        if self.form is None:
            return torch.stack([torch.stack([self.loss(h + a * d if a else h, targets) for a in alphas]) for d in deltas])
        f32 = dict(device=self.device, dtype=torch.float32)
        with torch.no_grad():
            return self._line_from_products(h.to(**f32), [d.to(**f32) for d in deltas], alphas, targets.to(self.device))

    def _line_from_products(self, h, deltas, alphas, targets):
        """Losses [K, A, N] along the lines h + αΔ_k."""
        torch = self._torch
        form, op = self.form, self.logit_op
        if form is None:
            raise ValueError("no line algebra without a norm form; line_losses reads out in full")
        n, k = h.shape[0], len(deltas)
        alpha = torch.tensor(alphas, dtype=torch.float64, device=h.device)
        c_h = form.centred(h)
        c_d = torch.stack([form.centred(d) for d in deltas])  # [K, N, d]
        if form.identity:
            inv_sigma = torch.ones(k, len(alphas), n, device=h.device)
        else:  # σ²(α) = (|c_h|² + 2α c_h·c_Δ + α²|c_Δ|²)/d + eps, in float64
            hh = c_h.double().pow(2).sum(-1)
            hd = (c_d.double() * c_h.double()).sum(-1)
            dd = c_d.double().pow(2).sum(-1)
            a = alpha[None, :, None]
            var = (hh[None, None] + 2 * a * hd[:, None] + a * a * dd[:, None]) / h.shape[1] + form.eps
            inv_sigma = var.rsqrt().float()  # [K, A, N]
        u = form.scaled(torch.cat([c_h[None], c_d]))  # [K + 1, N, d]
        w_t, b_t = self._target_rows(targets)
        at_target = (u * w_t).sum(-1)  # [K + 1, N]
        c_t = (w_t @ form.bias if form.bias is not None else 0) + (b_t if b_t is not None else 0)
        lse = torch.full((k, len(alphas), n), float("-inf"), device=h.device)
        flat = u.reshape((k + 1) * n, -1)
        buffer = torch.empty(min(ELEMENTWISE_BLOCK, n * min(self.vocab_step, self.n_vocab)), device=h.device)
        for _, rows, c in self._bias_logits_chunks():
            products = (flat @ rows.T).reshape(k + 1, n, -1)
            torch.logaddexp(lse, self._chunk_lse(products, alphas, inv_sigma, c, buffer), out=lse)
            del products
        z_t = (at_target[0][None, None] + alpha.float()[None, :, None] * at_target[1:, None]) * inv_sigma + c_t
        if op:
            op.apply_(z_t)
        return lse - z_t

    def _chunk_lse(self, products, alphas, inv_sigma, c, buffer):
        """log-sum-exp over one vocabulary chunk of op((A + αB_k)/σ_k(α) + C) for every Δ_k and α: [K, A, N].

        Row block by row block, every (k, α) of a block before the next, so that the block of A and
        B and the element-wise passes over it stay in cache. α = 0 is h itself: done for k = 0 only.
        """
        torch, op = self._torch, self.logit_op
        a_c = products[0]
        n, width = a_c.shape
        k = products.shape[0] - 1
        out = torch.empty(k, len(alphas), n, device=a_c.device)
        step = max(1, buffer.numel() // width)
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            z = buffer[: (r1 - r0) * width].view(r1 - r0, width)
            for j in range(k):
                b_c = products[j + 1, r0:r1]
                for i, alpha in enumerate(alphas):
                    if alpha == 0.0 and j > 0:
                        out[j, i, r0:r1] = out[0, i, r0:r1]
                        continue
                    if alpha:
                        torch.add(a_c[r0:r1], b_c, alpha=alpha, out=z)
                    else:
                        z.copy_(a_c[r0:r1])
                    scale = inv_sigma[j, i, r0:r1, None]
                    if c is not None:
                        torch.addcmul(c, z, scale, out=z)
                    else:
                        z.mul_(scale)
                    if op:
                        op.apply_(z)
                    top = z.amax(-1, keepdim=True)
                    out[j, i, r0:r1] = z.sub_(top).exp_().sum(-1).log_().add_(top[:, 0])
        return out

    def loss_grad_and_steps(self, h: torch.Tensor, deltas: list[torch.Tensor], targets: torch.Tensor):
        """(loss at h, dloss/dh, [loss at h + Δ for each Δ]): the first-order check's readouts.

        One α per Δ needs one product per Δ either way (B = W_U(w ⊙ c_Δ), or W_U norm(h + Δ)), so the
        line algebra saves no product here; the direct loss, one chunk of logits at a time through a
        fused log-sum-exp, is the cheaper element-wise path (measured on the demo and GPT-2 shapes).
        """
        loss, grad = self.loss_and_grad(h, targets)
        return loss, grad, [self.loss(h + d.to(h.device), targets) for d in deltas]


def describe_norm(norm: Any, d_model: int) -> str:
    """Name a final norm by what it computes, not by its class: LayerNorm, RMSNorm, (1 + w) variants, none."""
    import torch

    if norm is None:
        return "none"
    module = copy.deepcopy(norm).double().cpu().eval()  # a width-sized copy, probed on the CPU wherever the model is
    generator = torch.Generator().manual_seed(0)
    x = 10 * torch.randn(3, d_model, generator=generator, dtype=torch.float64)  # eps is negligible at this scale
    with torch.no_grad():
        out = module(x)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    centred = x - x.mean(-1, keepdim=True)
    shapes = {
        "LayerNorm": centred / centred.pow(2).mean(-1, keepdim=True).sqrt(),
        "RMSNorm": x / x.pow(2).mean(-1, keepdim=True).sqrt(),
    }
    scales = {"": weight, " (1 + w)": None if weight is None else 1 + weight} if weight is not None else {" without weight": 1}
    for shape_name, normed in shapes.items():
        for scale_name, scale in scales.items():
            want = normed * scale + (bias if bias is not None else 0)
            if want.shape == out.shape and torch.allclose(out, want, rtol=1e-6, atol=1e-6):
                return shape_name + scale_name
    return type(norm).__name__


class NormForm:
    """A final norm written as the affine pieces the line algebra needs: y = scale ⊙ c(x) / σ(x) + bias.

    c centres x (LayerNorm) or not (RMSNorm); σ(x) = sqrt(mean(c(x)²) + eps). `identity` is no norm at all.
    Found by what the module computes (checked in float64 against the formula), never by its class.
    """

    def __init__(self, name: str, centre: bool, scale, bias, eps: float, identity: bool = False):
        self.name, self.centre, self.scale, self.bias, self.eps, self.identity = name, centre, scale, bias, eps, identity

    def centred(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True) if self.centre else x

    def scaled(self, c: torch.Tensor) -> torch.Tensor:
        return c * self.scale if self.scale is not None else c


def norm_form(norm: Any, d_model: int) -> tuple[NormForm | None, str]:
    """(the norm's affine form, a word on why) or (None, why not): LayerNorm, RMSNorm, w or (1 + w), no norm."""
    import torch

    if norm is None:
        return NormForm("none", False, None, None, 0.0, identity=True), "no final norm"
    weight = getattr(norm, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 1:
        d_model = int(weight.shape[0])
    try:
        name = describe_norm(norm, d_model)
    except Exception:  # noqa: BLE001 - a module that is no norm of this width at all
        return None, f"{type(norm).__name__} before the unembedding is not a norm of the residual width"
    if name not in NORM_FORMS:
        return None, f"final norm {name} is not LayerNorm or RMSNorm (w or 1 + w)"
    centre, plus_one = NORM_FORMS[name]
    module = copy.deepcopy(norm).double().cpu().eval()
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    scale = None if weight is None else (1 + weight.detach() if plus_one else weight.detach())
    form64 = NormForm(name, centre, scale, None if bias is None else bias.detach(), 0.0)
    # at a small scale eps matters: take the one the module names, else the one its output implies
    # (σ = |scaled(c)| / |out - bias|), and check the formula there
    x = 1e-2 * torch.randn(3, d_model, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        out = module(x)
        c = form64.centred(x)
        unbiased = out - form64.bias if form64.bias is not None else out
        implied = (form64.scaled(c).norm(dim=-1) / unbiased.norm(dim=-1)).pow(2) - c.pow(2).mean(-1)
        named = next(
            (
                getattr(norm, k)
                for k in ("eps", "variance_epsilon", "epsilon")
                if isinstance(getattr(norm, k, None), (int, float))
            ),
            None,
        )
        form64.eps = float(named) if named is not None else max(0.0, float(implied.mean()))
        want = form64.scaled(c / (c.pow(2).mean(-1, keepdim=True) + form64.eps).sqrt())
        want = want + form64.bias if form64.bias is not None else want
    # float32 inside the module (Cohere's norm upcasts to it) is ~1e-7 of the row's scale
    if out.shape != want.shape or not torch.allclose(out, want, rtol=1e-6, atol=1e-6 * float(want.abs().max())):
        return None, f"final norm {name} does not compute the formula with eps {form64.eps:g}"
    eps = form64.eps
    device = norm_device(norm)
    f32 = dict(dtype=torch.float32, device=device)
    return NormForm(
        name,
        centre,
        None if scale is None else scale.to(**f32),
        None if form64.bias is None else form64.bias.to(**f32),
        float(eps),
    ), name


def norm_device(module: Any) -> torch.device:
    import torch

    for p in module.parameters():
        return p.device
    return torch.device("cpu")


NORM_FORMS = {
    "LayerNorm": (True, False),
    "LayerNorm (1 + w)": (True, True),
    "LayerNorm without weight": (True, False),
    "RMSNorm": (False, False),
    "RMSNorm (1 + w)": (False, True),
    "RMSNorm without weight": (False, False),
}


def line_algebra_text(form: NormForm | None, reason: str) -> str:
    if form is not None:
        return f"exact from products: logits(α) = (A + αB)/σ(α) + C ({form.name})"
    return f"full readout at every α ({reason})"
