"""TransformerLens's split q/k/v of fused attention weights: freed while they are not used.

For a fused projection (GPT-2's `c_attn`, GPT-NeoX's `query_key_value`, BLOOM's, Falcon's, MPT's
`Wqkv`), the bridge builds three `nn.Linear`s at boot for its own re-implemented attention. For
GPT-2's `[d_model, 3 d_model]` layout they are views of the fused tensor and cost nothing. Where
the fused layout interleaves heads (GPT-NeoX, BLOOM, Falcon, MPT), a 2-D view cannot express the
slice and they are copies: about a sixth of the model's weights. They are only read by the
bridge's own attention, which runs when a probe reads patterns (eager). With attention delegated
to Hugging Face's module (`attention.use_attention`), the copies are freed, and rebuilt from the
fused weights by the bridge's own split function when eager attention is asked for again.
`deferred_split()` keeps the bridge from building them at boot, so a run that never reads patterns
never holds them, not even while loading.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SPLIT = ("q", "k", "v")
FREED = "_normprobe_split_freed"


def _joint_bridges(bridge: Any) -> list:
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge

    return [
        m
        for m in bridge.modules()
        if isinstance(m, JointQKVAttentionBridge) and getattr(m, "original_component", None) is not None
    ]


def _linears(module: Any) -> list:
    found = []
    for name in SPLIT:
        part = module._modules.get(name)
        linear = getattr(part, "original_component", None) if part is not None else None
        if linear is not None:
            found.append(linear)
    return found


def _fused_storages(module: Any) -> set[int]:
    split = {id(p) for linear in _linears(module) for p in linear.parameters()}
    return {p.untyped_storage().data_ptr() for p in module.original_component.parameters() if id(p) not in split}


def split_copy_bytes(bridge: Any) -> int:
    """Bytes the bridge holds in split q/k/v tensors that are not views of the model's own weights."""
    total = 0
    for module in _joint_bridges(bridge):
        fused = _fused_storages(module)
        for linear in _linears(module):
            for param in linear.parameters():
                if param.numel() and param.untyped_storage().data_ptr() not in fused:
                    total += param.numel() * param.element_size()
    return total


def free_split_copies(bridge: Any) -> int:
    """Replace split q/k/v copies (not views) by empty tensors; returns the bytes freed."""
    import torch

    freed = 0
    for module in _joint_bridges(bridge):
        fused = _fused_storages(module)
        linears = _linears(module)
        params = [(linear, name, p) for linear in linears for name, p in linear.named_parameters(recurse=False)]
        if not params or any(p.numel() and p.untyped_storage().data_ptr() in fused for _, _, p in params):
            continue  # views of the fused weight, or already freed: nothing to gain
        for linear, name, param in params:
            freed += param.numel() * param.element_size()
            setattr(linear, name, torch.nn.Parameter(param.new_empty(0), requires_grad=False))
        module.__dict__[FREED] = True
    return freed


def restore_split_copies(bridge: Any) -> None:
    """Rebuild freed q/k/v from the fused weights with the bridge's own split function."""
    try:
        from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import align_offloaded_subtree
    except ImportError:  # pragma: no cover - older TransformerLens without offload support
        align_offloaded_subtree = None
    for module in _joint_bridges(bridge):
        _build(module, align_offloaded_subtree)


def _build(module: Any, align_offloaded_subtree: Any = None) -> None:
    from contextlib import nullcontext

    if getattr(module.__dict__.get("forward"), "__func__", None) is _build_then_forward:
        del module.__dict__["forward"]
    if module.__dict__.pop(FREED, False):
        aligned = align_offloaded_subtree(module.original_component) if align_offloaded_subtree else nullcontext()
        with aligned:
            rebuilt = module.split_qkv_matrix(module.original_component)
        for name, linear in zip(SPLIT, rebuilt):
            module._modules[name].set_original_component(linear)


def _build_then_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The bridge's own attention run before anything chose a kernel (a forward straight after loading)."""
    try:
        from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import align_offloaded_subtree
    except ImportError:  # pragma: no cover
        align_offloaded_subtree = None
    _build(self, align_offloaded_subtree)
    return self.forward(*args, **kwargs)


def _placeholder() -> Any:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "initializing zero-element tensors is a no-op": it is meant to be empty
        return torch.nn.Linear(0, 0, bias=False)


@contextmanager
def deferred_split() -> Iterator[None]:
    """While booting a bridge: give each fused attention empty q/k/v, marked to be built when first needed."""
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge

    booting = JointQKVAttentionBridge.set_original_component

    def set_without_split(self: Any, original_component: Any) -> None:
        split = self.__dict__.get("split_qkv_matrix")
        if split is None:
            return booting(self, original_component)
        self.__dict__["split_qkv_matrix"] = lambda component: tuple(_placeholder() for _ in SPLIT)
        try:
            booting(self, original_component)
        finally:
            self.__dict__["split_qkv_matrix"] = split
        self.__dict__[FREED] = True
        self.__dict__["forward"] = types.MethodType(_build_then_forward, self)

    JointQKVAttentionBridge.set_original_component = set_without_split
    try:
        yield
    finally:
        JointQKVAttentionBridge.set_original_component = booting
