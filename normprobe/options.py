"""What a run is asked to do: its options and its corpus, validated before any model loads.

Options are data: this module parses and checks them without importing torch, transformers or
TransformerLens (and without the readouts or the run store), so a mistake is one line at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .corpus import InputSpec, as_text, corpus_digest, iter_documents, sample_documents, validate_input
from .errors import NormprobeError
from .hfcorpus import DatasetSpec
from .probes import DEFAULT_MASSIVE_RATIO as DEFAULT_MASSIVE_RATIO  # the massive probe's default, with the probes

DEFAULT_SEQ_LEN = 1024
# options handed to probes whose constructors take them
PROBE_OPTIONS = ("massive_ratio", "readout", "alphas", "ablate", "replicates", "token_counts", "readout_sample")


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
    ablate: bool = False  # under the model readout, updates reruns the network without each update
    max_memory: str | int | None = None  # cap on normprobe's own working set, e.g. "8GB" (memory.py)
    baselines: list[str] | None = None  # null baselines: random-init, shuffled, no-bos (normprobe.baselines)
    baseline_seeds: int = 3  # random-init models, one per seed
    replicates: int = 200  # B, the document bootstrap's replicates (normprobe.bootstrap)
    # Set by the runner for each random-init seed's pass ("random-init seed 2"): its Poisson(1) weights,
    # seeded by the string, multiply every document's, so that a seed is a unit of the bootstrap (normprobe.bootstrap)
    bootstrap_unit: str | None = None
    token_counts: str | None = None  # a file of token id -> count for the frequency claim (normprobe.token_counts)
    readout_sample: float = 1.0  # share of tokens whose readout statistics are computed (normprobe.sampling)
    allow_foreign_lens: bool = False  # use a tuned lens whose unembed_hash is not the model's (recorded in run.json)

    @property
    def max_memory_bytes(self) -> int | None:
        from .memory import parse_size

        return None if self.max_memory is None else parse_size(self.max_memory)

    def probe_options(self) -> dict:
        return {name: getattr(self, name) for name in PROBE_OPTIONS}

    def validate(self) -> None:
        for name in ("batch_size", "max_docs", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise NormprobeError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if not isinstance(self.replicates, int) or self.replicates < 2:
            raise NormprobeError(f"--replicates must be an integer of at least 2 (got {self.replicates})")
        if self.token_counts is not None:
            from .token_counts import read_token_counts

            read_token_counts(self.token_counts)
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
            raise NormprobeError(
                f"--massive-ratio must be a finite number of at least 1, since max/median never is below 1 "
                f"(got {self.massive_ratio})"
            )
        from .adapter import parse_device_map, parse_dtype
        from .memory import parse_size
        from .readout_spec import parse_readout
        from .sampling import check_fraction

        check_fraction(self.readout_sample)
        if self.readout_sample < 1 and parse_readout(self.readout).kind == "model":
            raise NormprobeError("--readout-sample applies to the logit and tuned readouts; --readout model reads every token")

        if parse_readout(self.readout).kind != "model" and self.ablate:
            raise NormprobeError(
                "--ablate reruns the network without each update, which only --readout model does "
                "(the logit and tuned readouts read actual_change through their lens)"
            )
        if self.max_memory is not None:
            parse_size(self.max_memory)
        parse_device_map(self.device_map, self.device)
        from .baselines import check_baselines

        self.baselines = check_baselines(self.baselines, self.baseline_seeds, self.prepend_bos)
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

            if self.dataset is None:
                raise ValueError("this corpus names no dataset")
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
        if self.dataset is not None:
            return self.opened_dataset().digest()
        spec = self.input
        return corpus_digest(
            list(self.texts) if self.texts is not None else None,
            spec.path if spec else None,
            *((spec.text_field, spec.encoding, spec.errors) if spec else ("text", "utf-8", "strict")),
        )

    def documents(self) -> Iterator[str]:
        if self.input is not None:
            return iter_documents(self.input)
        if self.dataset is not None:
            return self.opened_dataset().documents()
        if self.texts is not None:
            return (t for t in self.texts if t.strip())
        return iter(sample_documents())


def check_run(models: Sequence[str], probes: Sequence[Any], **run_kwargs: Any) -> None:
    """Check a run's request as `normprobe.run` takes it, before torch is imported: model and probe names,
    every option, and a corpus of texts or a file (a dataset is opened later, once).

    `run_kwargs` are `run`'s keyword options; those that are not RunOptions (the output, progress) are ignored.
    """
    from .adapter import check_model_name
    from .registry import check_probe_names

    for model in models:
        if isinstance(model, str):
            check_model_name(model)
    check_probe_names(list(probes))
    if sum(run_kwargs.get(k) is not None for k in ("texts", "input", "dataset")) > 1:
        raise NormprobeError("give one corpus: texts, an input file or a dataset")
    every = run_kwargs.get("checkpoint_every")
    if every is not None and every < 1:
        raise NormprobeError(f"--checkpoint-every must be at least 1 (got {every})")
    names = {f.name for f in fields(RunOptions)}
    RunOptions(**{k: v for k, v in run_kwargs.items() if k in names}).validate()
    texts, path = run_kwargs.get("texts"), run_kwargs.get("input")
    if path is not None:
        keys = ("text_field", "encoding", "errors")
        spec = InputSpec(Path(path), *(run_kwargs.get(k, d) for k, d in zip(keys, ("text", "utf-8", "strict"))))
        Corpus(input=spec).validate()
    elif texts is not None:
        Corpus(texts=texts).validate()
