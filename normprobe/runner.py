"""The loop: documents -> windows -> batches -> one hooked forward pass -> every probe's statistics."""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .corpus import InputSpec, iter_documents, sample_documents, validate_input
from .errors import NormprobeError
from .registry import resolve_probes

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
        from .adapter import parse_dtype

        self.dtype = parse_dtype(self.dtype)


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


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("normprobe", "torch", "transformer-lens", "transformers", "pandas", "plotly"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


def _progress(total: int | None, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, desc="probing")


class Runner:
    """Owns one run: validates, attaches every probe's hooks once and streams batches through them."""

    def __init__(self, model: Any, corpus: Corpus, probe_specs: Sequence[str | type], options: RunOptions):
        self.model = model
        self.corpus = corpus
        self.options = options
        self.probe_classes = resolve_probes(list(probe_specs))

    def validate(self) -> None:
        self.options.validate()
        self.corpus.validate()

    def prepare(self, model) -> tuple[list, int]:
        opts = self.options
        if opts.layers is not None:
            bad = [l for l in opts.layers if l >= model.n_layers]
            if bad:
                raise NormprobeError(f"invalid layer index {bad[0]}: {model.source.name} has layers 0..{model.n_layers - 1}")
        seq_len = min(opts.seq_len or DEFAULT_SEQ_LEN, model.n_ctx)
        probes = [cls(layers=opts.layers) for cls in self.probe_classes]
        for probe in probes:
            probe.setup(model, seq_len)
            for hook in probe.hook_points():
                if not model.has_hook(hook):
                    raise NormprobeError(f"probe {probe.name!r} reads hook {hook!r}, which model {model.source.name} does not have")
        return probes, seq_len

    def execute(self, progress: bool = True):
        import torch

        from .adapter import ModelAdapter, load_model
        from .batching import iter_batches, iter_windows
        from .results import RunResult

        started = time.time()
        opts = self.options
        model = self.model
        if not isinstance(model, ModelAdapter):
            model = load_model(str(model), device=opts.device, dtype=opts.dtype)
        probes, seq_len = self.prepare(model)
        batch_size = opts.batch_size or default_batch_size(model, seq_len)
        bos = model.bos_token_id if opts.prepend_bos else None

        windows: Iterable = iter_windows(self.corpus.documents(), model.encode, seq_len, bos,
                                         opts.max_docs, opts.max_tokens)
        total = opts.max_tokens
        if self.corpus.input is None:  # in memory: tokenise up front so the bar has a total
            windows = list(windows)
            total = sum(len(w.tokens) for w in windows)

        wanted: dict[str, list] = {}
        for probe in probes:
            for hook in probe.hook_points():
                wanted.setdefault(hook, []).append(probe)
        reduced: dict[str, dict[str, Any]] = {p.name: {} for p in probes}
        fired: dict[str, int] = {}
        current: dict[str, Any] = {}

        def make_hook(hook_name: str, readers: list):
            def hook(activation, hook=None):
                fired[hook_name] = fired.get(hook_name, 0) + 1
                for probe in readers:
                    reduced[probe.name][hook_name] = probe.reduce(hook_name, activation, current["batch"])
                return None
            return hook

        hooks = [(name, make_hook(name, readers)) for name, readers in wanted.items()]
        n_tokens = n_windows = 0
        doc_indices: set[int] = set()
        bar = _progress(total, progress)
        try:
            with torch.inference_mode():
                for batch in iter_batches(windows, batch_size, model.pad_token_id, model.device):
                    current["batch"] = batch
                    fired.clear()
                    model.forward(batch.tokens, batch.mask.long(), hooks)
                    missing = [name for name in wanted if fired.get(name, 0) == 0]
                    if missing:
                        raise NormprobeError(
                            f"hook {missing[0]} was attached but never fired on {model.source.name} "
                            f"({len(missing)} of {len(wanted)} hooks silent)"
                        )
                    for probe in probes:
                        probe.update(reduced[probe.name], batch)
                        reduced[probe.name] = {}
                    n_tokens += batch.n_tokens
                    n_windows += batch.tokens.shape[0]
                    doc_indices.update(batch.doc_indices)
                    bar.update(batch.n_tokens)
        finally:
            bar.close()
        if n_tokens == 0:
            raise NormprobeError("no tokens to probe: the documents tokenised to nothing")

        tables: dict[str, Any] = {}
        findings: dict[str, Any] = {}
        owners: dict[str, list[str]] = {}
        for probe in probes:
            probe_tables = probe.result()
            clash = sorted(set(probe_tables) & set(tables))
            if clash:
                raise NormprobeError(f"probe {probe.name!r} returns table {clash[0]!r}, which another probe already returned")
            tables.update(probe_tables)
            owners[probe.name] = list(probe_tables)
            findings[probe.name] = probe.findings(probe_tables)
        meta = {
            "status": "complete",
            "model": model.source.name,
            "resolved_model": model.source.location,
            "model_source": model.source.kind,
            "revision": model.source.revision,
            **{f"model_{k}" if k in ("n_ctx",) else k: v for k, v in model.facts().items()},
            "dtype": model.dtype,
            "device": str(model.device),
            "probes": [p.name for p in probes],
            "probe_tables": owners,
            "corpus": self.corpus.description,
            "n_docs": len(doc_indices),
            "n_windows": n_windows,
            "n_tokens": n_tokens,
            "seq_len": seq_len,
            "batch_size": batch_size,
            "prepend_bos": bos is not None,
            "options": {k: v for k, v in asdict(opts).items() if k not in ("device",)},
            "seconds": round(time.time() - started, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }
        return RunResult(tables=tables, findings=findings, meta=meta)


def run(model: Any = "demo", texts: Sequence[str] | None = None, probes: Sequence[str | type] = ("norms",), *,
        input: str | Path | None = None, text_field: str = "text", encoding: str = "utf-8", errors: str = "strict",
        batch_size: int | None = None, seq_len: int | None = None, max_docs: int | None = None,
        max_tokens: int | None = None, prepend_bos: bool = True, layers: list[int] | None = None,
        device: str = "auto", dtype: str = "float32", progress: bool = True):
    """Run probes over a corpus and return a `RunResult`.

    `model` is a name or folder (`demo`, `gpt2-small`, `./my-model`) or a loaded `ModelAdapter`.
    The corpus is `texts` (one document each), an `input` file, or else the built-in sample.
    """
    if texts is not None and input is not None:
        raise NormprobeError("give texts or an input file, not both")
    spec = InputSpec(Path(input), text_field, encoding, errors) if input is not None else None
    options = RunOptions(batch_size, seq_len, max_docs, max_tokens, prepend_bos, layers, device, dtype)
    runner = Runner(model, Corpus(list(texts) if texts is not None else None, spec), list(probes), options)
    runner.validate()
    if isinstance(model, str):
        from .adapter import config_n_layers, resolve_source, validate_source

        n_layers = config_n_layers(validate_source(resolve_source(model)))
        bad = [l for l in (layers or []) if n_layers is not None and l >= n_layers]
        if bad:
            raise NormprobeError(f"invalid layer index {bad[0]}: {model} has layers 0..{n_layers - 1}")
    return runner.execute(progress=progress)
