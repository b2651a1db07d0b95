"""From documents to padded batches: tokenise, add BOS, split into windows, sort by length."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .memory import to_device

if TYPE_CHECKING:
    import torch


@dataclass
class Window:
    doc_index: int
    tokens: list[int]
    doc_seed: int = 0  # the bootstrap seed of its document (normprobe.bootstrap.text_seed of the text)


@dataclass
class Batch:
    """A padded batch. `mask` is True on real tokens; `has_next` on real tokens whose next token is real."""

    tokens: torch.Tensor  # [B, T] int64
    mask: torch.Tensor  # [B, T] bool
    has_next: torch.Tensor  # [B, T] bool
    next_tokens: torch.Tensor  # [B, T] int64 (meaningless where not has_next)
    positions: torch.Tensor  # [B, T] int64
    doc_indices: list[int]
    doc_seeds: list[int] = field(default_factory=list)
    # [n_windows, B] float64 bootstrap weights of each window's document; the runner sets them
    replicate_weights: Any = None
    lengths: list[int] = field(default_factory=list)  # real tokens per window, known on the host
    # flat [B * T] indices of `mask` and of `mask & (positions > 0)`, made on the host: selecting through them
    # never waits for the GPU (a boolean selection must, to learn its size)
    real_index: Any = None
    later_index: Any = None

    @property
    def n_tokens(self) -> int:
        # from the host's lengths: counting the mask on a GPU would wait for it every batch
        return sum(self.lengths) if self.lengths else int(self.mask.sum())

    def real(self, values: torch.Tensor) -> torch.Tensor:
        """values[mask] for values [B, T, ...]."""
        if self.real_index is None:
            return values[self.mask]
        return values.reshape(-1, *values.shape[2:]).index_select(0, self.real_index)

    def later(self, values: torch.Tensor) -> torch.Tensor:
        """values[mask & (positions > 0)] for values [B, T, ...]: real tokens after each window's first."""
        if self.later_index is None:
            return values[self.mask & (self.positions > 0)]
        return values.reshape(-1, *values.shape[2:]).index_select(0, self.later_index)


PIECE_CHARS = 1 << 16  # a longer document is tokenised piece by piece, only as far as it is used


def windows_of(
    doc_index: int, ids: list[int] | Iterable[list[int]], seq_len: int, bos: int | None, doc_seed: int = 0
) -> Iterator[Window]:
    """Split one document's token ids (a list, or a stream of lists) into windows of at most seq_len,
    each starting with BOS if given."""
    body = seq_len - (1 if bos is not None else 0)
    if body < 1:
        raise ValueError("seq_len must leave room for at least one token after BOS")
    pieces = [ids] if isinstance(ids, list) else ids
    pending: list[int] = []
    for piece in pieces:
        pending.extend(piece)
        while len(pending) >= body:
            chunk, pending = pending[:body], pending[body:]
            yield Window(doc_index, ([bos] if bos is not None else []) + chunk, doc_seed)
    if pending:
        yield Window(doc_index, ([bos] if bos is not None else []) + pending, doc_seed)


def text_pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """A long document in pieces of about `size` characters, each cut just before a space.

    Word-level tokenisers split at spaces anyway, so the pieces' tokens are the document's,
    up to a token at a cut in rare cases; a document of at most `size` characters is one piece.
    """
    start = 0
    while len(text) - start > size:
        cut = text.rfind(" ", start + size // 2, start + size)
        if cut <= start:
            cut = start + size  # no space near: cut anyway, between characters
        yield text[start:cut]
        start = cut
    yield text[start:]


def token_pieces(doc_index: int, doc: str, encode: Callable[[str], list[int]]) -> Iterator[list[int]]:
    """A document's token ids, piece by piece; text the tokenizer rejects is one line naming the document."""
    from .errors import NormprobeError

    for piece in text_pieces(doc):
        try:
            yield encode(piece)
        except (TypeError, ValueError, UnicodeError, OverflowError) as exc:
            raise NormprobeError(
                f"document {doc_index + 1} cannot be tokenised ({type(exc).__name__}: {str(exc)[:200]}); fix or drop it"
            ) from None


def iter_windows(
    docs: Iterable[str],
    encode: Callable[[str], list[int]],
    seq_len: int,
    bos: int | None,
    max_docs: int | None = None,
    max_tokens: int | None = None,
    slice_of: tuple[int, int] | None = None,
) -> Iterator[Window]:
    """Windows in document order; stops cleanly at max_docs documents or max_tokens tokens.

    With slice_of=(i, n), only documents whose index is i modulo n are tokenised (shards, ranks).
    Long documents are tokenised lazily, so max_tokens bounds the work as well as the result.
    """
    from .bootstrap import text_seed

    n_tokens = 0
    for doc_index, doc in enumerate(docs):
        if max_docs is not None and doc_index >= max_docs:
            return
        if slice_of is not None and doc_index % slice_of[1] != slice_of[0]:
            continue
        seed = text_seed(doc) if isinstance(doc, str) else 0
        for window in windows_of(doc_index, token_pieces(doc_index, doc, encode), seq_len, bos, seed):
            if max_tokens is not None:
                room = max_tokens - n_tokens
                if room <= 0:
                    return
                if len(window.tokens) > room:
                    window = Window(window.doc_index, window.tokens[:room], window.doc_seed)
            n_tokens += len(window.tokens)
            yield window
            if max_tokens is not None and n_tokens >= max_tokens:
                return


def iter_batches(windows: Iterable[Window], batch_size: int, pad_id: int, device: str, sort_buffer: int = 64) -> Iterator[Batch]:
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
        tokens=to_device(tokens, device),
        mask=to_device(mask, device),
        has_next=to_device(has_next, device),
        next_tokens=to_device(next_tokens, device),
        positions=to_device(positions, device),
        doc_indices=[w.doc_index for w in windows],
        doc_seeds=[w.doc_seed for w in windows],
        lengths=[len(w.tokens) for w in windows],
        real_index=to_device(mask.reshape(-1).nonzero().squeeze(1), device),
        later_index=to_device((mask & (positions > 0)).reshape(-1).nonzero().squeeze(1), device),
    )
