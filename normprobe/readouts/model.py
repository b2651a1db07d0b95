"""`--readout model`: the model's own next-token loss as the objective, read at every depth.

The logit and tuned readouts read h_l through a lens, an approximation of what the rest of the
network does with it. The model readout takes the model's own objective instead: L is the window's
summed next-token cross-entropy of the model's logits (its final norm, head and logit
post-processing), over every position that has a target. One backward pass per batch, with the
weights frozen, gives the gradient at the END of each step, g_end = dL/dx at each component's output x:

- block l: g at the block's output, resid_post (its update Δ = resid_post - resid_pre ends there);
- attn and mlp: g at the component's output, which is g at the stream it is added to (resid_mid
  for attn in a sequential block, resid_post otherwise), since the output enters only that sum.

An update is judged as an optimisation step is: by the gradient at its START, the point it moves
from. The objective is fixed (the network after the point where the update is added), and the start
point is the stream without the update: g_start = dF/dx at x = h, F the rest of the network from
there. With ablation (`--ablate`) each (layer, component) reruns the network without its update
(`ModelAdapter.rerun_from`, the block's output replaced by its input or the component's output
zeroed) with autograd on, which gives both the loss without the update and g_start.

Per token, descent_cos = cos(Δ, -g_start), step_eta, step_r2 and predicted_change = g_start·Δ come
from that rerun (only with ablation), descent_cos_end = cos(Δ, -g_end) from the one backward pass;
actual_change is the model's loss with the update minus its loss without it, so predicted_change is
its first-order picture at the same point. Ablating at one position moves the loss of every later
position, so the two agree on means, not token by token: summed over a window, both are the update's
effect on the window's loss, exactly for g·Δ's linear picture and to first order for the rerun.
Positions with no target have g = 0 (nothing later reads them) and are left out, not counted as zero
cosines.

Memory: the pass keeps what autograd keeps for one backward, plus references to each layer's
attn_out and mlp_out; the per-token values of a layer are reduced as soon as its gradients
arrive. Reruns (ablation, line search) hold each layer's residual stream and run one partial
forward per layer, component and step size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..memory import READOUT_CHUNK

if TYPE_CHECKING:
    import torch

    from ..adapter import ModelAdapter
    from ..batching import Batch

COMPONENTS = ("attn", "mlp", "block")
COMPONENT_SITES = {"attn": "attn_out", "mlp": "mlp_out"}  # the outputs a rerun scales or zeroes
GRAD_KEYS = {"attn": "attn", "mlp": "mlp", "block": "post"}  # the activation whose gradient each update meets


class ModelObjective:
    """The model readout, as `make_readout(model, "model")` returns it: the model, not a lens."""

    kind = "model"

    def __init__(self, model: ModelAdapter):
        self.model = model


@dataclass
class ObjectivePass:
    """What a batch's pass leaves behind: the model's per-token loss, and each layer's stream if asked."""

    loss: torch.Tensor  # [N] float32, at the positions with a target (batch.has_next), in row order
    streams: dict[int, torch.Tensor]  # layer -> resid_pre of that layer [B, T, d]; n_layers -> the last block's output
    deltas: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # layer -> component -> Δ [N, d] (kept streams)


