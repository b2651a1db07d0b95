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
from .console import warn
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
            **dict(zip(("activation", "activation_reason"), getattr(model, "activation", ()))),
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
        foreign = {"foreign_lens_allowed": True} if spec.kind == "tuned" and self.options.allow_foreign_lens else {}
        return {**spec.describe(), "label": spec.label, **foreign}

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
                gathered = self._gather(model, probes, seq_len, sync, done)
                handoff, model = [model], None
                if not any(p.kind == "random-init" for p in self._passes()):
                    self._release(handoff)  # before the tables and the report, which need none of it
                result = self._finish(probes, meta, gathered) if gathered is not None else None
                if self.options.baselines:  # later passes checkpoint the model's statistics, not its probes
                    self._live.main = {p.name: p.state_dict() for p in probes}
                del probes
                # random-init models replace the model: load, run, free, then the next
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
        say(loaded_line(name, time.time() - load_started, model.n_layers, model.d_model, model.device), talk)
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

    def _gather(self, model, probes, seq_len: int, sync, done) -> dict[str, Any] | None:
        """Under torchrun, every rank's statistics merged into rank 0's probes and the progress totalled
        (None on the other ranks); else `done` as it is."""
        if sync.size > 1:
            states = sync.gather({p.name: p.state_dict() for p in probes})
            done = sync.totals(done)
            if sync.rank != 0:
                return None
            for other in states[1:]:
                merge_state(model, probes, other, seq_len, self.options.layers)
        return done

    def _release(self, handoff: list) -> None:
        """Free the weights of a model this runner loaded; a model handed in stays the caller's, untouched."""
        from .adapter import ModelAdapter

        model = handoff.pop()
        if isinstance(self.model, ModelAdapter):
            return
        model.release_weights()  # probes may still hold the adapter, for its tokenizer

    def _finish(self, probes, meta, done):
        if done["tokens"] == 0:
            raise NormprobeError("no tokens to probe: the documents tokenised to nothing")
        if self.options.shard is not None:  # done["docs"] is the global document frontier; this shard holds every N-th
            index, count = self.options.shard
            done = {**done, "docs": len(range(index, done["docs"], count))}
        result = run_result(probes, meta, done, 0.0)
        if self.options.readout_sample < 1 and _nothing_read(result.tables):
            warn(
                f"--readout-sample {self.options.readout_sample:g} sampled no token of the {done['tokens']}: "
                "the readout statistics (updates, linesearch) are empty; raise it"
            )
        broken = result.meta.get("nonfinite_layers") or {}
        if broken:
            where = "; ".join(f"{table} layer(s) {', '.join(map(str, layers))}" for table, layers in broken.items())
            warn(f"every value read was non-finite at {where}: those cells are empty (NaN) and their claims undetermined")
        if self.options.shard is not None:
            from .store import shard_state

            result.probe_states = shard_state(result.meta, {p.name: p.state_dict() for p in probes})
        return result


MANY_SEEDS = 24  # --baseline-seeds above this says what it will cost before anything runs


def _say_baseline_cost(options: RunOptions) -> None:
    kinds = options.baselines or []
    if "random-init" in kinds and options.baseline_seeds > MANY_SEEDS:
        passes = 1 + options.baseline_seeds + len([k for k in kinds if k != "random-init"])
        warn(
            f"--baseline-seeds {options.baseline_seeds}: each random-init seed is one more model built and one more "
            f"full pass over the corpus, so this run makes {passes} passes, about {passes} times the time of the run alone"
        )


