"""What a run is asked to do: its options and its corpus, validated before any model loads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from .corpus import InputSpec, iter_documents, sample_documents, validate_input
from .errors import NormprobeError

DEFAULT_SEQ_LEN = 1024
DEFAULT_TOKEN_BUDGET = 8192  # tokens per batch on the CPU


@dataclass
class RunOptions:
    """Everything that decides which numbers a run produces (recorded in run.json)."""

    batch_size: int | None = None
    seq_len: int | None = None
    max_docs: int | None = None
    max_tokens: int | None = None
    prepend_bos: bool = True
    layers: list[int] | None = None
    device: str = "auto"
    dtype: str = "float32"
    shard: tuple[int, int] | None = None
    device_map: str | None = None
    n_devices: int | None = None
    readout: str = "logit"  # logit or tuned:DIR, for probes that read h through a readout
    alphas: list[float] | None = None  # the linesearch probe's step sizes

    def validate(self) -> None:
        for name in ("batch_size", "max_docs", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise NormprobeError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if self.seq_len is not None and self.seq_len < 2:
            raise NormprobeError(f"--seq-len must be at least 2 (got {self.seq_len})")
        if self.layers is not None:
            if not self.layers:
                raise NormprobeError("--layers is empty")
            bad = [l for l in self.layers if l < 0]
            if bad:
                raise NormprobeError(f"invalid layer index {bad[0]}: layers count from 0")
        if self.alphas is not None:
            if not self.alphas or any(a != a or a in (float("inf"), float("-inf")) for a in self.alphas):
                raise NormprobeError(f"--alphas must be finite numbers, e.g. 0,0.5,1,2 (got {self.alphas})")
            self.alphas = sorted(set(float(a) for a in self.alphas))
        from .adapter import parse_dtype
        from .readouts import parse_readout

        parse_readout(self.readout)
        from .distributed import is_distributed

        self.dtype = parse_dtype(self.dtype)
        if self.max_tokens is not None and (self.shard or is_distributed()):
            raise NormprobeError("--max-tokens cannot be split across shards or ranks; use --max-docs")


@dataclass
class Corpus:
    """Documents from a list of strings, a file, or the built-in sample."""

    texts: Sequence[str] | None = None
    input: InputSpec | None = None

    @property
    def description(self) -> str:
        if self.input is not None:
            return str(self.input.path)
        return "texts" if self.texts is not None else "built-in sample (Python help topics)"

    def validate(self) -> None:
        if self.input is not None:
            validate_input(self.input)
        elif self.texts is not None:
            if isinstance(self.texts, str):
                raise NormprobeError("texts must be a list of documents, not one string")
            if not any(t.strip() for t in self.texts):
                raise NormprobeError("no documents: every text given is empty or whitespace")

    def documents(self) -> Iterator[str]:
        if self.input is not None:
            return iter_documents(self.input)
        if self.texts is not None:
            return (t for t in self.texts if t.strip())
        return iter(sample_documents())


def default_batch_size(model, seq_len: int) -> int:
    """Tokens per batch from free accelerator memory (a share of it), else a fixed CPU budget."""
    import torch

    budget = DEFAULT_TOKEN_BUDGET
    if str(model.device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        # the updates probe holds ~4 float32 vectors per layer and token; keep to a quarter of free memory
        per_token = 4 * 4 * model.d_model * (model.n_layers + 1) + 4 * model.d_vocab
        budget = max(seq_len, int(free * 0.25 // per_token))
    return max(1, min(256, budget // seq_len))


def probe_kwargs(cls, values: dict) -> dict:
    """The run options a probe class asks for (its `run_options`) from {option: value}, for its constructor."""
    return {name: values[name] for name in getattr(cls, "run_options", ()) if values.get(name) is not None}
