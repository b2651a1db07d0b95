"""One pass of windows through a model into probes: the loop the run and each of its baseline passes share.

Windows -> batches -> one hooked forward pass, each probe consuming its layers -> account -> checkpoint when
due. Nothing here knows whether the pass is the model's own or a baseline's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .attention import reads_patterns
from .console import warn
from .errors import NormprobeError
from .hooked import HookedPass, ProbeFailed
from .live_run import LiveRun, make_probe
from .options import DEFAULT_SEQ_LEN, Corpus, RunOptions


class Loop:
    """The loop's methods; the runner (and through it the baseline passes) provides the attributes below."""

    options: RunOptions
    corpus: Corpus
    probe_classes: list[type]
    attention: tuple[str, str]
    _live: LiveRun

    def prepare(self, model) -> tuple[list, int]:
        opts = self.options
        if opts.layers is not None:
            bad = [l for l in opts.layers if l >= model.n_layers]
            if bad:
                raise NormprobeError(f"invalid layer index {bad[0]}: {model.source.name} has layers 0..{model.n_layers - 1}")
        seq_len = min(opts.seq_len or DEFAULT_SEQ_LEN, model.n_ctx)
        if opts.seq_len is not None and opts.seq_len > model.n_ctx:
            warn(
                f"--seq-len {opts.seq_len} is longer than {model.source.name}'s context of {model.n_ctx} tokens; "
                f"using {model.n_ctx}"
            )
        from .memory import check_replicates
        from .readouts import make_readout

        # the bootstrap's replicates are allocated by the probes' setup: a bound first (docs/security.md)
        check_replicates(opts.replicates, model.n_layers, 1 + len(opts.baselines or []), opts.max_memory_bytes)
        make_readout(model, opts.readout, opts.allow_foreign_lens)  # a lens for another model fails here, in one line
        return self.set_up_probes(model, seq_len), seq_len

    def set_up_probes(self, model, seq_len: int) -> list:
        """Fresh probes set up on a model `prepare` has checked, each hook they read checked; picks the attention kernel."""
        probes = [make_probe(cls, self.options.layers, self.options.probe_options()) for cls in self.probe_classes]
        hooks = []
        for probe in probes:
            probe.setup(model, seq_len)
            for point in probe.hook_points():
                hook = model.resolve_hook(point)
                if not model.has_hook(hook):
                    raise NormprobeError(
                        f"probe {probe.name!r} reads hook {hook!r}, which model {model.source.name} "
                        f"({model.family.name}) does not have"
                    )
                hooks.append(hook)
        self.attention = model.select_attention(reads_patterns(hooks))
        return probes

    def _stream(self, model, probes: list, windows: Iterable, total: int | None, done: dict[str, Any]) -> None:
        """One pass of windows through the model into `probes`, counting into `done`; checkpoints when due.

        The model's pass and every baseline pass run here: a baseline is this loop with another model
        or another view of the windows.
        """
        from .batching import iter_batches
        from .console import progress_bar, progress_complete

        live = self._live
        hooked = HookedPass(model, probes)
        bar = progress_bar(total, live.talk)
        bar.update(done["tokens"])
        batches = iter_batches(windows, live.batch_size, model.pad_token_id, model.device)
        try:
            for batch in self._lockstep(batches, done["batches"], live.sync, hooked, probes, bar):
                _count(done, batch)
                due = (
                    (done["batches"] % live.checkpoint_every == 0)
                    if live.checkpoint_every
                    else time.time() - live.last_save >= live.checkpoint_seconds
                )
                if live.stops.requested or due:
                    live.done["seconds"] += time.time() - live.started
                    live.started = live.last_save = time.time()
                    if live.folder is not None:
                        live.folder.save_checkpoint(live.checkpoint_state())
                if live.stops.requested:
                    raise _interrupted(live.stops.requested, live.done, live.folder, live.meta)
            progress_complete(bar)
        finally:
            bar.close()

    def _windows(self, model, seq_len: int, bos: int | None, sync) -> tuple[Iterable, int | None]:
        """This rank's windows, and the token total for the progress bar where it is known up front."""
        from .batching import iter_windows

        opts = self.options
        part = opts.shard if sync.size == 1 else (sync.rank, sync.size)
        windows: Iterable = iter_windows(
            self.corpus.documents(), model.encode, seq_len, bos, opts.max_docs, opts.max_tokens, slice_of=part
        )
        if self.corpus.in_memory and sync.size == 1:  # in memory: tokenise up front so the bar has a total
            windows = list(windows)
            return windows, sum(len(w.tokens) for w in windows)
        return windows, opts.max_tokens

    def _lockstep(self, batches: Iterable, skip: int, sync, hooked: HookedPass, probes: list, bar):
        """Yield each batch once every probe has taken it; ranks step together, so one rank's error stops all.

        The first `skip` batches were counted before the checkpoint a resumed run started from.
        """
        from .bootstrap import ReplicateWeights

        weights = ReplicateWeights(self.options.replicates, self.options.bootstrap_unit)
        batches = iter(batches)
        while True:
            batch = next(batches, None)
            if batch is not None and skip:
                skip -= 1
                continue
            error = None
            if batch is not None:
                batch.replicate_weights = weights.for_windows(batch.doc_seeds, batch.tokens.device)
                try:
                    self._step(hooked, probes, batch)
                except (ProbeFailed, NormprobeError) as exc:
                    error = exc
            step_tokens, active = sync.step(batch.n_tokens if batch is not None else 0, batch is not None, error)
            if not active:
                return
            bar.update(step_tokens)
            if batch is not None:
                yield batch

    @staticmethod
    def _step(hooked: HookedPass, probes: list, batch) -> None:
        reduced = hooked.forward(batch)
        for probe in probes:
            try:
                probe.update(reduced[probe.name], batch)
            except Exception as exc:  # noqa: BLE001 - a probe's own bug fails the run, cleanly
                raise ProbeFailed(probe.name, exc) from exc


def _count(done: dict[str, Any], batch) -> None:
    done["batches"] += 1
    done["tokens"] += batch.n_tokens
    done["windows"] += batch.tokens.shape[0]
    done["docs"] = max(done["docs"], max(batch.doc_indices) + 1)


def _interrupted(signal_name: str, done: dict[str, Any], folder, meta: dict[str, Any]):
    """The run stopped on a signal, its checkpoint saved: run.json says so, and how to continue."""
    from .interrupt import RunInterrupted

    if folder is not None:
        folder.mark(meta, "interrupted", f"stopped by {signal_name} after {done['tokens']} tokens; resume with --resume")
    return RunInterrupted(
        f"stopped by {signal_name} after {done['tokens']:,} tokens" + ("; checkpoint saved" if folder is not None else ""),
        folder.path if folder is not None else None,
    )
