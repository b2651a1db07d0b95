"""One run: load the model, set up the probes, stream the model's pass and then each baseline pass through the
loop (normprobe.loop), and return the result; with a folder, checkpoints and resume."""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .baseline_passes import BaselinePasses
from .corpus import InputSpec
from .errors import NormprobeError
from .hfcorpus import DatasetSpec
from .hooked import ProbeFailed
from .live_run import LiveRun, baselines_from_checkpoint, merge_state, run_result
from .memory import choose_batch_size
from .options import DEFAULT_MASSIVE_RATIO, Corpus, RunOptions
from .registry import resolve_probes

__all__ = ["Corpus", "RunOptions", "Runner", "make_runner", "merge_state", "run"]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("normprobe", "torch", "transformer-lens", "transformers", "pandas", "plotly"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


CHECKPOINT_SECONDS = 300.0  # default: a checkpoint at most every five minutes


class Runner(BaselinePasses):
    """Owns one run: validates, attaches every probe's hooks once and streams batches through them.

    With a `RunFolder` it also keeps run.json's status current, checkpoints the probes' statistics,
    resumes from a checkpoint, and stops cleanly on the first SIGINT or SIGTERM.
    """

    def __init__(self, model: Any, corpus: Corpus, probe_specs: Sequence[str | type], options: RunOptions):
        self.model = model
        self.corpus = corpus
        self.options = options
        self.probe_specs = [s if isinstance(s, str) else f"{s.__module__}:{s.__qualname__}" for s in probe_specs]
        self.probe_classes = resolve_probes(list(probe_specs))
        from .lens_diagnostics import LensDiagnosticsProbe, is_tuned

        if is_tuned(options.readout):  # a tuned lens is judged on the probe corpus as well as used
            self.probe_classes.append(LensDiagnosticsProbe)

    def validate(self) -> None:
        self.options.validate()
        self.corpus.validate()

    def request(self) -> dict[str, Any]:
        """What the user asked for, in the form resume compares (see store.FINGERPRINT_KEYS).

        Computed once: it hashes the corpus file.
        """
        if getattr(self, "_request", None) is None:
            self._request = self._make_request()
        return self._request

    def _make_request(self) -> dict[str, Any]:
        from .adapter import ModelSource, resolve_source

        opts = self.options
        if isinstance(self.model, ModelSource):
            source = self.model
        else:
            source = resolve_source(self.model) if isinstance(self.model, str) else self.model.source
        digest = self.corpus.digest()
        return {
            "model": source.name,
            "resolved_model": source.location,
            "revision": source.revision,
            "checkpoint_value": source.checkpoint_value,
            "dtype": opts.dtype,
            "probe_specs": self.probe_specs,
            "corpus": self.corpus.description,
            "corpus_sha256": digest,
            "seq_len": opts.seq_len,
            "batch_size": opts.batch_size,
            "prepend_bos": opts.prepend_bos,
            "layers": opts.layers,
            "max_docs": opts.max_docs,
            "max_tokens": opts.max_tokens,
            "shard": list(opts.shard) if opts.shard else None,
            "massive_ratio": opts.massive_ratio,
            "replicates": opts.replicates,
            "bootstrap_unit": opts.bootstrap_unit,
            "token_counts": _token_counts_digest(opts.token_counts),
            "token_counts_file": opts.token_counts,
            **readout_request(opts),
            "baselines": list(opts.baselines or []),
            "baseline_seeds": opts.baseline_seeds,
        }

    def _takes_model_gradient(self, probes: list) -> bool:
        """Whether updates runs the model readout's backward pass, which keeps every layer's activations."""
        from .readouts import parse_readout

        return parse_readout(self.options.readout).kind == "model" and any(p.name == "updates" for p in probes)

    def _base_meta(self, model, probes, seq_len: int, batch_size: int, bos: int | None) -> dict[str, Any]:
        return {
            "status": "running",
            "model": model.source.name,
            "resolved_model": model.source.location,
            "model_source": model.source.kind,
            "revision": model.source.revision,
            **{("model_n_ctx" if k == "n_ctx" else k): v for k, v in model.facts().items()},
            "dtype": model.dtype,
            "device": str(model.device),
            "attention": self.attention[0],
            "attention_reason": self.attention[1],
            "placement": model.placement() if hasattr(model, "placement") else None,
            "probes": [p.name for p in probes],
            "corpus": self.corpus.description,
            "seq_len": seq_len,
            "batch_size": batch_size,
            "prepend_bos": bos is not None,
            "readout": self._readout_meta(),
            "options": {k: v for k, v in asdict(self.options).items() if k not in ("device", "device_map", "n_devices")},
            "request": self.request(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }

    def _readout_meta(self) -> dict[str, Any]:
        from .readouts import parse_readout

        spec = parse_readout(self.options.readout)
        return {**spec.describe(), "label": spec.label}

    def execute(
        self,
        progress: bool = True,
        folder=None,
        resume: tuple[dict, dict] | None = None,
        checkpoint_every: int | None = None,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
    ):
        """Run to the end and return a RunResult; under torchrun, ranks other than 0 return None.

        Batch -> hooked forward (probes consume each layer as it completes) -> account -> checkpoint
        when due; the folder object owns run.json's status, the signals and the lock.
        """
        import torch

        from .distributed import make_sync
        from .interrupt import StopRequests
        from .lens_diagnostics import check_in_sample, record_diagnostics

        started = time.time()
        sync = make_sync()
        talk = progress and sync.rank == 0
        check_in_sample(self.options.readout, self.request()["corpus_sha256"], sync.rank == 0)
        model = self._load(talk)
        probes, seq_len = self.prepare(model)
        saved_meta, checkpoint = resume if resume else ({}, None)
        choice = choose_batch_size(
            model,
            seq_len,
            self.attention[0] == "eager",
            self.options.max_memory_bytes,
            self.options.batch_size,
            saved_meta.get("batch_size"),
            backward=self._takes_model_gradient(probes),
        )
        batch_size = choice.batch_size
        bos = model.bos_token_id if self.options.prepend_bos else None
        self.check_baselines_fit(model, bos)
        meta = self._base_meta(model, probes, seq_len, batch_size, bos)
        meta.update(choice.meta())
        if sync.size > 1:
            meta["world_size"] = sync.size
        folder = folder if sync.rank == 0 else None
        done = self._restore(probes, checkpoint, saved_meta, meta, folder)
        self._live = LiveRun(
            sync,
            folder,
            meta,
            done,
            probes,
            batch_size,
            checkpoint_every,
            checkpoint_seconds,
            talk,
            started,
            baselines_from_checkpoint(checkpoint),
        )
        self.record_baselines(meta)
        if folder is not None:
            folder.start(meta)  # signal handlers first, then run.json says running

        try:
            with nullcontext(folder.stops) if folder is not None else StopRequests() as stops, torch.inference_mode():
                self._live.stops = stops
                windows, total = self._windows(model, seq_len, bos, sync)
                self._stream(model, probes, windows, total, done)
                # baselines that read the model's own weights, while it is loaded
                shared = self.run_shared_baselines(model, seq_len, bos)
                result = self._finish(model, probes, seq_len, meta, sync, done, 0.0)
                if self.options.baselines:  # later passes checkpoint the model's statistics, not its probes
                    self._live.main = {p.name: p.state_dict() for p in probes}
                del probes
                # random-init models replace the model: load, run, free, then the next
                handoff, model = [model], None
                self.run_random_init_baselines(handoff, seq_len, bos, shared)
                self.attach_baselines(result, shared)
        except (ProbeFailed, NormprobeError, KeyboardInterrupt) as exc:
            raise _marked(exc, folder, meta) from (exc.error if isinstance(exc, ProbeFailed) else None)
        if result is not None:
            record_diagnostics(result, self.options.readout, self.request()["corpus_sha256"])
            result.meta["seconds"] = round(self._live.done["seconds"] + time.time() - self._live.started, 3)
        return result

    def _load(self, talk: bool):
        """The model adapter, loading it (and saying so) when the runner was given a name or a source."""
        from .adapter import ModelAdapter, ModelSource, load_model, pick_device, resolve_source
        from .console import loaded_line, model_line, say
        from .distributed import local_device

        opts, model = self.options, self.model
        if isinstance(model, ModelAdapter):
            return model
        name = model.name if isinstance(model, ModelSource) else str(model)
        device = local_device(opts.device)
        if talk:
            source = model if isinstance(model, ModelSource) else resolve_source(name)
            say(model_line(source, opts.dtype, pick_device(device)))
        load_started = time.time()
        if isinstance(model, ModelSource):
            model = ModelAdapter.from_source(
                model, device=device, dtype=opts.dtype, device_map=opts.device_map, n_devices=opts.n_devices
            )
        else:
            model = load_model(name, device=device, dtype=opts.dtype, device_map=opts.device_map, n_devices=opts.n_devices)
        say(loaded_line(name, time.time() - load_started, model), talk)
        return model

    @staticmethod
    def _restore(probes: list, checkpoint: dict | None, saved_meta: dict, meta: dict, folder) -> dict[str, Any]:
        """Progress so far: zero, or the checkpoint's, with the probes' statistics loaded from it."""
        done = {"batches": 0, "tokens": 0, "windows": 0, "docs": 0, "seconds": 0.0}
        if checkpoint is None:
            return done
        from .store import CHECKPOINT_FILE, restore_probe

        for probe in probes:
            restore_probe(probe, checkpoint["probes"], folder.path / CHECKPOINT_FILE)
        done.update({k: checkpoint["progress"][k] for k in done if k in checkpoint["progress"]})
        resumed = saved_meta.get("resumed")
        meta["resumed"] = (resumed if isinstance(resumed, int) else 0) + 1
        return done

    def _finish(self, model, probes, seq_len: int, meta, sync, done, seconds: float):
        if sync.size > 1:
            states = sync.gather({p.name: p.state_dict() for p in probes})
            done = sync.totals(done)
            if sync.rank != 0:
                return None
            for other in states[1:]:
                merge_state(model, probes, other, seq_len, self.options.layers)
        if done["tokens"] == 0:
            raise NormprobeError("no tokens to probe: the documents tokenised to nothing")
        if self.options.shard is not None:  # done["docs"] is the global document frontier; this shard holds every N-th
            index, count = self.options.shard
            done = {**done, "docs": len(range(index, done["docs"], count))}
        result = run_result(probes, meta, done, seconds)
        if self.options.shard is not None:
            from .store import shard_state

            result.probe_states = shard_state(result.meta, {p.name: p.state_dict() for p in probes})
        return result


def readout_request(opts: RunOptions) -> dict[str, Any]:
    """The readout and line-search options as resume and merge compare them (a retrained lens differs)."""
    from .readouts import parse_readout

    described = parse_readout(opts.readout).describe()
    return {
        "readout": parse_readout(opts.readout).text,
        "readout_params_sha256": described.get("params_sha256"),
        "alphas": opts.alphas,
        "ablate": opts.ablate,
        "readout_sample": opts.readout_sample,
    }


def _token_counts_digest(path: str | None) -> str | None:
    """sha256 of a --token-counts file: resume and merge compare its content, not its name."""
    if path is None:
        return None
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _marked(exc: BaseException, folder, meta: dict[str, Any]) -> BaseException:
    """Mark run.json for how the run ended and return what to raise: a probe's bug becomes one line naming it."""
    from .interrupt import RunInterrupted

    if isinstance(exc, ProbeFailed):
        reason = f"probe {exc.probe!r} raised {type(exc.error).__name__}: {exc.error}"
        if folder is not None:
            folder.mark(meta, "failed", reason + "; statistics up to the last checkpoint are in checkpoint.pt")
        return NormprobeError(reason)
    if folder is not None and isinstance(exc, KeyboardInterrupt):
        folder.mark(meta, "interrupted", "aborted by a second signal; the last checkpoint is kept")
    elif folder is not None and not isinstance(exc, RunInterrupted):
        folder.mark(meta, "failed", str(exc))
    return exc


def make_runner(
    model: Any = "demo",
    texts: Sequence[str] | None = None,
    probes: Sequence[str | type] = ("norms",),
    *,
    input: str | Path | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    text_field: str = "text",
    encoding: str = "utf-8",
    errors: str = "strict",
    batch_size: int | None = None,
    seq_len: int | None = None,
    max_docs: int | None = None,
    max_tokens: int | None = None,
    prepend_bos: bool = True,
    layers: list[int] | None = None,
    device: str = "auto",
    dtype: str = "float32",
    shard: tuple[int, int] | None = None,
    device_map: str | None = None,
    n_devices: int | None = None,
    revision: str | None = None,
    checkpoint_value: int | None = None,
    massive_ratio: float = DEFAULT_MASSIVE_RATIO,
    readout: str = "logit",
    alphas: list[float] | None = None,
    ablate: bool = False,
    max_memory: str | int | None = None,
    baselines: Sequence[str] | None = None,
    baseline_seeds: int = 3,
    replicates: int = 200,
    bootstrap_unit: str | None = None,
    token_counts: str | Path | None = None,
    readout_sample: float = 1.0,
) -> Runner:
    """Build and validate a run (options, corpus, probes, model source) without loading the model."""
    if sum(x is not None for x in (texts, input, dataset)) > 1:
        raise NormprobeError("give one corpus: texts, an input file or a dataset")
    spec = InputSpec(Path(input), text_field, encoding, errors) if input is not None else None
    data = DatasetSpec(str(dataset), dataset_config, split, text_field, encoding, errors) if dataset is not None else None
    options = RunOptions(
        batch_size,
        seq_len,
        max_docs,
        max_tokens,
        prepend_bos,
        layers,
        device,
        dtype,
        shard,
        device_map,
        n_devices,
        massive_ratio,
        readout,
        alphas,
        ablate,
        max_memory,
        readout_sample=readout_sample,
        baselines=list(baselines) if baselines is not None else None,
        baseline_seeds=baseline_seeds,
        replicates=replicates,
        bootstrap_unit=bootstrap_unit,
        token_counts=str(token_counts) if token_counts is not None else None,
    )
    runner = Runner(model, Corpus(list(texts) if texts is not None else None, spec, data), list(probes), options)
    runner.validate()
    if isinstance(model, str):
        from .adapter import config_n_layers, resolve_source, validate_source

        source = resolve_source(model, revision=revision, checkpoint_value=checkpoint_value)
        if revision is not None or checkpoint_value is not None:
            runner.model = source
        config = validate_source(source)
        n_layers = config_n_layers(config)
        from .readouts import check_lens_fits_config

        check_lens_fits_config(readout, config, model)
        bad = [l for l in (layers or []) if n_layers is not None and l >= n_layers]
        if bad and n_layers is not None:
            raise NormprobeError(f"invalid layer index {bad[0]}: {model} has layers 0..{n_layers - 1}")
    return runner


def run(
    model: Any = "demo",
    texts: Sequence[str] | None = None,
    probes: Sequence[str | type] = ("norms",),
    *,
    progress: bool = True,
    **options: Any,
):
    """Run probes over a corpus and return a `RunResult`.

    `model` is a name or folder (`demo`, `gpt2-small`, `./my-model`) or a loaded `ModelAdapter`.
    The corpus is `texts` (one document each), an `input` file, a Hugging Face `dataset` (a Hub name, a
    `save_to_disk` folder, or a folder or glob of data files; with `dataset_config` and `split`), or else the
    built-in sample. Options: input, dataset, dataset_config, split, text_field, encoding, errors, batch_size,
    seq_len, max_docs, max_tokens, prepend_bos, layers, device, dtype, shard=(i, n),
    massive_ratio (the massive probe's threshold), readout ("logit", "model" or "tuned:DIR"), alphas (linesearch's
    α grid), ablate (under readout="model", updates reruns the network without each update for actual_change),
    max_memory ("8GB": a cap on normprobe's own working set, which sets the automatic batch size),
    device_map ("auto": spread the model over the devices there are; see docs/memory.md),
    baselines (a list of "random-init", "shuffled", "no-bos": null baselines through the same probes, windows and
    batches, in `RunResult.baselines`; see docs/baselines.md) and baseline_seeds (random-init models, default 3),
    replicates (B of the document bootstrap, default 200), bootstrap_unit (see normprobe.bootstrap),
    token_counts (a file of token id -> count for the frequency claim, see normprobe.token_counts),
    readout_sample (the share of tokens, chosen by document, whose updates and linesearch statistics are computed).
    """
    return make_runner(model, texts, probes, **options).execute(progress=progress)
