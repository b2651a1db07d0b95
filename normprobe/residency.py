"""Handing back the pages of a checkpoint's weights that a readout has finished reading.

Hugging Face maps a safetensors checkpoint into memory; a weight's page joins this process's
resident set when first read and stays there. A forward reads the embedding's rows for its tokens
only, but a readout reads the whole unembedding (0.5 GB for a 128k vocabulary in bfloat16), once per
layer. After each chunk, `release_file_pages` drops the chunk's pages from this process's page table
(madvise MADV_DONTNEED). Only pages that are still the file's own are dropped: /proc/self/pagemap
says which, so a weight changed in place (its pages copied on write) is never touched. The file's
pages stay in the kernel's page cache, and the next read maps them again without reading the disk.
Linux only; elsewhere, and for memory that is not a mapped file, it does nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Any

MADV_DONTNEED = 4
_PRESENT, _FILE_PAGE = 1 << 63, 1 << 61
_LINUX = sys.platform.startswith("linux")
_PAGE = os.sysconf("SC_PAGE_SIZE") if _LINUX else 4096
_state: dict[str, Any] = {}


def file_mapping_of(tensor: Any) -> tuple[int, int] | None:
    """The (start, end) addresses of the mapped file that holds all of this CPU tensor's bytes, or None."""
    if not _LINUX or tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.numel() == 0:
        return None
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                low, high = (int(a, 16) for a in fields[0].split("-"))
                if low <= start < high:
                    path = fields[5].strip() if len(fields) > 5 else ""
                    # a regular file's mapping ("[heap]", "[anon:...]" and deleted files are not)
                    if end <= high and path.startswith("/") and not path.endswith("(deleted)"):
                        return low, high
                    return None
    except OSError:
        return None
    return None


def release_file_pages(tensor: Any) -> int:
    """Drop the resident pages of `tensor` (inside a mapped file, see `file_mapping_of`) that are still
    the file's own; return how many bytes were dropped. The caller checked the mapping."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE  # whole pages inside the tensor
    if last <= first:
        return 0
    libc = _libc()
    if libc is None:
        return 0
    n_pages = (last - first) // _PAGE
    try:
        pid, fd = _state.get("pagemap", (None, None))
        if pid != os.getpid():  # "self" is resolved at open: a forked child opens its own
            fd = os.open("/proc/self/pagemap", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            _state["pagemap"] = (os.getpid(), fd)
        raw = os.pread(fd, 8 * n_pages, 8 * (first // _PAGE))
    except OSError:
        return 0
    import numpy as np

    wanted = _PRESENT | _FILE_PAGE
    droppable = (np.frombuffer(raw, dtype=np.uint64) & np.uint64(wanted)) == np.uint64(wanted)
    edges = np.flatnonzero(np.diff(np.concatenate(([False], droppable, [False])).astype(np.int8)))
    dropped = 0
    for begin, stop in zip(edges[::2].tolist(), edges[1::2].tolist()):  # runs of droppable pages
        length = (stop - begin) * _PAGE
        if libc.madvise(_void_p(first + begin * _PAGE), length, MADV_DONTNEED) == 0:
            dropped += length
    return dropped


def _libc() -> Any:
    if "libc" not in _state:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            libc.madvise.restype = ctypes.c_int
            _state["libc"] = libc
        except (OSError, AttributeError):
            _state["libc"] = None
    return _state["libc"]


def _void_p(address: int) -> Any:
    import ctypes

    return ctypes.c_void_p(address)