def token_losses(model: ModelAdapter, h: torch.Tensor, targets: torch.Tensor, vocab_chunk: int = READOUT_CHUNK) -> torch.Tensor:
    """Per-token cross-entropy of the model's own logits read from the last block's output h [N, d]."""
    import torch

    step = max(1, vocab_chunk // model.d_vocab)
    return torch.cat([model.readout.loss(h[s : s + step], targets[s : s + step]) for s in range(0, len(targets), step)])


def _losses_and_grads(model: ModelAdapter, h: torch.Tensor, targets: torch.Tensor, vocab_chunk: int):
    import torch

    step = max(1, vocab_chunk // model.d_vocab)
    parts = [model.readout.loss_and_grad(h[s : s + step], targets[s : s + step]) for s in range(0, len(targets), step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine; NaN where either vector is zero (counted apart, never averaged)."""
    import torch

    denom = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    return torch.where(denom > 0, (a * b).sum(-1) / denom, torch.full_like(denom, float("nan")))


def gradient_steps(
    model: ModelAdapter,
    batch: Batch,
    layers: list[int],
    on_layer: Callable[[int, dict[str, dict[str, torch.Tensor]]], None],
    vocab_chunk: int = READOUT_CHUNK,
    keep_streams: bool = False,
) -> ObjectivePass:
    """One forward and one backward: per-token step values of every layer in `layers`, handed to
    `on_layer(layer, {component: {metric: [N] values}})` as soon as that layer's gradients arrive
    (last layer first). Metrics: descent_cos_end (the gradient at the step's end), update_norm,
    rel_update, total_cos, and next_cos (cos with the next layer's update) where layer + 1 is in
    `layers` too; `keep_streams` also keeps each layer's stream and update for `start_of_step`.
    Rows are the positions with a target, in `batch.has_next` order.
    """
    import torch

    selected = batch.has_next
    targets = batch.next_tokens[selected]
    n_layers = model.n_layers
    wanted = sorted(set(layers))
    names = {
        l: {
            key: model.hook_name(site, l)
            for key, site in (("pre", "resid_pre"), ("post", "resid_post"), ("attn", "attn_out"), ("mlp", "mlp_out"))
        }
        for l in range(n_layers)
    }
    acts: dict[str, torch.Tensor] = {}
    keep_names = {names[0]["pre"], *(name for l in wanted for name in names[l].values())}
    if keep_streams:
        keep_names.update(names[l]["pre"] for l in range(n_layers))

    def keep(name):
        def hook(activation, hook=None):
            acts[name] = activation

        return hook

    def rows(name: str) -> torch.Tensor:
        return acts[name].detach()[selected].float()

    def deltas(l: int) -> dict[str, torch.Tensor]:
        return {
            "attn": rows(names[l]["attn"]),
            "mlp": rows(names[l]["mlp"]),
            "block": rows(names[l]["post"]) - rows(names[l]["pre"]),
        }

    ends: dict[str, torch.Tensor] = {}

    def layer_values(l: int, grads: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        h = rows(names[l]["pre"])
        h_norm = torch.linalg.vector_norm(h, dim=-1)
        mine = deltas(l)
        following = deltas(l + 1) if l + 1 in wanted else None
        if keep_streams:
            result.setdefault("deltas", {})[l] = mine
        values = {}
        for component in COMPONENTS:
            delta, grad = mine[component], grads[component]
            delta_norm = torch.linalg.vector_norm(delta, dim=-1)
            v = {
                "descent_cos_end": _cos(delta, -grad),
                "update_norm": delta_norm,
                "rel_update": delta_norm / h_norm,
                "total_cos": _cos(delta, ends["total"]),
            }
            if following is not None:
                v["next_cos"] = _cos(delta, following[component])
            values[component] = v
        return values

    arrived: dict[int, dict[str, torch.Tensor]] = {}

    def receive(l: int, component: str):
        def take(grad):
            got = arrived.setdefault(l, {})
            got[component] = grad[selected].float()
            if len(got) == len(COMPONENTS):
                with torch.no_grad():
                    on_layer(l, layer_values(l, arrived.pop(l)))

        return take

    result: dict[str, Any] = {}

    def output_grad(h: torch.Tensor) -> torch.Tensor:
        h_rows = h[selected].float()
        loss, grad_rows = _losses_and_grads(model, h_rows, targets, vocab_chunk)
        result["loss"] = loss
        ends["total"] = h_rows - rows(names[0]["pre"])
        if keep_streams:
            result["last"] = h
        grad = torch.zeros(h.shape, dtype=torch.float32, device=h.device)
        grad[selected] = grad_rows
        return grad

    hooks = [(name, keep(name)) for name in sorted(keep_names)]
    grad_hooks = [(names[l][GRAD_KEYS[c]], receive(l, c)) for l in wanted for c in COMPONENTS]
    model.gradient_pass(batch.tokens, batch.mask.long(), hooks, grad_hooks, output_grad)
    if arrived:
        raise RuntimeError(f"the backward reached only part of layers {sorted(arrived)}")
    streams = {}
    if keep_streams:
        streams = {l: acts[names[l]["pre"]].detach() for l in range(n_layers)}
        streams[n_layers] = result["last"]
    return ObjectivePass(result["loss"], streams, result.get("deltas", {}))


def forward_streams(model: ModelAdapter, batch: Batch, layers: list[int], vocab_chunk: int = READOUT_CHUNK) -> ObjectivePass:
    """A plain forward keeping resid_pre of `layers` and of the layers after them, and the model's per-token loss."""
    import torch

    n_layers = model.n_layers
    needed = sorted({m for l in layers for m in (l, l + 1) if m < n_layers})
    streams: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(activation, hook=None):
            streams[layer] = activation

        return hook

    hooks = [(model.hook_name("resid_pre", l), keep(l)) for l in needed]
    hooks.append((model.hook_name("resid_post", n_layers - 1), keep(n_layers)))
    with torch.inference_mode():
        model.forward(batch.tokens, batch.mask.long(), hooks)
        loss = token_losses(model, streams[n_layers][batch.has_next].float(), batch.next_tokens[batch.has_next], vocab_chunk)
    return ObjectivePass(loss, streams)


def rerun_loss(
    model: ModelAdapter,
    batch: Batch,
    streams: dict[int, torch.Tensor],
    layer: int,
    component: str,
    alpha: float = 0.0,
    vocab_chunk: int = READOUT_CHUNK,
) -> torch.Tensor:
    """The model's per-token loss with layer `layer`'s `component` update scaled by `alpha` (0: removed).

    block: the block's output becomes h + α Δ (its input at α = 0) and blocks layer+1.. rerun;
    attn, mlp: the component's output is scaled by α inside block `layer`, which reruns with the rest.
    """
    import torch

    with torch.inference_mode():
        if component == "block":
            h = streams[layer]
            stream = h if alpha == 0.0 else h + alpha * (streams[layer + 1] - h)
            out = model.rerun_from(layer + 1, stream, batch.tokens, batch.mask.long())
        else:

            def scale(activation, hook=None):
                return torch.zeros_like(activation) if alpha == 0.0 else activation * alpha

            hook = (model.hook_name(COMPONENT_SITES[component], layer), scale)
            out = model.rerun_from(layer, streams[layer], batch.tokens, batch.mask.long(), [hook])
        return token_losses(model, out[batch.has_next].float(), batch.next_tokens[batch.has_next], vocab_chunk)


def start_of_step(
    model: ModelAdapter,
    batch: Batch,
    streams: dict[int, torch.Tensor],
    layer: int,
    component: str,
    vocab_chunk: int = READOUT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the model's per-token loss without the update, g_start [N, d]) for layer `layer`'s `component`.

    The network reruns with the update removed (the block's output replaced by its input, or the
    component's output zeroed) and autograd on; g_start is dL/dx at the point the update is added,
    x the stream without it, L the summed loss of the window's positions with a target.
    """
    import torch

    selected, targets = batch.has_next, batch.next_tokens[batch.has_next]
    with torch.inference_mode(False), torch.enable_grad():
        tokens, mask = batch.tokens.clone(), batch.mask.long().clone()  # inference tensors cannot be saved for a backward
        start: dict[str, torch.Tensor] = {}
        if component == "block":
            start["x"] = streams[layer].clone().requires_grad_(True)
            out = model.rerun_from(layer + 1, start["x"], tokens, mask)
        else:

            def zero(activation, hook=None):
                start["x"] = torch.zeros(activation.shape, dtype=activation.dtype, device=activation.device, requires_grad=True)
                return start["x"]

            hook = (model.hook_name(COMPONENT_SITES[component], layer), zero)
            out = model.rerun_from(layer, streams[layer].clone(), tokens, mask, [hook])
        loss, grad_rows = _losses_and_grads(model, out.detach()[selected].float(), targets, vocab_chunk)
        grad = torch.zeros(out.shape, dtype=out.dtype, device=out.device)
        grad[selected] = grad_rows.to(out.dtype)
        (g_start,) = torch.autograd.grad(out, [start["x"]], grad)
    return loss, g_start.detach()[selected].float()


def start_values(
    delta: torch.Tensor, g_start: torch.Tensor, loss_with: torch.Tensor, loss_without: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The step statistics at the step's start: descent_cos, step_eta, step_r2, predicted_change, actual_change."""
    from .steps import step_statistics

    values = step_statistics(delta, g_start)
    values["predicted_change"] = (g_start * delta).sum(-1)
    values["actual_change"] = loss_with - loss_without
    return values


def per_token_steps(
    model: ModelAdapter, batch: Batch, layers: list[int] | None = None, ablate: bool = False, vocab_chunk: int = READOUT_CHUNK
) -> tuple[torch.Tensor, dict[tuple[int, str], dict[str, torch.Tensor]]]:
    """(the model's per-token loss, {(layer, component): {metric: per-token values}}) for one batch.

    What the updates probe reduces under `--readout model`, kept token by token (for tests, traces and
    notebooks; a run never holds it). With `ablate`, the start-of-step values and actual_change too.
    """
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}

    def keep(layer, values):
        for component, v in values.items():
            found[(layer, component)] = v

    done = gradient_steps(model, batch, layers, keep, vocab_chunk, keep_streams=ablate)
    if ablate:
        for layer in layers:
            for component in COMPONENTS:
                without, g_start = start_of_step(model, batch, done.streams, layer, component, vocab_chunk)
                found[(layer, component)].update(start_values(done.deltas[layer][component], g_start, done.loss, without))
    return done.loss, found


def line_search_losses(
    model: ModelAdapter, batch: Batch, layers: list[int], alphas: list[float], vocab_chunk: int = READOUT_CHUNK
) -> Iterator[tuple[int, str, float, torch.Tensor]]:
    """(layer, component, α, the model's per-token loss with that update scaled by α), layer by layer.

    α = 1 is the model as it runs (one forward); every other α reruns the network from the layer.
    """
    if not bool(batch.has_next.any()):
        return
    done = forward_streams(model, batch, layers, vocab_chunk)
    for layer in layers:
        for component in COMPONENTS:
            for alpha in alphas:
                yield (
                    layer,
                    component,
                    alpha,
                    (done.loss if alpha == 1.0 else rerun_loss(model, batch, done.streams, layer, component, alpha, vocab_chunk)),
                )
