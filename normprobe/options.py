"""What a run is asked to do: its options and its corpus, validated before any model loads."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from .corpus import InputSpec, as_text, iter_documents, sample_documents, validate_input
from .errors import NormprobeError
from .hfcorpus import DatasetSpec

DEFAULT_SEQ_LEN = 1024
DEFAULT_TOKEN_BUDGET = 8192  # tokens per batch on the CPU
DEFAULT_MASSIVE_RATIO = 100.0  # max/median of |h_i| above which the massive probe calls a token massive
PROBE_OPTIONS = ("massive_ratio", "readout", "alphas", "readout_sample")  # options handed to probes whose constructors take them


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
    massive_ratio: float = DEFAULT_MASSIVE_RATIO
    readout: str = "logit"  # logit or tuned:DIR, for probes that read h through a readout
    alphas: list[float] | None = None  # the linesearch probe's step sizes
    readout_sample: float = 1.0  # share of tokens whose readout statistics are computed (normprobe.sampling)

    def probe_options(self) -> dict:
        return {name: getattr(self, name) for name in PROBE_OPTIONS}

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
        if not (math.isfinite(self.massive_ratio) and self.massive_ratio >= 1):
            raise NormprobeError(f"--massive-ratio must be a finite number of at least 1, since max/median never is below 1 "
                                 f"(got {self.massive_ratio})")
        from .adapter import parse_dtype
        from .readouts import parse_readout
        from .sampling import check_fraction

        check_fraction(self.readout_sample)

        parse_readout(self.readout)
        from .distributed import is_distributed

        self.dtype = parse_dtype(self.dtype)
        if self.max_tokens is not None and (self.shard or is_distributed()):
            raise NormprobeError("--max-tokens cannot be split across shards or ranks; use --max-docs")


@dataclass
class Corpus:
    """Documents from a list of strings, a file, a Hugging Face dataset, or the built-in sample."""

    texts: Sequence[str] | None = None
    input: InputSpec | None = None
    dataset: DatasetSpec | None = None
    _opened: Any = field(default=None, repr=False, compare=False)

    @property
    def description(self) -> str:
        if self.input is not None:
            return str(self.input.path)
        if self.dataset is not None:
            return self.dataset.description
        return "texts" if self.texts is not None else "built-in sample (Python help topics)"

    @property
    def in_memory(self) -> bool:
        """Texts or the sample: small enough to tokenise up front (a file or dataset streams)."""
        return self.input is None and self.dataset is None

    def opened_dataset(self):
        """The dataset, opened once: validation, the fingerprint and the documents share it."""
        if self._opened is None:
            from .hfcorpus import open_dataset

            self._opened = open_dataset(self.dataset)
        return self._opened

    def validate(self) -> None:
        if sum(x is not None for x in (self.texts, self.input, self.dataset)) > 1:
            raise NormprobeError("give one corpus: texts, an input file or a dataset")
        if self.input is not None:
            validate_input(self.input)
        elif self.dataset is not None:
            opened = self.opened_dataset()
            if next(opened.documents(), None) is None:
                raise NormprobeError(f"{self.dataset.description} holds no documents (every text is empty or whitespace)")
            if opened.kind != "hub":  # local data reads ahead as an input file does: bad bytes are one line now
                from .corpus import VALIDATE_DOCS

                for count, _ in enumerate(opened.documents()):
                    if count >= VALIDATE_DOCS:
                        break
        elif self.texts is not None:
            if isinstance(self.texts, str):
                raise NormprobeError("texts must be a list of documents, not one string")
            if not any(t.strip() for t in self.texts):
                raise NormprobeError("no documents: every text given is empty or whitespace")
            for number, text in enumerate(self.texts, start=1):
                as_text(text, f"text {number}")  # undecodable bytes in argv arrive as lone surrogates

    def digest(self) -> str:
        """sha256 of what decides the documents; resume refuses a corpus whose digest changed."""
        from .store import corpus_digest

        if self.dataset is not None:
            return self.opened_dataset().digest()
        spec = self.input
        return corpus_digest(list(self.texts) if self.texts is not None else None, spec.path if spec else None,
                             *((spec.text_field, spec.encoding, spec.errors) if spec else ("text", "utf-8", "strict")))

    def documents(self) -> Iterator[str]:
        if self.input is not None:
            return iter_documents(self.input)
        if self.dataset is not None:
            return self.opened_dataset().documents()
        if self.texts is not None:
            return (t for t in self.texts if t.strip())
        return iter(sample_documents())


READOUT_CHUNK = 1 << 24  # logits (tokens x vocabulary) a readout holds at once: 64 MB in float32
KEPT_VECTORS = 48  # float32 d_model-vectors per token: the forward's working set and what a streaming probe keeps


def available_memory(device: str) -> int:
    """Bytes free for this run: free accelerator memory, or the host's MemAvailable."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def default_batch_size(model, seq_len: int, eager_attention: bool = False) -> int:
    """Windows per batch that fit half the free memory: on the CPU at most DEFAULT_TOKEN_BUDGET tokens.

    Per token: the forward's activations and what the probes keep (flat in depth: probes stream
    layers), eager attention's scores and pattern rows (heads x window), and a fixed readout chunk
    whatever the vocabulary. The model's logits are never materialised for more than one position.
    """
    per_token = 4 * model.d_model * KEPT_VECTORS + (2 * 4 * model.n_heads * seq_len if eager_attention else 0)
    room = available_memory(str(model.device)) // 2 - 3 * 4 * READOUT_CHUNK
    tokens = max(seq_len, room // per_token)
    if not str(model.device).startswith("cuda"):
        tokens = min(tokens, DEFAULT_TOKEN_BUDGET)  # more tokens per batch do not make the CPU faster
    return max(1, min(256, tokens // seq_len))
