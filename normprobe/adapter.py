"""The model adapter: the only module that knows TransformerLens hook names and family quirks.

`load_model` boots a `TransformerBridge` on raw Hugging Face weights (no LayerNorm folding,
no weight centring), so every norm measured is a norm of the model's real hidden states.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import NormprobeError, did_you_mean
from .families import REFUSED, SHORT_NAMES, Family, family_for
from .jsonio import read_json
from .logit_readout import Readout, describe_norm, line_algebra_text, logit_op_from_config, norm_form

if TYPE_CHECKING:
    import torch

SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
# Sites inside the attention block; every family has them. The pattern is [batch, query head, query, key].
ATTENTION_SITES = {"attn_pattern": "attn.hook_pattern"}
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
DEMO_DIR = Path(__file__).parent / "demo"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved without loading anything."""

    name: str  # what the user typed
    kind: str  # "demo", "local" or "hub"
    location: str  # folder path or Hub id
    revision: str | None = None
    checkpoint_index: int | None = None
    checkpoint_value: int | None = None


def parse_dtype(dtype: str) -> str:
    key = str(dtype).replace("torch.", "").lower()
    if key not in DTYPES:
        raise NormprobeError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return DTYPES[key]


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(device_map: str | None, device: str = "auto") -> str | None:
    """Check --device-map before anything loads: one of accelerate's strategies, and not with --device."""
    if device_map is None:
        return None
    if device_map not in DEVICE_MAPS:
        raise NormprobeError(f"--device-map must be one of {', '.join(DEVICE_MAPS)} (got {device_map!r})")
    if device not in ("auto", None):
        raise NormprobeError(f"--device-map {device_map} places the model itself; leave out --device {device}")
    return device_map


def check_model_name(name: str) -> None:
    """Refuse a likely typo of `demo` or a short name at once, without loading or asking the Hub.

    A name is refused only when it is not `demo`, a short name, a short name's Hub id or an existing path,
    has no '/', and is close (difflib) to `demo` or a short name: `demmo`, `pythia70m`. Any other name
    without '/' may be a Hub id (`gpt2`, `distilgpt2`) and is left to the Hub or its cache.
    """
    if name == "demo" or name in SHORT_NAMES or "/" in name or os.sep in name or name in SHORT_NAMES.values():
        return
    if Path(name).expanduser().exists():
        return
    hint = did_you_mean(name, ["demo", *SHORT_NAMES])
    if hint:
        raise NormprobeError(f"model {name!r} is not demo, a short name (`normprobe models` lists them) or a local folder{hint}")


def resolve_source(
    name: str, revision: str | None = None, checkpoint_index: int | None = None, checkpoint_value: int | None = None
) -> ModelSource:
    """Turn a user's model name into a source and check what can be checked without loading."""
    extra: dict[str, Any] = dict(revision=revision, checkpoint_index=checkpoint_index, checkpoint_value=checkpoint_value)
    if name == "demo":
        return ModelSource(name, "demo", str(DEMO_DIR), **extra)
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or os.sep + os.sep in name:
        if not path.is_dir():
            raise NormprobeError(f"model path {name} is not a folder (expected a Hugging Face model folder)")
        return ModelSource(name, "local", str(path), **extra)
    check_model_name(name)
    hub_id = SHORT_NAMES.get(name, name)
    if name.count("/") > 1 or not name.strip():
        raise NormprobeError(f"model {name!r} is neither an existing folder nor a Hub name like 'gpt2' or 'org/model'")
    return ModelSource(name, "hub", hub_id, **extra)


def _read_config(folder: Path) -> dict:
    return read_json(folder / "config.json", f"model folder {folder} has no config.json; is it a Hugging Face model folder?")


def check_architecture(model_type: str | None, where: str) -> None:
    if family_for(model_type or "") is None:
        reason = REFUSED[model_type] if model_type in REFUSED else _registry_reason(model_type)
        raise NormprobeError(f"{where}: architecture {model_type!r} is not supported: {reason}")