def _nothing_read(tables: dict[str, Any]) -> bool:
    """The readout probes ran and no token reached their statistics (all counts 0, none non-finite)."""
    read = [tables[n] for n in ("updates", "line_search") if n in tables and "count" in tables[n].columns]
    return bool(read) and all(int(t["count"].sum()) == 0 and int(t.get("n_nonfinite", t["count"]).sum()) == 0 for t in read)


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
        "allow_foreign_lens": opts.allow_foreign_lens,
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
    allow_foreign_lens: bool = False,
) -> Runner:
    """Build and validate a run (options, corpus, probes, model source) without loading the model."""
    from .deferred_imports import defer_module

    defer_module("pandas")  # the probes' modules import it; it loads with the tables, after the model is released
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
        allow_foreign_lens=bool(allow_foreign_lens),
    )
    runner = Runner(model, Corpus(list(texts) if texts is not None else None, spec, data), list(probes), options)
    runner.validate()
    _say_baseline_cost(options)
    if isinstance(model, str):
        from .adapter import config_n_layers, resolve_source, validate_source

        source = resolve_source(model, revision=revision, checkpoint_value=checkpoint_value)
        if revision is not None or checkpoint_value is not None:
            runner.model = source
        config = validate_source(source)
        n_layers = config_n_layers(config)
        from .readouts import check_lens_fits_config

        check_lens_fits_config(readout, config, model)
        if n_layers is not None:  # the bootstrap's bound, before the model loads (docs/security.md)
            from .memory import check_replicates

            check_replicates(replicates, n_layers, 1 + len(options.baselines or []), options.max_memory_bytes)
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

    Every argument is checked before the model loads; a mistake raises one `NormprobeError` line.

    Args:
        model: A name or folder (`demo`, `gpt2-small`, `./my-model`, a Hub id) or a loaded `ModelAdapter`.
        texts: The corpus as documents, one string each. Else `input`, `dataset`, or the built-in sample.
        probes: Probe names (`normprobe probes` lists them), `FILE.py[:Class]`, `module:Class`, or Probe classes.
        progress: Show a progress bar and status lines on stderr.
        **options: The keyword options below, each as in `normprobe run --OPTION`.

    Other Parameters:
        input (str | Path): A corpus file: .txt (a document per line), .jsonl, .csv or .parquet.
        dataset (str): A Hugging Face dataset: a Hub name (streamed), a `save_to_disk` folder, or a folder
            or glob of data files.
        dataset_config (str): The configuration of a Hub `dataset`.
        split (str): The split of `dataset` (default "train").
        text_field (str): The field or column holding the text in .jsonl, .csv, .parquet or a dataset (default "text").
        encoding (str): The text encoding of `input` (default "utf-8").
        errors (str): On undecodable bytes: "strict" (stop; the default) or "replace".
        batch_size (int): Windows per batch (default: from free memory, see `max_memory`).
        seq_len (int): Window length in tokens (default: min(1024, the model's context)).
        max_docs (int): Stop after this many documents.
        max_tokens (int): Stop after this many tokens.
        prepend_bos (bool): Start every window with BOS when the tokenizer has one (default True).
        layers (list[int]): The layers to probe (default: all).
        device (str): "auto" (the default), "cpu", "cuda", "cuda:1" or "mps".
        dtype (str): "float32" (the default), "bfloat16" or "float16".
        shard (tuple[int, int]): (i, n): only the documents i mod n; `merge_shards` combines the n runs.
        device_map (str): Spread one model over the devices there are: "auto", "balanced", "balanced_low_0"
            or "sequential" (see the memory page).
        n_devices (int): Split one model across this many GPUs.
        revision (str): A Hub revision (branch, tag or commit) of `model`.
        checkpoint_value (int): The training step of this checkpoint, recorded in run.json (checkpoint sweeps set it).
        massive_ratio (float): The massive probe's threshold on max / median |h_i| (default 100).
        readout (str): How updates and linesearch read h: "logit" (the logit lens; the default), "tuned:DIR"
            (a tuned lens) or "model" (the model's own loss).
        alphas (list[float]): The linesearch probe's step sizes α.
        ablate (bool): Under readout="model", updates reruns the network without each update for actual_change.
        max_memory (str | int): A cap on normprobe's own working set ("8GB", or bytes), which sets the
            automatic batch size.
        baselines (list[str]): Null baselines through the same probes, windows and batches: "random-init",
            "shuffled", "no-bos" (in `RunResult.baselines`; see the baselines page).
        baseline_seeds (int): Random-init models, one per seed (default 3).
        replicates (int): B, the document bootstrap's replicates behind every interval (default 200).
        bootstrap_unit (str): A unit whose seeded Poisson(1) weights multiply every document's (the runner
            sets it for each random-init seed; see normprobe.bootstrap).
        token_counts (str | Path): A file of token id -> count that replaces the corpus's counts in the
            frequency claim (see normprobe.token_counts).
        readout_sample (float): The share of tokens (a seeded hash of document and place) whose updates and
            linesearch statistics are computed (default 1: every token).
        allow_foreign_lens (bool): Use a tuned lens trained for another model (its recorded unembedding hash
            differs); run.json records it.

    Returns:
        RunResult: the tables, claims and metadata of the run.
    """
    return make_runner(model, texts, probes, **options).execute(progress=progress)
