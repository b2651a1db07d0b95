"""Which kernels a booted bridge runs: TransformerLens's hookable re-implementations, or Hugging Face's own.

TransformerBridge re-implements attention for most families so that `hook_pattern` fires, which
makes every forward pass eager, and re-implements LayerNorm/RMSNorm in Python so that `hook_scale`
and `hook_normalized` fire. When no probe reads those hooks, each attention bridge is pointed back
at its wrapped Hugging Face module (TransformerLens's own delegating `AttentionBridge.forward`) with
sdpa, Hugging Face's default, and each norm bridge calls its wrapped module. The switch is checked
once per model against the eager pass on a short input; a family where the two disagree stays eager.
With attention delegated, the bridge's split q/k/v copies of fused weights are freed (fused_qkv.py).
"""

from __future__ import annotations

import types
from typing import Any

from .fused_qkv import free_split_copies, restore_split_copies

EAGER, FAST = "eager", "sdpa"
PATTERN_HOOKS = ("hook_pattern", "hook_attn_scores")
NORM_INTERNAL_HOOKS = ("hook_scale", "hook_normalized")
AGREEMENT_REL = 1e-4  # sdpa and eager sum in another order: ~1e-6 relative in float32, far more in half


HEAD_INPUT = "unembed.hook_in"  # fires just before the unembedding reads its weight


class _HeadReached(Exception):
    """Raised at the head's input to end a forward whose hooks have all fired (see `without_head`)."""


def _stop_at_head(activation: Any, hook: Any = None) -> None:
    raise _HeadReached


def without_head(hooks: list, has_head_input: bool) -> tuple[list, type[BaseException]]:
    """`hooks` plus one that ends the forward at the unembedding's input, and the exception it raises.

    A pass that reads only the blocks then never computes logits nor touches the unembedding
    weight: the vocabulary times d_model (206 MB for GPT-2-medium, 525 MB for Llama-3.2-1B) would
    otherwise become resident for a product nobody reads. A hook that reads the head itself keeps it.
    `has_head_input`: HEAD_INPUT is in the bridge's hook_dict (a property rebuilt on every read: ask once).
    """
    if not has_head_input or any(name.startswith(("unembed.", "hook_unembed")) for name, _ in hooks):
        return hooks, _HeadReached
    return [*hooks, (HEAD_INPUT, _stop_at_head)], _HeadReached


def reads_patterns(hook_names: list[str]) -> bool:
    return any(name.endswith(PATTERN_HOOKS + NORM_INTERNAL_HOOKS) for name in hook_names)


def _norm_bridges(bridge: Any) -> list:
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

    return [
        m for m in bridge.modules() if isinstance(m, NormalizationBridge) and getattr(m, "original_component", None) is not None
    ]


def _native_norm_forward(self: Any, hidden_states: Any, **kwargs: Any) -> Any:
    return self.hook_out(self.original_component(self.hook_in(hidden_states)))


def _attention_bridges(bridge: Any) -> list:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    return [m for m in bridge.modules() if isinstance(m, AttentionBridge)]


def _delegate(module: Any) -> None:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    # Bridge components forward attribute writes to the wrapped module; write the instance dict directly.
    module.__dict__["forward"] = types.MethodType(AttentionBridge.forward, module)


def _restore(module: Any) -> None:
    module.__dict__.pop("forward", None)


def _drop_pattern(module: Any, args: Any, output: Any) -> None:
    # TransformerLens keeps each layer's last pattern [batch, heads, T, T]; eager memory would grow with depth
    module.__dict__.pop("_pattern", None)


def _drop_patterns_after_each_layer(modules: list, drop: bool) -> None:
    for module in modules:
        handle = module.__dict__.pop("_normprobe_drop_pattern", None)
        if handle is not None:
            handle.remove()
        if drop:
            module.__dict__["_normprobe_drop_pattern"] = module.register_forward_hook(_drop_pattern)


def _set_hf_attention(hf_model: Any, kind: str) -> str:
    """Ask Hugging Face for `kind`; returns what the model really runs (it may refuse sdpa)."""
    try:
        hf_model.set_attn_implementation(kind)
    except (ValueError, ImportError, AttributeError):
        pass
    return str(getattr(hf_model.config, "_attn_implementation", EAGER) or EAGER)


def use_attention(bridge: Any, kind: str) -> str:
    """Switch the bridge to `kind` (eager or sdpa) and return what Hugging Face's attention now runs.

    `sdpa` on a model whose Hugging Face class offers none still delegates to its own module, running
    eager: no probe reads the bridge's patterns, and the split q/k/v copies are not needed.
    """
    modules = _attention_bridges(bridge)
    norms = _norm_bridges(bridge)
    _drop_patterns_after_each_layer(modules, drop=kind == EAGER)
    if kind == EAGER:
        for module in modules + norms:
            _restore(module)
        restore_split_copies(bridge)  # the bridge's own attention reads them
        return _set_hf_attention(bridge.original_model, EAGER)
    running = _set_hf_attention(bridge.original_model, FAST)
    for module in modules:
        _delegate(module)
    for module in norms:
        module.__dict__["forward"] = types.MethodType(_native_norm_forward, module)
    free_split_copies(bridge)  # Hugging Face's module reads the fused weights
    return running


def fast_attention_disagreement(bridge: Any, check_hook: str, tokens: Any) -> float:
    """Relative max difference of one hook's activation between Hugging Face's sdpa and eager attention.

    Both run Hugging Face's own modules, so the check needs none of the bridge's split q/k/v copies.
    """
    import torch

    seen: dict[str, torch.Tensor] = {}
    has_head_input = HEAD_INPUT in bridge.hook_dict

    def grab(activation, hook=None):
        seen["x"] = activation.detach().float().clone()

    def once(kind: str) -> torch.Tensor:
        use_attention(bridge, FAST)
        if kind == EAGER:
            _set_hf_attention(bridge.original_model, EAGER)
        hooks, head_reached = without_head([(check_hook, grab)], has_head_input)
        with torch.inference_mode(), bridge.hooks(fwd_hooks=hooks):
            try:
                bridge(tokens, attention_mask=torch.ones_like(tokens), return_type=None)
            except head_reached:
                pass
        return seen.pop("x")

    eager = once(EAGER)
    fast = once(FAST)
    scale = float(eager.abs().max()) or 1.0
    return float((fast - eager).abs().max()) / scale
