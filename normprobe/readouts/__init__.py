"""Readouts: how a probe turns a hidden state h at layer l into next-token logits, a loss and dloss/dh.

- `logit`: the model's own final norm and unembedding (the logit lens), through `model.readout`.
- `model`: no lens: the model's own next-token loss, h_l read through the rest of the network; its
  gradient comes from one backward pass and its losses from reruns (see normprobe.readouts.model).
- `tuned:DIR`: a tuned lens (Belrose et al. 2023) in the tuned-lens package's own format,
  h -> h + A_l h + b_l -> the logit readout. DIR holds `config.json` (TunedLensConfig's fields)
  and `params.pt` (the translators' state dict `0.weight`, `0.bias`, ...), one translator per
  layer; layer l's translator reads h_l = resid_pre of layer l, and the output (layer n_layers)
  is read without one.

Probes obtain a readout only through `make_readout(model, spec)`, which caches one per model and
spec. Every loss and gradient is float32 and exact (autograd through the translator).

A readout is any object with `kind`, `logits(h, layer)`, `loss(h, targets, layer)` and
`loss_and_grad(h, targets, layer)`; the probes use the last two and `normprobe trace` all three,
so a new kind plugs in by being parsed in normprobe.readout_spec and built by `make_readout`. The model readout is the
exception: it has no per-layer logits, so `make_readout` returns a `ModelObjective` (kind "model")
and the probes dispatch on the kind to their own passes through the network.
"""

from __future__ import annotations

from ..errors import NormprobeError
from ..readout_spec import CONFIG_FILE, LENS_TYPE, PARAMS_FILE, ReadoutSpec, parse_readout, read_lens_config
from .logit import LogitReadout
from .tuned import TunedReadout, load_translators

__all__ = [
    "CONFIG_FILE",
    "LENS_TYPE",
    "PARAMS_FILE",
    "LogitReadout",
    "ReadoutSpec",
    "TunedReadout",
    "check_lens_fits_config",
    "make_readout",
    "parse_readout",
    "read_lens_config",
]


def check_lens_fits_config(spec: str | ReadoutSpec | None, model_config: dict | None, model_name: str) -> None:
    """Refuse, before the model loads, a lens whose depth or width differs from the model's config.json."""
    spec = parse_readout(spec)
    if spec.kind != "tuned" or spec.path is None or not model_config:
        return
    lens = read_lens_config(spec.path)
    width = next((model_config[k] for k in ("hidden_size", "n_embd", "d_model") if isinstance(model_config.get(k), int)), None)
    depth = next(
        (model_config[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(model_config.get(k), int)), None
    )
    if (width is not None and width != lens["d_model"]) or (depth is not None and depth != lens["num_hidden_layers"]):
        raise NormprobeError(
            f"tuned lens {spec.path} was made for a model with d_model {lens['d_model']} and {lens['num_hidden_layers']} "
            f"layers (base {lens.get('base_model_name_or_path')!r}); {model_name} has d_model {width} and {depth} layers"
        )


READOUT_CACHE = "_readouts"  # the adapter's own attribute: a readout refers back to its model, so a weak-keyed
# cache outside the model would keep every model alive; kept on the model, the cycle goes with it


def make_readout(model, spec: str | ReadoutSpec | None = "logit", allow_foreign: bool = False):
    """The readout for a loaded model, built once per (model, spec); a lens for another model is refused
    (its recorded unembed_hash is not this model's) unless `allow_foreign` (--allow-foreign-lens).

    The runner, trace and merge build it first, so the probes' own calls find it in the cache."""
    spec = parse_readout(spec)
    cached = model.__dict__.setdefault(READOUT_CACHE, {})
    if spec not in cached:
        if spec.kind == "model":
            from .model import ModelObjective

            cached[spec] = ModelObjective(model)
        elif spec.kind == "tuned" and spec.path is not None:
            cached[spec] = TunedReadout(model, load_translators(spec.path, model, allow_foreign))
        else:
            cached[spec] = LogitReadout(model)
    return cached[spec]


# -- chunking -------------------------------------------------------------------------
def chunked_loss(readout, h, targets, layer: int, vocab_chunk: int, n_vocab: int):
    """Per-token loss with at most ~vocab_chunk logits (tokens x vocab) in memory at once."""
    import torch

    step = max(1, vocab_chunk // n_vocab)
    return torch.cat([readout.loss(h[s : s + step], targets[s : s + step], layer) for s in range(0, h.shape[0], step)])


def chunked_loss_and_grad(readout, h, targets, layer: int, vocab_chunk: int, n_vocab: int):
    import torch

    step = max(1, vocab_chunk // n_vocab)
    parts = [readout.loss_and_grad(h[s : s + step], targets[s : s + step], layer) for s in range(0, h.shape[0], step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _line_step(readout, n_lines: int, vocab_chunk: int) -> int:
    """Token rows per call so that the products (h and every Δ) and a temporary hold about vocab_chunk logits."""
    base = readout.base
    return max(1, vocab_chunk // ((n_lines + 2) * min(base.n_vocab, base.vocab_step)))


def chunked_line_losses(readout, h, deltas, alphas, targets, layer: int, vocab_chunk: int):
    """Readout.line_losses over token rows in blocks: [len(deltas), len(alphas), N]."""
    import torch

    step = _line_step(readout, len(deltas), vocab_chunk)
    return torch.cat(
        [
            readout.line_losses(h[s : s + step], [d[s : s + step] for d in deltas], alphas, targets[s : s + step], layer)
            for s in range(0, h.shape[0], step)
        ],
        dim=-1,
    )


def chunked_loss_grad_and_steps(readout, h, deltas, targets, layer: int, vocab_chunk: int, n_vocab: int):
    """loss_grad_and_steps over token rows in blocks: the logits at h are held whole, as loss_and_grad holds them."""
    import torch

    step = max(1, vocab_chunk // n_vocab)
    parts = [
        readout.loss_grad_and_steps(h[s : s + step], [d[s : s + step] for d in deltas], targets[s : s + step], layer)
        for s in range(0, h.shape[0], step)
    ]
    return (
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        [torch.cat([p[2][k] for p in parts]) for k in range(len(deltas))],
    )
