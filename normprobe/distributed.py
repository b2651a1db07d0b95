"""Scale-out: torch.distributed under torchrun, and --shard i/N slices for schedulers.

Ranks step in lockstep: after every batch each rank all-reduces (tokens, still running, failed),
so the progress bar on rank 0 shows totals over all ranks, and a rank whose probe or forward
raises stops every rank with its message instead of leaving them hanging.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from .errors import NormprobeError


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world()[1] > 1


def local_device(device: str) -> str:
    """Under torchrun on GPUs, each rank takes the GPU of its local rank."""
    if is_distributed() and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def init() -> None:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("NORMPROBE_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise NormprobeError(f"invalid --shard {text!r}; use I/N, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise NormprobeError(f"invalid --shard {text!r}: need 0 <= I < N")
    return index, count


class LocalSync:
    """The single-process stand-in: no communication."""

    rank, size = 0, 1

    def step(self, tokens: int, active: bool, error: BaseException | None) -> tuple[int, bool]:
        if error is not None:
            raise error
        return tokens, active

    def totals(self, done: dict[str, Any]) -> dict[str, Any]:
        return done

    def gather(self, state: Any) -> list[Any]:
        return [state]


class TorchSync:
    """Lockstep steps, totals and state gathering over torch.distributed."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        init()
        self.dist, self.torch = dist, torch
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.device = "cuda" if dist.get_backend() == "nccl" else "cpu"

    def step(self, tokens: int, active: bool, error: BaseException | None) -> tuple[int, bool]:
        flags = self.torch.tensor([tokens, int(active), int(error is not None)], dtype=self.torch.int64, device=self.device)
        self.dist.all_reduce(flags)
        if int(flags[2]):
            messages: list[Any] = [None] * self.size
            self.dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
            if error is not None:
                raise error
            failed = next(i for i, m in enumerate(messages) if m)
            raise NormprobeError(f"rank {failed} failed: {messages[failed]}")
        return int(flags[0]), bool(int(flags[1]))

    def totals(self, done: dict[str, Any]) -> dict[str, Any]:
        keys = ("batches", "tokens", "windows")
        summed = self.torch.tensor([done[k] for k in keys], dtype=self.torch.int64, device=self.device)
        self.dist.all_reduce(summed)
        docs = self.torch.tensor([done["docs"]], dtype=self.torch.int64, device=self.device)
        self.dist.all_reduce(docs, op=self.dist.ReduceOp.MAX)
        return {**done, **{k: int(v) for k, v in zip(keys, summed.tolist())}, "docs": int(docs)}

    def gather(self, state: Any) -> list[Any]:
        states: list[Any] = [None] * self.size
        self.dist.all_gather_object(states, state)
        return states


def make_sync():
    return TorchSync() if is_distributed() else LocalSync()
