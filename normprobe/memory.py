"""How much memory a run may use, and the batch size that follows from it.

The budget is normprobe's own working set (activations, what the probes keep, a readout chunk),
on top of the model's weights, which are already resident when the batch size is chosen:
- what is free now (accelerator memory, else the host's MemAvailable or the cgroup's room),
  minus a margin for the allocator and the rest of the process;
- and, unless the user gave `--max-memory`, at most half the device's (or machine's) memory;
- with `--max-memory`, at most that, however much is free.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import NormprobeError

DEFAULT_TOKEN_BUDGET = 8192  # tokens per batch on the CPU: more do not make it faster
READOUT_CHUNK = 1 << 24  # logits (tokens x vocabulary) a readout's loss and gradient hold at once: 64 MB in float32
LENS_BLOCK = 1 << 25  # logits the lens probe reads out at once (normprobe.probes.lens): 128 MB in float32
# set aside beside the windows: three float32 buffers of the larger (logits, softmax, gradient or reference)
READOUT_BYTES = 3 * 4 * max(READOUT_CHUNK, LENS_BLOCK)
KEPT_VECTORS = 48  # float32 d_model-vectors per token: the forward's working set and what a streaming probe keeps
# float32 d_model-vectors per token and layer that the model readout's backward keeps (measured: 37 on GPT-2 small)
BACKWARD_VECTORS = 40
MARGIN_FRACTION = 0.10  # of the device's memory, kept free for the allocator, the tokenizer and the rest
MIN_MARGIN = 256 << 20
MAX_WINDOWS = 256
UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str | int, option: str = "--max-memory") -> int:
    """'8GB' (10^9), '8GiB' or '8G' (2^30), '512MB', or a number of bytes, as bytes."""
    if isinstance(text, bool):
        raise NormprobeError(f"{option} must be a size like 8GB or 512MiB (got {text!r})")
    if isinstance(text, int):
        value, unit = float(text), ""
    else:
        match = _SIZE.match(str(text))
        if not match or match.group(2).lower() not in UNITS:
            raise NormprobeError(f"{option} must be a size like 8GB, 8GiB or 512MB (got {text!r})")
        value, unit = float(match.group(1)), match.group(2).lower()
    size = value * UNITS[unit]
    if not math.isfinite(size) or size < 1 << 20:
        raise NormprobeError(f"{option} must be at least 1MiB (got {text!r})")
    return int(size)


def format_size(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def _meminfo() -> dict[str, int]:
    found = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    found[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found


def _cgroup_room() -> tuple[int, int] | None:
    """(limit, limit minus usage) of this process's cgroup v2, when it has a limit."""
    try:
        limit_text = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit_text == "max":
            return None
        limit, used = int(limit_text), int(open("/sys/fs/cgroup/memory.current").read().strip())
    except (OSError, ValueError):
        return None
    return limit, max(0, limit - used)


def device_memory(device: str) -> tuple[int, int]:
    """(free, total) bytes: the accelerator's, or the host's (its cgroup's where that is smaller)."""
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        return int(free), int(total)
    info = _meminfo()
    free, total = info.get("MemAvailable", 8 << 30), info.get("MemTotal", 16 << 30)
    cgroup = _cgroup_room()
    if cgroup is not None:
        total, free = min(total, cgroup[0]), min(free, cgroup[1])
    return free, total


@dataclass(frozen=True)
class BatchChoice:
    """The batch size a run uses and why, as run.json records it."""

    batch_size: int
    reason: str
    budget_bytes: int | None = None  # the working set allowed, when the size was computed
    window_bytes: int | None = None  # the estimated working set of one window

    def meta(self) -> dict[str, Any]:
        """What run.json records beside `batch_size`."""
        return {
            "batch_size_reason": self.reason,
            "memory_budget_bytes": self.budget_bytes,
            "window_bytes_estimate": self.window_bytes,
        }


def window_bytes(d_model: int, n_heads: int, seq_len: int, eager_attention: bool, backward_layers: int = 0) -> int:
    """Estimated working set of one window: activations and probe state per token, eager attention's rows.

    With `backward_layers` (the model readout) every layer's activations are kept for one backward
    pass, eager attention's rows included, so depth enters.
    """
    layers_kept = max(1, backward_layers)
    per_token = 4 * d_model * (KEPT_VECTORS + BACKWARD_VECTORS * backward_layers) + (
        2 * 4 * n_heads * seq_len * layers_kept if eager_attention else 0
    )
    return per_token * seq_len


