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
so a new kind plugs in by being parsed here and built by `make_readout`. The model readout is the
exception: it has no per-layer logits, so `make_readout` returns a `ModelObjective` (kind "model")
and the probes dispatch on the kind to their own passes through the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NormprobeError
from .logit import LogitReadout
from .tuned import CONFIG_FILE, PARAMS_FILE, TunedReadout, _file_sha256, load_translators, read_lens_config


@dataclass(frozen=True)
class ReadoutSpec:
    """A parsed `--readout`: `logit`, `model`, or `tuned` with the lens folder."""

    kind: str
    path: Path | None = None

    def describe(self) -> dict[str, Any]:
        """What run.json records, and what resume compares (a retrained lens is another readout)."""
        if self.kind in ("logit", "model") or self.path is None:
            return {"kind": self.kind}
        config = read_lens_config(self.path)
        return {
            "kind": "tuned",
            "path": str(self.path),
            "params_sha256": _file_sha256(self.path / PARAMS_FILE),
            "base_model": config.get("base_model_name_or_path"),
        }

    @property
    def text(self) -> str:
        """The canonical `--readout` value: logit, model, or tuned: with the folder's absolute path."""
        return f"tuned:{self.path}" if self.kind == "tuned" else self.kind

    @property
    def label(self) -> str:
        return {"logit": "logit lens", "model": "the model's own loss (no lens)"}.get(self.kind, f"tuned lens ({self.path})")


def parse_readout(spec: str | ReadoutSpec | None) -> ReadoutSpec:
    """Check a `--readout` value without loading any model: the folder and its two files exist."""
    if isinstance(spec, ReadoutSpec):
        return spec
    text = (spec or "logit").strip()
    if text in ("logit", "model"):
        return ReadoutSpec(text)
    if not text.startswith("tuned:") or not text[len("tuned:") :].strip():
        raise NormprobeError(f"--readout must be model, logit or tuned:DIR (a tuned-lens folder), not {text!r}")
    try:
        path = Path(text[len("tuned:") :].strip()).expanduser().resolve()
        is_dir = path.is_dir()
    except (OSError, RuntimeError) as exc:  # a symlink loop: RuntimeError from resolve(), ELOOP from stat()
        raise NormprobeError(
            f"tuned lens folder {text[len('tuned:') :].strip()} cannot be opened: "
            f"{getattr(exc, 'strerror', None) or ' '.join(str(exc).split())[:200]}"
        ) from None
    if not is_dir:
        raise NormprobeError(f"tuned lens folder not found: {path}")
    from ..lock import live_holder

    holder = live_holder(path)
    if holder is not None:  # `lens train` holds the folder's lock while it writes the lens
        raise NormprobeError(
            f"tuned lens folder {path} is being written by another normprobe process "
            f"(pid {holder if holder > 0 else 'unknown'}); use it when the training has finished"
        )
    missing = [f for f in (CONFIG_FILE, PARAMS_FILE) if not (path / f).is_file()]
    if missing:
        raise NormprobeError(f"tuned lens folder {path} has no {' or '.join(missing)} (expected the tuned-lens format)")
    read_lens_config(path)
    return ReadoutSpec("tuned", path)


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


def make_readout(model, spec: str | ReadoutSpec | None = "logit"):
    """The readout for a loaded model, built once per (model, spec); a lens for another model is refused."""
    spec = parse_readout(spec)
    cached = model.__dict__.setdefault(READOUT_CACHE, {})
    if spec not in cached:
        if spec.kind == "model":
            from .model import ModelObjective

            cached[spec] = ModelObjective(model)
        elif spec.kind == "tuned" and spec.path is not None:
            cached[spec] = TunedReadout(model, load_translators(spec.path, model))
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