def _registry_reason(model_type: str | None) -> str:
    """Why a model type outside both libraries' causal-LM registries is refused, from those registries."""
    from transformers.models.auto import configuration_auto as configs
    from transformers.models.auto import modeling_auto as models

    listed = "; `normprobe models` lists the supported model types"
    if model_type not in configs.CONFIG_MAPPING_NAMES:
        return "unknown to Hugging Face transformers (models that need remote code are not supported)" + listed
    if model_type in models.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "encoder-decoder, not a decoder-only causal LM" + listed
    if model_type in models.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return "vision-language wrapper: load its text model" + listed
    if model_type in models.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        name = models.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
        return f"TransformerLens 4 has no adapter for {name}" + listed
    if model_type in models.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder (masked LM), not a causal LM" + listed
    return "not a causal language model in Hugging Face transformers" + listed


def validate_source(source: ModelSource) -> dict | None:
    """Fail fast on a model that cannot load: missing folder parts, unsupported type, offline and uncached.

    Returns the model's config.json as a dict when it could be read without loading anything.
    """
    if source.kind in ("demo", "local"):
        folder = Path(source.location)
        if source.kind == "demo" and not (folder / "config.json").exists():
            raise NormprobeError(f"the demo model is missing from the installed package ({folder})")
        config = _read_config(folder)
        if not any((folder / f).exists() for f in WEIGHT_FILES) and not list(folder.glob("*.safetensors")):
            raise NormprobeError(f"model folder {folder} has no weights (expected model.safetensors or pytorch_model.bin)")
        check_architecture(config.get("model_type"), f"model folder {folder}")
        return config
    return _check_hub_reachable(source)


def config_n_layers(config: dict | None) -> int | None:
    for key in ("n_layer", "num_hidden_layers", "num_layers"):
        if config and isinstance(config.get(key), int):
            return config[key]
    return None


def _check_hub_reachable(source: ModelSource) -> dict | None:
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE, HF_HUB_OFFLINE
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    cached = try_to_load_from_cache(source.location, "config.json", revision=source.revision)
    if isinstance(cached, str):
        config = read_json(Path(cached), f"{cached} is missing")
        check_architecture(config.get("model_type"), f"model {source.location}")
        return config
    if HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or not _hub_resolvable():
        raise NormprobeError(_not_found_message(source, HF_HUB_CACHE))
    return None


