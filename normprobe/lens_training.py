"""`normprobe lens train`: fit a tuned lens (Belrose et al. 2023) to a model and write it in tuned-lens's format.

The recipe is tuned-lens's own: one residual affine translator per layer, initialised at zero (so
training starts from the logit lens); the loss is the KL divergence from the model's own final
distribution to the lens's, summed over layers with one backward pass per layer; SGD with Nesterov
momentum 0.9 and weight decay 1e-3, gradient norm clipped at 1, a linear warm-up then a linear decay.
Batches come from the corpus in order, cycling when it runs out, so a resumed run sees the same data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import NormprobeError
from .lock import FolderLock
from .options import Corpus
from .staging import StagedFolder, is_empty

CHECKPOINT_FILE = "lens_checkpoint.pt"
TRAINING_FILE = "training.json"


@dataclass
class LensSettings:
    """What decides the lens a training run produces (a resumed run must ask for the same)."""

    steps: int = 250
    lr: float = 0.1  # tuned-lens's default: lr_scale 1 x (1 - momentum)
    batch_size: int = 4  # windows per step (8 is ~3x slower on 2 CPU cores for a lens barely better)
    seq_len: int = 128
    momentum: float = 0.9
    weight_decay: float = 1e-3
    warmup_fraction: float = 0.1

    def validate(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise NormprobeError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.seq_len < 2:
            raise NormprobeError(f"--seq-len must be at least 2 (got {self.seq_len})")
        if not self.lr > 0:
            raise NormprobeError(f"--lr must be positive (got {self.lr})")


def _batches(model, corpus: Corpus, settings: LensSettings, skip: int) -> Iterator[Any]:
    """Batches of `batch_size` windows in corpus order, cycling; the first `skip` batches are dropped."""
    from .batching import collate, iter_windows

    bos = model.bos_token_id
    seen = 0
    buffer: list = []  # kept across cycles: a corpus of fewer windows than a batch fills it over several
    while True:
        any_window = False
        for window in iter_windows(corpus.documents(), model.encode, settings.seq_len, bos):
            any_window = True
            buffer.append(window)
            if len(buffer) == settings.batch_size:
                if seen >= skip:
                    yield collate(buffer, model.pad_token_id, model.device)
                seen += 1
                buffer = []
        if not any_window:
            raise NormprobeError("no tokens to train on: the documents tokenised to nothing")


def _schedule(settings: LensSettings):
    warmup = max(1, int(settings.steps * settings.warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (settings.steps - step) / max(1, settings.steps - warmup))

    return factor


class LensTrainer:
    """One training run into a folder: checkpoints as it goes, the lens and training.json at the end."""

    def __init__(self, model, corpus: Corpus, settings: LensSettings, out: Path):
        import torch

        from .readouts import make_readout
        from .readouts.tuned import new_translators

        self.model, self.corpus, self.settings, self.out = model, corpus, settings, Path(out)
        self.readout = make_readout(model, "logit").base
        self.translators = new_translators(model.d_model, model.n_layers).to(model.device)
        self.optimizer = torch.optim.SGD(
            self.translators.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            nesterov=True,
            weight_decay=settings.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(settings))
        self.step = 0
        self.layer_losses: list[float] = []
        self.corpus_sha256 = corpus.digest()  # resume refuses other documents, as `run --resume` does
        self._hooks = [model.hook_name("resid_pre", l) for l in range(model.n_layers)]
        self._final = model.hook_name("resid_post", model.n_layers - 1)

    # -- checkpoints ---------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        return {
            "model": self.model.source.name,
            "corpus": self.corpus.description,
            "corpus_sha256": self.corpus_sha256,
            **asdict(self.settings),
        }

    def save_checkpoint(self) -> None:
        import io

        import torch

        from .results import write_atomic

        buffer = io.BytesIO()
        torch.save(
            {
                "translators": self.translators.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "identity": self.identity(),
                "layer_losses": self.layer_losses,
            },
            buffer,
        )
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            write_atomic(self.out / CHECKPOINT_FILE, buffer.getvalue())  # temp file, fsync, rename
        except OSError as exc:
            raise NormprobeError(f"cannot write in {self.out}: {exc.strerror or type(exc).__name__}; {self._kept()}") from None

    def _kept(self) -> str:
        path = self.out / CHECKPOINT_FILE
        return f"the last checkpoint ({path}) is kept; continue with --resume" if path.is_file() else "no checkpoint was saved"

    def load_checkpoint(self) -> None:
        from .store import load_state_file

        path = self.out / CHECKPOINT_FILE
        if not path.is_file():
            raise NormprobeError(f"{self.out} has no {CHECKPOINT_FILE} to resume from")
        state = load_state_file(path, "lens checkpoint")  # data only: never a pickle that runs code
        if not (
            isinstance(state, dict)
            and isinstance(state.get("identity"), dict)
            and all(isinstance(state.get(k), dict) for k in ("translators", "optimizer", "scheduler"))
            and isinstance(state.get("step"), int)
            and 0 <= state["step"] <= self.settings.steps
            and isinstance(state.get("layer_losses"), list)
        ):
            raise NormprobeError(
                f"{path} is not a normprobe lens checkpoint (it lacks the translators, optimiser "
                "and step); start the training again"
            )
        for key, value in self.identity().items():
            if state["identity"].get(key) != value:
                raise NormprobeError(
                    f"cannot resume: {key} differs (the training used {state['identity'].get(key)!r}, "
                    f"this command gives {value!r})"
                )
        from .readouts.tuned import check_lens_state

        check_lens_state(state["translators"], self.translators, path)
        try:
            self.translators.load_state_dict(state["translators"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise NormprobeError(
                f"{path} does not fit this lens ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]}); start the training again"
            ) from None
        self.step, self.layer_losses = int(state["step"]), list(state["layer_losses"])

    # -- training --------------------------------------------------------------
    def train_step(self, batch) -> list[float]:
        """One optimiser step on one batch; returns each layer's KL (nats per token) before the step."""
        import torch

        captured: dict[str, torch.Tensor] = {}
        hooks = [
            (name, lambda act, hook=None, name=name: captured.__setitem__(name, act.detach().float()))
            for name in (*self._hooks, self._final)
        ]
        with torch.no_grad():
            self.model.forward(batch.tokens, batch.mask.long(), hooks)
            mask = batch.mask
            target = torch.log_softmax(self.readout.logits(captured[self._final][mask]), dim=-1)
            target_p = target.exp()
        self.optimizer.zero_grad(set_to_none=False)
        losses = []
        for layer, name in enumerate(self._hooks):  # one backward per layer keeps one [tokens x vocab] graph
            h = captured.pop(name)[mask]
            logits = self.readout.logits(h + self.translators[layer](h))
            kl = (target_p * (target - torch.log_softmax(logits, dim=-1))).sum(-1).mean()
            kl.backward()
            losses.append(float(kl.detach()))
        torch.nn.utils.clip_grad_norm_(self.translators.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return losses

    def run(self, progress: bool = True, checkpoint_every: int = 50) -> Path:
        from .console import progress_bar
        from .interrupt import RunInterrupted, StopRequests
        from .readouts.tuned import save_lens

        settings = self.settings
        bar = progress_bar(settings.steps, progress, unit="step", desc="training lens")
        bar.update(self.step)
        batches = _batches(self.model, self.corpus, settings, skip=self.step)
        try:
            with StopRequests(unit="step") as stops:
                while self.step < settings.steps:
                    self.layer_losses = self.train_step(next(batches))
                    self.step += 1
                    bar.update(1)
                    bar.set_postfix(kl=f"{sum(self.layer_losses) / len(self.layer_losses):.3f}")
                    if stops.requested or self.step % checkpoint_every == 0:
                        self.save_checkpoint()
                    if stops.requested:
                        raise RunInterrupted(
                            f"stopped by {stops.requested} after {self.step} steps; "
                            f"resume with `normprobe lens train ... --out {self.out} --resume`"
                        )
        finally:
            # A second signal (KeyboardInterrupt) stops at once and saves nothing: the step it cut may have
            # half-updated the weights, so the last whole checkpoint is what --resume continues from.
            bar.close()
        from .results import write_atomic

        try:
            save_lens(self.out, self.translators, self.model)
            write_atomic(
                self.out / TRAINING_FILE,
                (
                    json.dumps(
                        {
                            **self.identity(),
                            "corpus_sha256": self.corpus.digest(),
                            "recipe": "tuned-lens: zero-init residual translators, KL to the final distribution, "
                            "SGD Nesterov, linear warm-up and decay",
                            "final_kl_by_layer": self.layer_losses,
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        },
                        indent=2,
                    )
                    + "\n"
                ).encode("utf-8"),
            )
        except OSError as exc:
            if not (self.out / CHECKPOINT_FILE).is_file():
                try:  # keep the finished training resumable if there is room for that, not for the lens
                    self.save_checkpoint()
                except NormprobeError:
                    pass
            raise NormprobeError(
                f"cannot write the lens in {self.out}: {exc.strerror or type(exc).__name__}; {self._kept()}"
            ) from None
        (self.out / CHECKPOINT_FILE).unlink(missing_ok=True)
        return self.out


def train_lens(
    model: Any,
    out: str | Path,
    *,
    texts: Sequence[str] | None = None,
    input: str | Path | None = None,
    text_field: str = "text",
    encoding: str = "utf-8",
    errors: str = "strict",
    steps: int = 250,
    lr: float = 0.1,
    batch_size: int = 4,
    seq_len: int = 128,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    checkpoint_every: int = 50,
) -> Path:
    """Train a tuned lens for `model` on a corpus and write it to OUT (config.json, params.pt, training.json).

    Everything is checked before the model loads; with `resume=True` training continues from OUT's checkpoint.
    """
    from .adapter import ModelAdapter, load_model, resolve_source, validate_source
    from .corpus import InputSpec
    from .results import check_output_dir

    settings = LensSettings(steps=steps, lr=lr, batch_size=batch_size, seq_len=seq_len)
    settings.validate()
    if checkpoint_every < 1:
        raise NormprobeError(f"--checkpoint-every must be at least 1 (got {checkpoint_every})")
    if texts is not None and input is not None:
        raise NormprobeError("give texts or an input file, not both")
    corpus = Corpus(
        list(texts) if texts is not None else None,
        InputSpec(Path(input), text_field, encoding, errors) if input is not None else None,
    )
    corpus.validate()
    out = Path(out)
    if resume:
        if not (out / CHECKPOINT_FILE).is_file():
            raise NormprobeError(f"{out} has no {CHECKPOINT_FILE} to resume from")
    else:
        check_output_dir(out, overwrite)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NormprobeError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    lock = FolderLock.acquire(out)  # one writer per folder, as for `run`: a second `lens train` is refused
    staged: StagedFolder | None = None
    try:
        if resume:
            _check_corpus_before_loading(out / CHECKPOINT_FILE, corpus)
        else:
            check_output_dir(out, overwrite)  # again, now that no other writer can start
            if not is_empty(out):  # --overwrite: the old lens stays whole until the new one is written
                staged = StagedFolder(out)
        if not isinstance(model, ModelAdapter):
            from .adapter import pick_device
            from .console import loaded_line, model_line, say

            source = resolve_source(str(model))
            validate_source(source)
            say(model_line(source, "float32", pick_device(device)), progress)
            started = time.time()
            model = load_model(str(model), device=device)
            say(loaded_line(source.name, time.time() - started, model.n_layers, model.d_model, model.device), progress)
        settings.seq_len = min(settings.seq_len, model.n_ctx)
        trainer = LensTrainer(model, corpus, settings, out if staged is None else staged.path)
        if resume:
            trainer.load_checkpoint()
        trainer.run(progress=progress, checkpoint_every=checkpoint_every)
        if staged is not None:
            staged.commit(lock)
        return out
    except NormprobeError as exc:
        if staged is None:
            raise
        staged.give_up(CHECKPOINT_FILE)
        raise type(exc)(f"{exc}{staged.note('training')}") from None
    finally:
        if staged is not None:
            staged.abandon()
        lock.release()
        if created:
            try:
                out.rmdir()  # failed before writing anything: leave nothing behind
            except OSError:
                pass  # not empty: the lens or a checkpoint is in it


def _check_corpus_before_loading(path: Path, corpus: Corpus) -> None:
    """Refuse other documents (a changed file, other --text values) before the model loads, as `run --resume` does."""
    from .store import load_state_file

    saved = load_state_file(path, "lens checkpoint")
    identity = saved.get("identity") if isinstance(saved, dict) else None
    if isinstance(identity, dict) and identity.get("corpus_sha256") != corpus.digest():
        raise NormprobeError(
            f"cannot resume: the corpus differs ({corpus.description}: its documents' digest is not "
            "that of the corpus the training used)"
        )