def memory_budget(device: str, max_memory: int | None) -> tuple[int, str]:
    """Bytes normprobe's own working set may take on `device`, and how that was decided."""
    free, total = device_memory(device)
    margin = max(MIN_MARGIN, int(MARGIN_FRACTION * total))
    room = max(0, free - margin)
    where = "GPU" if device.startswith("cuda") else "machine"
    said = f"{format_size(free)} free minus a {format_size(margin)} margin"
    if max_memory is not None:
        if max_memory <= room:
            return max_memory, f"--max-memory {format_size(max_memory)} ({said} allows {format_size(room)})"
        return room, f"{said}, below --max-memory {format_size(max_memory)}"
    half = total // 2
    if half < room:
        return half, f"half the {where}'s {format_size(total)} ({said} would allow more; raise it with --max-memory)"
    return room, said


def choose_batch_size(
    model: Any,
    seq_len: int,
    eager_attention: bool = False,
    max_memory: int | None = None,
    batch_size: int | None = None,
    resumed: int | None = None,
    backward: bool = False,
) -> BatchChoice:
    """The batch size: the user's, the resumed run's, or as many windows as the memory budget holds."""
    if batch_size is not None:
        return BatchChoice(batch_size, "given by --batch-size")
    if resumed is not None:
        return BatchChoice(resumed, "the resumed run's")
    device = str(model.device)
    budget, why = memory_budget(device, max_memory)
    one = window_bytes(model.d_model, model.n_heads, seq_len, eager_attention, model.n_layers if backward else 0)
    fits = max(0, budget - READOUT_BYTES) // one
    size = max(1, min(MAX_WINDOWS, fits))
    reason = f"{size} window(s) of {seq_len} tokens at about {format_size(one)} each fit {format_size(budget)}: {why}"
    if not device.startswith("cuda") and size * seq_len > DEFAULT_TOKEN_BUDGET:
        size = max(1, DEFAULT_TOKEN_BUDGET // seq_len)
        reason = (
            f"{size} window(s) of {seq_len} tokens: on the CPU at most {DEFAULT_TOKEN_BUDGET} tokens per batch "
            f"(more are not faster), within {format_size(budget)}: {why}"
        )
    elif fits < 1:
        reason = (
            f"1 window of {seq_len} tokens (about {format_size(one + READOUT_BYTES)} with the readout) "
            f"exceeds the budget of {format_size(budget)} ({why}); shorten --seq-len to stay within it"
        )
    elif fits > MAX_WINDOWS:
        reason = f"{MAX_WINDOWS} windows, the most per batch, within {format_size(budget)}: {why}"
    return BatchChoice(size, reason, budget, one)


# The document bootstrap keeps, per replicate and layer, a weight and a weighted sum (float64) for up to
# REPLICATE_GROUPS_PER_LAYER groups over all probes, and its tables and claims then hold each as a row of
# about REPLICATE_ROW_BYTES: the bound below keeps all of it within a quarter of the host's memory budget.
REPLICATE_GROUPS_PER_LAYER = 32
REPLICATE_ROW_BYTES = 2 * 8 + 64
REPLICATE_SHARE = 4


def replicate_bound(n_layers: int, passes: int, max_memory: int | None) -> tuple[int, str]:
    """The most `--replicates` a run of `n_layers` layers and `passes` passes (the model's and each baseline's)
    may ask for: a quarter of the host's memory budget over the bytes each replicate takes."""
    budget, why = memory_budget("cpu", max_memory)
    per_replicate = (n_layers + 1) * REPLICATE_GROUPS_PER_LAYER * REPLICATE_ROW_BYTES * max(1, passes)
    return max(2, budget // REPLICATE_SHARE // per_replicate), f"a quarter of {format_size(budget)} ({why})"


def check_replicates(replicates: int, n_layers: int, passes: int, max_memory: int | None) -> None:
    """Refuse, before anything is allocated, a bootstrap larger than the memory budget holds."""
    bound, why = replicate_bound(n_layers, passes, max_memory)
    if replicates > bound:
        raise NormprobeError(
            f"--replicates {replicates} needs more memory than the run may use: with {n_layers} layers and "
            f"{passes} pass(es) at most {bound} replicates fit {why}"
        )


def to_device(tensor: Any, device: Any) -> Any:
    """A host tensor on `device`. To a GPU through pinned memory, without waiting: a copy from pageable
    memory would hold the host until the GPU has finished the work queued before it."""
    if str(device).startswith("cuda"):
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
