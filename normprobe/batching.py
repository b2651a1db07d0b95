"""From documents to padded batches: tokenise, add BOS, split into windows, sort by length."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

if TYPE_CHECKING:
    import torch


@dataclass
class Window:
    doc_index: int
    tokens: list[int]


@dataclass
class Batch:
    """A padded batch. `mask` is True on real tokens; `has_next` on real tokens whose next token is real."""

    tokens: "torch.Tensor"  # [B, T] int64
    mask: "torch.Tensor"  # [B, T] bool
    has_next: "torch.Tensor"  # [B, T] bool
    next_tokens: "torch.Tensor"  # [B, T] int64 (meaningless where not has_next)
    positions: "torch.Tensor"  # [B, T] int64
    doc_indices: list[int]

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())


def windows_of(doc_index: int, ids: list[int], seq_len: int, bos: int | None) -> Iterator[Window]:
    """Split one document's token ids into windows of at most seq_len, each starting with BOS if given."""
    body = seq_len - (1 if bos is not None else 0)
    if body < 1:
        raise ValueError("seq_len must leave room for at least one token after BOS")
    for start in range(0, max(len(ids), 1), body):
        chunk = ids[start : start + body]
        if not chunk:
            return
        yield Window(doc_index, ([bos] if bos is not None else []) + chunk)


def iter_windows(docs: Iterable[str], encode: Callable[[str], list[int]], seq_len: int, bos: int | None,
                 max_docs: int | None = None, max_tokens: int | None = None,
                 slice_of: tuple[int, int] | None = None) -> Iterator[Window]:
    """Windows in document order; stops cleanly at max_docs documents or max_tokens tokens.

    With slice_of=(i, n), only documents whose index is i modulo n are tokenised (shards, ranks).
    """
    n_tokens = 0
    for doc_index, doc in enumerate(docs):
        if max_docs is not None and doc_index >= max_docs:
            return
        if slice_of is not None and doc_index % slice_of[1] != slice_of[0]:
            continue
        for window in windows_of(doc_index, encode(doc), seq_len, bos):
            if max_tokens is not None:
                room = max_tokens - n_tokens
                if room <= 0:
                    return
                if len(window.tokens) > room:
                    window = Window(window.doc_index, window.tokens[:room])
            n_tokens += len(window.tokens)
            yield window


def iter_batches(windows: Iterable[Window], batch_size: int, pad_id: int, device: str,
                 sort_buffer: int = 64) -> Iterator[Batch]:
    """Group windows into batches; within each buffer of `sort_buffer` batches, sort by length to cut padding."""
    buffer: list[Window] = []
    for window in windows:
        buffer.append(window)
        if len(buffer) >= batch_size * sort_buffer:
            yield from _flush(buffer, batch_size, pad_id, device)
            buffer = []
    if buffer:
        yield from _flush(buffer, batch_size, pad_id, device)


def _flush(buffer: list[Window], batch_size: int, pad_id: int, device: str) -> Iterator[Batch]:
    ordered = sorted(buffer, key=lambda w: len(w.tokens), reverse=True)
    for start in range(0, len(ordered), batch_size):
        yield collate(ordered[start : start + batch_size], pad_id, device)


def collate(windows: list[Window], pad_id: int, device: str) -> Batch:
    import torch

    width = max(len(w.tokens) for w in windows)
    tokens = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.bool)
    for row, window in enumerate(windows):
        tokens[row, : len(window.tokens)] = torch.tensor(window.tokens, dtype=torch.long)
        mask[row, : len(window.tokens)] = True
    has_next = torch.zeros_like(mask)
    has_next[:, :-1] = mask[:, 1:]
    next_tokens = torch.zeros_like(tokens)
    next_tokens[:, :-1] = tokens[:, 1:]
    positions = torch.arange(width).expand(len(windows), width).clone()
    return Batch(
        tokens=tokens.to(device), mask=mask.to(device), has_next=has_next.to(device),
        next_tokens=next_tokens.to(device), positions=positions.to(device),
        doc_indices=[w.doc_index for w in windows],
    )