def _hub_resolvable() -> bool:
    """Whether the Hub's host name resolves: without DNS the loader would retry for half a minute."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub.constants import ENDPOINT

    host = urlparse(ENDPOINT).hostname
    if not host:
        return True
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _not_found_message(source: ModelSource, cache: str) -> str:
    where = f" ({source.location})" if source.location != source.name else ""
    return (
        f"model {source.name!r}{where} is not a local folder and is not in the Hugging Face cache "
        f"at {cache}, and the Hub cannot be reached; pass a local model folder, point HF_HOME at a cache that "
        "holds it, or run once with network (HF_HUB_OFFLINE=1 then keeps it offline)"
    )


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise NormprobeError(f"device {device!r} requested but CUDA is not available")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_model(
    name_or_path: str,
    device: str = "auto",
    dtype: str = "float32",
    *,
    revision: str | None = None,
    checkpoint_index: int | None = None,
    checkpoint_value: int | None = None,
    device_map: str | None = None,
    n_devices: int | None = None,
    max_memory_per_device: dict | None = None,
    offload_folder: str | None = None,
) -> ModelAdapter:
    """Load a causal LM through TransformerBridge on its raw weights and wrap it in an adapter.

    `name_or_path` is `demo`, a local Hugging Face folder, a Hub id or a TransformerLens-style short name
    (`gpt2-small`, `pythia-70m`, ...). The weights load straight onto `device` in `dtype`. With
    `device_map` ("auto", ...) accelerate spreads them over the devices there are, within
    `max_memory_per_device` ({0: "20GiB", "cpu": "60GiB"}, Hugging Face's `max_memory`) where given,
    offloading the rest to `offload_folder`; `adapter.placement()` says where each part went.
    """
    parse_device_map(device_map, device)
    source = resolve_source(name_or_path, revision, checkpoint_index, checkpoint_value)
    validate_source(source)
    return ModelAdapter.from_source(
        source,
        device=device,
        dtype=dtype,
        device_map=device_map,
        n_devices=n_devices,
        max_memory_per_device=max_memory_per_device,
        offload_folder=offload_folder,
    )


def _boot_error(source: ModelSource, exc: BaseException) -> NormprobeError:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if source.kind == "hub" and any(
        s in text
        for s in (
            "offline",
            "couldn't connect",
            "Connection",
            "resolve",
            "not a valid model identifier",
            "does not appear to have",
        )
    ):
        from huggingface_hub.constants import HF_HUB_CACHE

        return NormprobeError(_not_found_message(source, HF_HUB_CACHE))
    where = source.location
    if "safetensors" in text.lower() or "header" in text.lower() or "unpickl" in text.lower() or "corrupt" in text.lower():
        return NormprobeError(f"cannot load the weights of {where}: the weights file looks corrupt ({text[:160]})")
    return NormprobeError(f"cannot load model {where}: {type(exc).__name__}: {text[:200]}")


def _own_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.location, revision=source.revision)
    except Exception:  # noqa: BLE001 - fall back to the bridge's tokenizer
        return None


def _bridge_class() -> Any:
    """TransformerLens's bridge, imported without the notebook warning its progress bars raise where ipywidgets
    is missing (normprobe draws no notebook bars, so the warning would only mislead), and without pytest.

    TransformerLens imports pytest, if it is installed, only to mark one of its helpers as no test
    (`exploratory_utils`), and carries on without it: 0.13 s and 6 MB that a run never uses. pandas,
    pyarrow and `datasets` it imports too; they load at their first use (normprobe.deferred_imports).
    """
    import sys
    import warnings

    from .deferred_imports import deferring

    hide_pytest = "pytest" not in sys.modules
    if hide_pytest:
        sys.modules["pytest"] = None  # type: ignore[assignment]  # `import pytest` raises ImportError
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="IProgress not found")
            try:
                with deferring():  # pandas, pyarrow and `datasets` wait until used (normprobe.deferred_imports)
                    from transformer_lens.model_bridge import TransformerBridge
            except Exception:  # noqa: BLE001 - a TransformerLens that uses them at import: import it plainly
                for name in [n for n in sys.modules if n == "transformer_lens" or n.startswith("transformer_lens.")]:
                    del sys.modules[name]
                from transformer_lens.model_bridge import TransformerBridge
    finally:
        if hide_pytest and sys.modules.get("pytest", False) is None:
            del sys.modules["pytest"]
    return TransformerBridge


@contextmanager
def _booting_lean(TransformerBridge: Any) -> Iterator[None]:
    """While booting: split q/k/v only when needed (fused_qkv), and hide `W_E_pos` from the hook scan.

    The bridge's boot reads every public attribute of itself looking for hook points, twice; its
    `W_E_pos` property concatenates W_E and W_pos, a vocabulary-sized copy (0.2 GB for GPT-2-medium)
    that also makes every page of the embedding resident, which a forward pass never reads whole.
    """
    from .fused_qkv import deferred_split

    costly = TransformerBridge.__dict__.get("W_E_pos")

    def hidden(self: Any) -> Any:
        raise AttributeError("W_E_pos")  # the scan skips attributes that raise this

    if isinstance(costly, property):
        TransformerBridge.W_E_pos = property(hidden)
    try:
        with deferred_split():
            yield
    finally:
        if isinstance(costly, property):
            TransformerBridge.W_E_pos = costly


class ModelAdapter:
    """Neutral questions about a loaded model: depth, width, sites, hook names, readout, tokens."""

    def __init__(self, bridge: Any, source: ModelSource, device: str, dtype: str, tokenizer: Any = None):
        self.bridge = bridge
        self.source = source
        self.device = device
        self.dtype = dtype
        self.random_init = False  # a random-init baseline's model (normprobe.baselines): a lens is checked on the trained one
        self.hf_model = bridge.original_model
        self.hf_config = self.hf_model.config
        # TransformerLens gives a tokenizer without BOS the EOS as BOS; keep the model's own tokenizer instead.
        self.tokenizer = tokenizer if tokenizer is not None else bridge.tokenizer
        check_architecture(self.hf_config.model_type, f"model {source.location}")
        family = family_for(self.hf_config.model_type)
        if family is None:  # check_architecture refuses what no family covers; this keeps the type honest
            raise NormprobeError(f"model {source.location}: no family covers model type {self.hf_config.model_type!r}")
        self.family: Family = family
        self.n_layers = int(bridge.cfg.n_layers)
        self.d_model = int(bridge.cfg.d_model)
        self.d_vocab = int(self._head().weight.shape[0])
        self.n_ctx = int(bridge.cfg.n_ctx)
        self.n_heads = int(bridge.cfg.n_heads)
        from .attention import HEAD_INPUT

        hooks = bridge.hook_dict
        self._has_head_input = HEAD_INPUT in hooks  # where a pass over the blocks stops (attention.without_head)
        # a site exists when every layer has it (hybrids can lack attn_out on their convolution layers)
        self.sites = tuple(s for s in SITES if all(f"blocks.{l}.hook_{s}" in hooks for l in range(self.n_layers)))
        self._readout: Readout | None = None
        self._fast_attention_gap: float | None = None  # checked once per loaded model
        self._lean_forward: dict[str, Any] = {"use_cache": False, "logits_to_keep": 1}
        self.device_map: str | None = None  # what the user asked accelerate for, if anything
        from .activation_kernel import fuse_tanh_gelu

        self.activation = fuse_tanh_gelu(self.hf_model)  # (what runs, why)

    def release_weights(self) -> None:
        """Drop the modules and weights; the tokenizer and the facts read at load stay (`token_strings`,
        `d_vocab`, ...). The runner calls this on a model it loaded, before the run's tables are made.

        The tensors are emptied in place: the bridge's modules refer to each other, so dropping them
        would free their memory only at the next full garbage collection (0.3 s and more in a large heap).
        """
        import torch

        modules = [m for m in (self.bridge, self.hf_model) if m is not None]
        self.bridge = self.hf_model = self._readout = None
        # the bridge holds the Hugging Face modules too: each tensor once
        tensors = {id(t): t for module in modules for t in (*module.parameters(), *module.buffers())}
        with torch.inference_mode(False), torch.no_grad():
            for tensor in tensors.values():
                tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)

    def __repr__(self) -> str:
        return (
            f"<ModelAdapter {self.source.name!r} ({self.family.name}): {self.n_layers} layers, d_model {self.d_model}, "
            f"{self.dtype} on {self.device}>"
        )

    @classmethod
    def from_source(
        cls,
        source: ModelSource,
        device: str = "auto",
        dtype: str = "float32",
        device_map: str | None = None,
        n_devices: int | None = None,
        max_memory_per_device: dict | None = None,
        offload_folder: str | None = None,
    ) -> ModelAdapter:
        import torch

        TransformerBridge = _bridge_class()
        dtype = parse_dtype(dtype)
        kwargs: dict[str, Any] = dict(dtype=getattr(torch, dtype))
        resolved_device = None
        if device_map or n_devices:
            kwargs.update(
                device_map=device_map, n_devices=n_devices, max_memory=max_memory_per_device, offload_folder=offload_folder
            )
        else:
            resolved_device = pick_device(device)
            if resolved_device == "cpu":
                kwargs["device"] = resolved_device
            else:
                # Through accelerate each tensor goes straight to the device; with `device` the bridge
                # would load the whole model on the CPU first and then move it.
                kwargs["device_map"] = {"": resolved_device}
        for key in ("revision", "checkpoint_index", "checkpoint_value"):
            if getattr(source, key) is not None:
                kwargs[key] = getattr(source, key)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # normprobe draws its own bar; keep stderr to one line on errors
        try:
            with _booting_lean(TransformerBridge):
                bridge = TransformerBridge.boot_transformers(source.location, **kwargs)
        except NormprobeError:
            raise
        except Exception as exc:  # noqa: BLE001 - every loader failure becomes one line
            raise _boot_error(source, exc) from exc
        bridge.eval()
        adapter = cls(bridge, source, resolved_device or str(bridge.cfg.device), dtype, tokenizer=_own_tokenizer(source))
        adapter.device_map = device_map if device_map or n_devices else None
        return adapter

    @classmethod
    def from_hf_model(cls, hf_model: Any, tokenizer: Any, name: str = "in-memory model", device: str = "cpu") -> ModelAdapter:
        """Wrap a Hugging Face causal LM already in memory (the bridge takes it over; keep a copy to compare)."""
        TransformerBridge = _bridge_class()

        check_architecture(hf_model.config.model_type, name)
        with _booting_lean(TransformerBridge):
            bridge = TransformerBridge.boot_transformers(
                tokenizer.name_or_path, hf_model=hf_model, device=device, tokenizer=tokenizer
            )
        bridge.eval()
        source = ModelSource(name, "memory", name)
        return cls(bridge, source, device, parse_dtype(str(next(hf_model.parameters()).dtype)), tokenizer=tokenizer)

    # -- sites and hooks -------------------------------------------------
    def hook_name(self, site: str, layer: int) -> str:
        if site not in SITES and site not in ATTENTION_SITES:
            raise NormprobeError(f"unknown site {site!r}; sites are {', '.join(SITES + tuple(ATTENTION_SITES))}")
        if site in SITES and site not in self.sites:
            raise NormprobeError(f"model {self.source.location} has no {site} (it is a {self.block_kind} block)")
        if not 0 <= layer < self.n_layers:
            raise NormprobeError(f"layer {layer} is out of range for {self.source.location} (0..{self.n_layers - 1})")
        if site in ATTENTION_SITES:
            return f"blocks.{layer}.{ATTENTION_SITES[site]}"
        return f"blocks.{layer}.hook_{site}"

    @staticmethod
    def layer_of_hook(hook_name: str) -> int | None:
        """The block a hook sits in (`blocks.{l}.`), or None for hooks outside the blocks."""
        parts = hook_name.split(".", 2)
        return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None

    def has_hook(self, hook_name: str) -> bool:
        return hook_name in self.bridge.hook_dict

    def resolve_hook(self, point: str | tuple[str, int]) -> str:
        """A probe's hook point as a TransformerLens hook name: names pass through, (site, layer) resolves."""
        if isinstance(point, tuple):
            return self.hook_name(*point)
        return point

    @property
    def block_kind(self) -> str:
        if "resid_mid" in self.sites:
            return "sequential"
        return "parallel" if "attn_out" in self.sites else "one mixer per layer"

    # -- readout ----------------------------------------------------------
    def _component(self, name: str) -> Any:
        """The Hugging Face module behind one of the bridge's top-level components (or None)."""
        component = getattr(self.bridge, name, None) if name in self.bridge.adapter.component_mapping else None
        return getattr(component, "original_component", component)

    def _head(self) -> Any:
        return self._component("unembed")

    def final_norm(self) -> Any:
        return self._component("ln_final")

    def _pre_head(self) -> list[Any]:
        """Modules between the final norm and the unembedding: a prediction head, OPT's projection."""
        found = [self._component("prediction_head")]
        for path in self.family.pre_head:
            try:
                found.append(operator.attrgetter(path)(self.hf_model))
            except AttributeError:
                continue
        return [m for m in found if m is not None]

    @property
    def readout(self) -> Readout:
        """Final norm, pre-head modules (float32 copies), the model's own unembedding (read in chunks, never
        copied) and logit post-processing; built on first use, so a run that never reads out builds none."""
        if self._readout is None:
            modules = [m for m in (self.final_norm(), *self._pre_head(), self._head()) if m is not None]
            self._readout = Readout(modules, logit_op_from_config(self.hf_config, self.family.logit_fields))
        return self._readout

    @property
    def line_readout(self) -> str:
        """How updates and linesearch read losses along h + αΔ: from shared products, or the full readout
        at every point where the final norm has no affine form (said so in run.json); builds no readout."""
        if self._readout is not None:
            return self._readout.line_algebra
        pre = [m for m in (self.final_norm(), *self._pre_head()) if m is not None]
        head = self._head().weight
        return line_algebra_text(
            *(
                (None, "modules between the final norm and the unembedding")
                if len(pre) > 1
                else norm_form(pre[0] if pre else None, int(head.shape[1]))
            )
        )

    @property
    def readout_built(self) -> bool:
        return self._readout is not None

    # -- tokens -------------------------------------------------------------
    @property
    def bos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    def encode(self, text: str) -> list[int]:
        """Token ids of text as text: a literal "<|endoftext|>" in a document is characters, never the BOS token
        (only the runner puts BOS at position 0, so the no-bos baseline really has none)."""
        try:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        except TypeError:  # a tokenizer without the option
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        return [self.tokenizer.decode([i]) for i in ids]

    @property
    def pad_token_id(self) -> int:
        for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(self.tokenizer, attr, None)
            if value is not None:
                return int(value)
        return 0

    # -- running -------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor, hooks: list[tuple[str, Callable]]) -> None:
        """One forward pass with the given hooks attached; it ends before the unembedding (no logits)."""
        from .attention import without_head

        hooks, head_reached = without_head(hooks, self._has_head_input)

        def run(**lean: Any) -> None:
            try:
                self.bridge(tokens, attention_mask=attention_mask, return_type=None, **lean)
            except head_reached:
                pass  # every hook has fired; the head is not needed

        with self.bridge.hooks(fwd_hooks=hooks):
            try:
                # no KV cache (it grows with depth), and logits for one position only where a hook reads the head
                run(**self._lean_forward)
            except TypeError as exc:
                if not self._lean_forward or "unexpected keyword" not in str(exc):
                    raise
                self._lean_forward = {}  # an older model class without these arguments
                run()

    def gradient_pass(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor,
        hooks: list[tuple[str, Callable]],
        grad_hooks: list[tuple[str, Callable]],
        output_grad: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """One forward that tracks gradients along the residual stream, then one backward from the last block.

        The weights take no gradient: autograd starts at block 0's input, made a leaf here, so the
        pass keeps what a forward keeps for one backward and nothing for the weights. `hooks` see
        the tensors that carry gradients (keep references; do not modify them). `output_grad(h)`
        gets the last block's output, detached, and returns dL/dh for it; then, during the one
        backward, each `grad_hooks` function gets dL/d(activation) at its hook.
        """
        import torch

        start, last = self.hook_name("resid_pre", 0), self.hook_name("resid_post", self.n_layers - 1)
        kept: dict[str, torch.Tensor] = {}

        def make_leaf(activation, hook=None):  # the embedding's output: where the gradient stops
            return activation.detach().requires_grad_(True)

        def keep_last(activation, hook=None):
            kept["h"] = activation

        def on_grad(fn):
            def hook(activation, hook=None):
                def receive(grad):
                    fn(grad.detach())  # returns None: the gradient flows on unchanged

                activation.register_hook(receive)

            return hook

        frozen = [p for p in self.bridge.parameters() if p.requires_grad]
        with torch.inference_mode(False), torch.enable_grad():
            try:
                for p in frozen:
                    p.requires_grad_(False)
                # tensors made under inference mode cannot be saved for the backward (the embedding saves its ids)
                self.forward(
                    tokens.clone(),
                    attention_mask.clone(),
                    [(start, make_leaf), *hooks, *[(n, on_grad(fn)) for n, fn in grad_hooks], (last, keep_last)],
                )
                h = kept.pop("h")
                grad = output_grad(h.detach())
                torch.autograd.backward(h, grad.to(h.dtype))
            finally:
                for p in frozen:
                    p.requires_grad_(True)

    def rerun_from(
        self,
        layer: int,
        stream: torch.Tensor,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor,
        hooks: Sequence[tuple[str, Callable]] = (),
    ) -> torch.Tensor:
        """The last block's output when blocks `layer`..n_layers-1 run on `stream` as resid_pre of `layer`.

        Blocks before `layer` are skipped (they pass their input through, and the stream replaces it at
        `layer`), so a rerun costs the blocks it runs; embeddings, masks and positions are computed as
        in a full forward, so every block sees the positions and attention masks it would. `hooks`
        attach as in `forward` (one may replace a component's output). `layer == n_layers` returns
        the stream itself.
        """
        if layer == self.n_layers:
            return stream
        if not 0 <= layer < self.n_layers:
            raise NormprobeError(f"cannot rerun from layer {layer}: {self.source.location} has layers 0..{self.n_layers - 1}")
        kept: dict[str, Any] = {}

        def inject(activation, hook=None):
            return stream.to(activation.device, activation.dtype)

        def keep_last(activation, hook=None):
            kept["h"] = activation

        skipped = list(self.bridge.blocks)[:layer]
        for block in skipped:  # on the instance itself: the bridge forwards attribute writes to the HF module
            block.__dict__["forward"] = _pass_through
        try:
            self.forward(
                tokens,
                attention_mask,
                [
                    (self.hook_name("resid_pre", layer), inject),
                    *hooks,
                    (self.hook_name("resid_post", self.n_layers - 1), keep_last),
                ],
            )
        finally:
            for block in skipped:
                block.__dict__.pop("forward", None)
        h = kept.get("h")
        if h is None or h.shape != stream.shape:
            raise NormprobeError(
                f"rerunning {self.source.location} from layer {layer} gave an output of shape "
                f"{None if h is None else tuple(h.shape)}, not {tuple(stream.shape)}"
            )
        return h

    def select_attention(self, reads_patterns: bool) -> tuple[str, str]:
        """Run eager attention when a probe reads patterns, else sdpa where it agrees with eager on this model.

        Returns (the attention that runs, why).
        """
        from .attention import AGREEMENT_REL, EAGER, FAST, fast_attention_disagreement, use_attention

        if reads_patterns:
            return use_attention(self.bridge, EAGER), "a probe reads attention patterns or norm internals"
        if self._fast_attention_gap is None:
            import torch

            tokens = torch.randint(self.d_vocab, (1, min(24, self.n_ctx)), generator=torch.Generator().manual_seed(0))
            self._fast_attention_gap = fast_attention_disagreement(
                self.bridge, self.hook_name("resid_post", self.n_layers - 1), tokens.to(self.device)
            )
        allowed = AGREEMENT_REL if self.dtype == "float32" else 3e-2
        if self._fast_attention_gap > allowed:
            return use_attention(self.bridge, EAGER), (
                f"{FAST} differed from eager by {self._fast_attention_gap:.2g} (relative) on this model"
            )
        running = use_attention(self.bridge, FAST)
        return running, ("Hugging Face's default" if running == FAST else f"the model offers no {FAST}")

    @property
    def n_params(self) -> int:
        """The checkpoint's parameters: the bridge splits a fused qkv into q, k, v copies, counted once here."""
        from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge

        total = sum(p.numel() for p in self.hf_model.parameters())
        for module in self.bridge.modules():
            if isinstance(module, JointQKVAttentionBridge) and "qkv" in module._modules:
                total -= sum(
                    p.numel() for name in ("q", "k", "v") if name in module._modules for p in module._modules[name].parameters()
                )
        return total

    def placement(self) -> dict[str, Any]:
        """Where the weights are: bytes per device (offloaded ones as "disk") and accelerate's module map."""
        by_device: dict[str, int] = {}
        offloaded = {
            name for name, where in (getattr(self.hf_model, "hf_device_map", None) or {}).items() if str(where) == "disk"
        }
        seen: set[int] = set()
        for param in self.hf_model.parameters():
            if param.device.type == "meta":  # offloaded by accelerate: held on disk (or in its CPU state dict)
                where, size = ("disk" if offloaded else "meta"), param.numel() * param.element_size()
            else:  # a storage once, however many views of it (tied weights, a fused qkv and its split views)
                storage = param.untyped_storage()
                if storage.data_ptr() in seen or not storage.nbytes():
                    continue
                seen.add(storage.data_ptr())
                where, size = str(param.device), storage.nbytes()
            by_device[where] = by_device.get(where, 0) + size
        hf_map = getattr(self.hf_model, "hf_device_map", None) or {"": str(self.device)}
        return {
            "device_map": self.device_map,
            "weight_bytes_by_device": by_device,
            "modules": {k: str(v) for k, v in hf_map.items()} if self.device_map else None,
        }

    # -- facts ---------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        cfg = self.bridge.cfg
        head = self._head().weight
        embed = self._component("embed").weight
        op = logit_op_from_config(self.hf_config, self.family.logit_fields)
        return {
            "family": self.family.name,
            "model_type": self.hf_config.model_type,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": int(cfg.n_heads),
            "d_vocab": self.d_vocab,
            "n_ctx": self.n_ctx,
            "norm_type": describe_norm(self.final_norm(), self.d_model),
            "line_readout": self.line_readout,
            "logit_postprocessing": op.describe() if op else "none",
            "logit_postprocessing_kind": op.kind_text() if op else "none",
            "block": self.block_kind,
            "block_outputs": self.family.block_outputs,
            "positional": str(getattr(cfg, "positional_embedding_type", "unknown")),
            "tied_unembedding": bool(head.data_ptr() == embed.data_ptr()),
            "sites": list(self.sites),
            "bos_token_id": self.bos_token_id,
        }


def _pass_through(*args: Any, **kwargs: Any) -> Any:
    """A skipped block: it returns its input (the block where a rerun starts replaces it anyway)."""
    return args[0] if args else kwargs["hidden_states"]
