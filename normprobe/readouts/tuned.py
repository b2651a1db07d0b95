"""The tuned readout: a tuned lens (Belrose et al. 2023) in the tuned-lens package's own format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NormprobeError
from ..readout_spec import CONFIG_FILE, LENS_TYPE, PARAMS_FILE, read_lens_config

if TYPE_CHECKING:
    import torch

# TunedLensConfig's fields (tuned-lens 0.2), written in this order.
CONFIG_FIELDS = (
    "base_model_name_or_path",
    "d_model",
    "num_hidden_layers",
    "bias",
    "base_model_revision",
    "unembed_hash",
    "lens_type",
)


class TunedReadout:
    """A tuned lens: layer l's translator, h + A_l h + b_l, then the logit readout; layer n_layers reads h as is."""

    kind = "tuned"

    def __init__(self, model, translators: torch.nn.ModuleList):
        self._model = model
        self.translators = translators.float().to(model.device).eval().requires_grad_(False)

    @property
    def base(self):
        return self._model.readout

    def translate(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        if layer >= len(self.translators):
            return h.float()
        x = h.float()
        return x + self.translators[layer](x)

    def translate_step(self, delta: torch.Tensor, layer: int) -> torch.Tensor:
        """The translator's linear part applied to a step: T(h + αΔ) = T(h) + α(Δ + A_l Δ)."""
        import torch

        x = delta.float()
        if layer >= len(self.translators):
            return x
        return x + torch.nn.functional.linear(x, self.translators[layer].weight)

    def logits(self, h, layer: int):
        return self.base.logits(self.translate(h, layer))

    def loss(self, h, targets, layer: int):
        return self.base.loss(self.translate(h, layer), targets)

    def loss_and_grad(self, h, targets, layer: int):
        """Loss and dloss/dh: the logit readout's exact gradient at the translated h, carried back by autograd."""
        import torch

        if layer >= len(self.translators):
            return self.base.loss_and_grad(h, targets)
        with torch.inference_mode(False), torch.enable_grad():
            x = h.detach().float().clone().requires_grad_(True)
            y = self.translate(x, layer)
            loss, grad_y = self.base.loss_and_grad(y.detach(), targets)
            (grad,) = torch.autograd.grad(y, x, grad_outputs=grad_y)
        return loss, grad.detach()

    def line_losses(self, h, deltas, alphas, targets, layer: int):
        """The translator is affine, so a line stays a line: translate h, and each Δ by the linear part."""
        return self.base.line_losses(self.translate(h, layer), [self.translate_step(d, layer) for d in deltas], alphas, targets)

    def loss_grad_and_steps(self, h, deltas, targets, layer: int):
        import torch

        if layer >= len(self.translators):
            return self.base.loss_grad_and_steps(h, deltas, targets)
        with torch.inference_mode(False), torch.enable_grad():
            x = h.detach().float().clone().requires_grad_(True)
            y = self.translate(x, layer)
            loss, grad_y, steps = self.base.loss_grad_and_steps(
                y.detach(), [self.translate_step(d, layer) for d in deltas], targets
            )
            (grad,) = torch.autograd.grad(y, x, grad_outputs=grad_y)
        return loss, grad.detach(), steps


# -- the tuned-lens format --------------------------------------------------------
def new_translators(d_model: int, n_layers: int, bias: bool = True) -> torch.nn.ModuleList:
    """Residual translators initialised at zero, so a fresh lens is the logit lens (tuned-lens's init)."""
    import torch

    translators = torch.nn.ModuleList(torch.nn.Linear(d_model, d_model, bias=bias) for _ in range(n_layers))
    with torch.no_grad():
        for t in translators:
            t.weight.zero_()
            if t.bias is not None:
                t.bias.zero_()
    return translators


LENS_MAX_ABS = 1e6  # a translator weight beyond this is no trained lens: float32 readouts of it overflow or mean nothing
LENS_DTYPE = "float32"  # what TunedReadout computes in; the checks read the weights as they will be used


def load_translators(path: Path, model, allow_foreign: bool = False) -> torch.nn.ModuleList:
    """The translators of a tuned-lens folder, checked against the model; never executes code from the file."""
    import torch

    path = Path(path)
    config = read_lens_config(path)
    d_model, n_layers = config["d_model"], config["num_hidden_layers"]
    if (d_model, n_layers) != (model.d_model, model.n_layers):
        raise NormprobeError(
            f"tuned lens {path} was made for a model with d_model {d_model} and {n_layers} layers "
            f"(base {config.get('base_model_name_or_path')!r}); {model.source.name} has d_model {model.d_model} "
            f"and {model.n_layers} layers"
        )
    try:
        state = torch.load(path / PARAMS_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one message
        raise NormprobeError(
            f"cannot read {path / PARAMS_FILE}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        ) from None
    check_lens_identity(config, model, path, allow_foreign)
    translators = new_translators(d_model, n_layers, bias=bool(config.get("bias", True)))
    check_lens_state(state, translators, path / PARAMS_FILE)
    state = {k: v.to(getattr(torch, LENS_DTYPE)) for k, v in state.items()}
    try:
        translators.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise NormprobeError(
            f"{path / PARAMS_FILE} does not hold {n_layers} translators of size {d_model}: {' '.join(str(exc).split())[:200]}"
        ) from None
    return translators


def check_lens_state(state: Any, translators: torch.nn.ModuleList, where: Path) -> None:
    """Refuse, in one line, translator weights that are not real, finite tensors of the lens's shapes.

    A NaN or an infinity in a lens makes every loss it reads non-finite, and a complex tensor would be
    cast to real with a warning: either would give a run whose numbers mean nothing.
    """
    import torch

    expected = translators.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NormprobeError(
            f"{where} does not hold translator tensors (it holds {type(state).__name__}); expected a tuned-lens params.pt"
        )
    for name, tensor in state.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            raise NormprobeError(f"{where}: {name} has shape {tuple(tensor.shape)}, not {tuple(expected[name].shape)}")
        if not tensor.is_floating_point():
            raise NormprobeError(
                f"{where}: {name} holds {str(tensor.dtype).replace('torch.', '')} values, not real floating-point weights"
            )
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise NormprobeError(
                f"{where}: {name} holds {bad} non-finite values (NaN or infinity); this lens cannot be used (retrain it)"
            )
        used = tensor.to(getattr(torch, LENS_DTYPE))  # as the readout will compute with it
        if not bool(torch.isfinite(used).all()):
            bad = int((~torch.isfinite(used)).sum())
            raise NormprobeError(
                f"{where}: {name} holds {bad} values that are infinite in {LENS_DTYPE}, the dtype the readout "
                "computes in; this lens cannot be used (retrain it)"
            )
        largest = float(used.abs().max()) if used.numel() else 0.0
        if largest > LENS_MAX_ABS:
            raise NormprobeError(
                f"{where}: {name} holds a weight of magnitude {largest:.3g}, beyond the {LENS_MAX_ABS:.0e} a trained "
                f"lens stays within ({LENS_DTYPE} readouts of it overflow or mean nothing); retrain it"
            )


def check_lens_identity(config: dict[str, Any], model, path: Path, allow_foreign: bool) -> None:
    """The lens must record the model it was trained for (tuned-lens's unembed_hash) and it must be this one."""
    if allow_foreign or getattr(model, "random_init", False):
        return
    recorded, ours = config.get("unembed_hash"), unembed_hash(model)
    if recorded == ours:
        return
    if not isinstance(recorded, str):
        raise NormprobeError(
            f"tuned lens {path} records no model identity (config.json's unembed_hash is {recorded!r}), so it cannot be "
            f"checked against {model.source.name}; pass --allow-foreign-lens to use it anyway (the run records that)"
        )
    raise NormprobeError(
        f"tuned lens {path} was trained for another model (base {config.get('base_model_name_or_path')!r}: its "
        f"unembed_hash differs from {model.source.name}'s); pass --allow-foreign-lens to use it anyway (the run records that)"
    )


def unembed_hash(model) -> str:
    """tuned-lens's hash of the unembedding matrix (sha256 of numpy's array_str at precision 1)."""
    import numpy as np

    weight = model.hf_model.get_output_embeddings().weight.detach()
    return hashlib.sha256(str.encode(np.array_str(_printable(weight), precision=1))).hexdigest()


def _printable(weight: torch.Tensor):
    """A float32 numpy array that array_str prints as it would print the whole weight, without a copy of it.

    A float32 CPU weight is shared as is. Otherwise, past numpy's print threshold array_str reads only
    the edge rows and columns, so a zeroed array (calloc: pages never touched stay unallocated) holding
    the edge rows prints the same.
    """
    import numpy as np
    import torch

    if weight.device.type == "cpu" and weight.dtype == torch.float32:
        return weight.numpy()
    options = np.get_printoptions()
    edge = options["edgeitems"]
    if weight.numel() <= options["threshold"] or weight.shape[0] <= 2 * edge:
        return weight.cpu().float().numpy()
    out = np.zeros(tuple(weight.shape), dtype=np.float32)
    out[:edge] = weight[:edge].cpu().float().numpy()
    out[-edge:] = weight[-edge:].cpu().float().numpy()
    return out


def save_lens(path: Path, translators: torch.nn.ModuleList, model) -> Path:
    """Write translators in the tuned-lens format: config.json and params.pt, readable by tuned-lens itself."""
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "base_model_name_or_path": model.source.location if model.source.kind != "demo" else "demo",
        "d_model": model.d_model,
        "num_hidden_layers": model.n_layers,
        "bias": translators[0].bias is not None,
        "base_model_revision": model.source.revision,
        "unembed_hash": unembed_hash(model),
        "lens_type": LENS_TYPE,
    }
    state = {k: v.detach().cpu().float().clone() for k, v in translators.state_dict().items()}
    import io

    from ..jsonio import write_atomic

    buffer = io.BytesIO()
    torch.save(state, buffer)
    # each file whole or not at all (temp file, fsync, rename): a full disk never leaves half a lens
    write_atomic(path / PARAMS_FILE, buffer.getvalue())
    write_atomic(path / CONFIG_FILE, (json.dumps({k: config[k] for k in CONFIG_FIELDS}, indent=2) + "\n").encode("utf-8"))
    return path
