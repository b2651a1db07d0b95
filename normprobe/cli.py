"""The `normprobe` command: a thin typer layer over the Python API.

Heavy imports (torch, TransformerLens, plotly) happen inside commands so `--help` answers at once.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import NormprobeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Probe how causal language models shape token representations, layer by layer.",
)
_state = {"debug": False}

ProbeOpt = Annotated[
    list[str], typer.Option("--probe", "-p", help="Probe name, FILE.py[:Class] or module:Class; repeat for several.")
]
TextOpt = Annotated[list[str] | None, typer.Option("--text", help="A document; repeat for several.")]
InputOpt = Annotated[
    Path | None, typer.Option("--input", "-i", help="Corpus file: .txt (a document per line), .jsonl, .csv or .parquet.")
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default reports/<model>-<timestamp>/).")]
PlotlyOpt = Annotated[str, typer.Option("--plotlyjs", help="inline (works offline) or cdn (small file).")]
ProbeModuleOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--probe-module",
        help="Code of a custom probe (FILE.py[:Class] or module:Class) whose own figures draw its section; "
        "a saved folder never names code that is run. Repeat for several.",
    ),
]
FormatOpt = Annotated[
    str, typer.Option("--format", help="html, or also write each figure as png or svg into DIR/figures/ (needs kaleido).")
]


def _check_format(fmt: str) -> None:
    if fmt not in ("html", "png", "svg"):
        raise NormprobeError(f"--format must be html, png or svg, not {fmt!r}")


def parse_layers(text: str | None) -> list[int] | None:
    """'0,3,5', '2-4' or 'all' to a list of layer indices."""
    if text is None or text.strip() in ("", "all"):
        return None
    layers: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = (
                    part.split("-", 1) if not part.startswith("-") else ("-" + part[1:].split("-")[0], part[1:].split("-", 1)[1])
                )
                layers.extend(range(int(lo), int(hi) + 1))
            else:
                layers.append(int(part))
    except ValueError:
        raise NormprobeError(f"invalid --layers {text!r}; use e.g. 0,3,5 or 2-4 or all") from None
    return sorted(set(layers))


def parse_alphas(text: str | None) -> list[float] | None:
    """'0,0.5,1,2' to a list of step sizes."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise NormprobeError(f"invalid --alphas {text!r}; use numbers separated by commas, e.g. 0,0.5,1,2") from None


def _default_out(model: str) -> Path:
    from .api import folder_slug

    return Path("reports") / f"{folder_slug(model)}-{time.strftime('%Y%m%d-%H%M%S')}"


def _no_model_needed() -> None:
    """torch loads only if something reads from it: the probes' modules import it, their tables and
    figures do not use it (`normprobe report` took 1.8 s with it, 0.9 s without)."""
    from .deferred_imports import defer_module

    defer_module("torch")


def _print_version(value: bool) -> None:
    # An eager option callback runs while parsing, before click asks for a command.
    if value:
        from . import __version__

        typer.echo(f"normprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version, expose_value=False),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def run(
    models: Annotated[
        list[str], typer.Argument(help="Model: demo, a Hub name or short name (gpt2-small, pythia-70m), or a local folder.")
    ],
    probe: ProbeOpt = ["norms"],  # noqa: B006 - typer reads this default and never mutates it
    text: TextOpt = None,
    input: InputOpt = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Hugging Face dataset: a Hub name (streamed), a save_to_disk folder, or a folder or glob of data files."
        ),
    ] = None,
    dataset_config: Annotated[str | None, typer.Option(help="Configuration of a Hub --dataset.")] = None,
    split: Annotated[str, typer.Option(help="Split of --dataset.")] = "train",
    text_field: Annotated[
        str, typer.Option(help="Field or column holding the text in .jsonl/.csv/.parquet or --dataset.")
    ] = "text",
    encoding: Annotated[str, typer.Option(help="Text encoding of --input.")] = "utf-8",
    errors: Annotated[str, typer.Option(help="On undecodable bytes: strict (stop) or replace.")] = "strict",
    max_docs: Annotated[int | None, typer.Option(help="Stop after this many documents.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Stop after this many tokens.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Windows per batch (default: from free memory).")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Window length in tokens (default min(1024, context)).")] = None,
    layers: Annotated[str | None, typer.Option(help="Layers to probe: 0,3,5 or 2-4 or all.")] = None,
    prepend_bos: Annotated[
        bool, typer.Option("--prepend-bos/--no-prepend-bos", help="Start every window with BOS when the tokenizer has one.")
    ] = True,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    out: OutOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty output folder.")] = False,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the interrupted run in this folder (same model, corpus and options).")
    ] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Checkpoint every N batches (default: every 5 minutes).")] = None,
    shard: Annotated[str | None, typer.Option(help="Run only documents I mod N (I/N); combine with `normprobe merge`.")] = None,
    checkpoints: Annotated[
        str | None,
        typer.Option(help="Sweep training checkpoints: steps 0,512,1000 | all | every:K (Hub models) | local (folders)."),
    ] = None,
    device_map: Annotated[
        str | None,
        typer.Option(
            help=(
                "Spread one model larger than one device over several (accelerate): auto, "
                "balanced, balanced_low_0 or sequential; run.json records the placement."
            )
        ),
    ] = None,
    n_devices: Annotated[int | None, typer.Option(help="Split one model across this many GPUs.")] = None,
    readout: Annotated[
        str,
        typer.Option(
            help=(
                "How updates and linesearch read h: logit (the logit lens), tuned:DIR (a tuned-lens folder, see "
                "`normprobe lens train`) or model (no lens: the model's own loss, its gradient from one backward pass)."
            )
        ),
    ] = "logit",
    ablate: Annotated[
        bool,
        typer.Option(
            help=(
                "With --readout model: updates reruns the network without each layer's updates for actual_change "
                "(about 1.5 x n_layers forwards per batch)."
            )
        ),
    ] = False,
    alphas: Annotated[
        str | None, typer.Option(help="linesearch step sizes α, e.g. 0,0.5,1,2 (default 0,0.25,0.5,0.75,1,1.25,1.5,2,3).")
    ] = None,
    allow_foreign_lens: Annotated[
        bool, typer.Option(help="Use a tuned lens trained for another model (its unembed_hash differs); run.json records it.")
    ] = False,
    readout_sample: Annotated[
        float,
        typer.Option(
            help="Share of tokens (a seeded hash of each token's document and place: the same in any order, shard or resume) "
            "whose updates and linesearch statistics are computed; norms and the forward see every token."
        ),
    ] = 1.0,
    massive_ratio: Annotated[
        float, typer.Option(help="The massive probe's threshold: a token is massive where max |h_i| / median |h_i| exceeds it.")
    ] = 100.0,
    max_memory: Annotated[
        str | None,
        typer.Option(
            help=(
                "Cap on normprobe's own memory beside the weights, e.g. 8GB or 6GiB: sets the automatic "
                "batch size (default: free memory minus a margin, at most half the machine's or GPU's)."
            )
        ),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline",
            help="A null baseline through the same probes and windows: random-init, shuffled or no-bos; repeat for several.",
        ),
    ] = None,
    baseline_seeds: Annotated[int, typer.Option(help="Random-init models (seeds 0..N-1) for --baseline random-init.")] = 3,
    token_counts: Annotated[
        Path | None,
        typer.Option(
            help=(
                "File of token id -> count (JSON object, or 'id count' lines) "
                "replacing the probe corpus's counts in the frequency claim."
            )
        ),
    ] = None,
    replicates: Annotated[
        int, typer.Option(help="Replicates B of the Poisson bootstrap over documents behind every interval.")
    ] = 200,
    plotlyjs: PlotlyOpt = "inline",
    format: FormatOpt = "html",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar and status lines on stderr.")] = True,
) -> None:
    """Run probes over a corpus and write tables, run.json and report.html."""
    from .distributed import parse_shard
    from .options import check_run

    _check_format(format)
    if errors not in ("strict", "replace"):
        raise NormprobeError(f"--errors must be strict or replace, not {errors!r}")
    if plotlyjs not in ("inline", "cdn"):
        raise NormprobeError(f"--plotlyjs must be inline or cdn, not {plotlyjs!r}")

    common: dict[str, Any] = dict(
        texts=text,
        input=input,
        dataset=dataset,
        dataset_config=dataset_config,
        split=split,
        text_field=text_field,
        encoding=encoding,
        errors=errors,
        max_docs=max_docs,
        max_tokens=max_tokens,
        batch_size=batch_size,
        seq_len=seq_len,
        layers=parse_layers(layers),
        prepend_bos=prepend_bos,
        device=device,
        dtype=dtype,
        plotlyjs=plotlyjs,
        progress=progress,
        checkpoint_every=checkpoint_every,
        massive_ratio=massive_ratio,
        readout=readout,
        alphas=parse_alphas(alphas),
        ablate=ablate,
        max_memory=max_memory,
        baselines=baseline,
        baseline_seeds=baseline_seeds,
        token_counts=token_counts,
        replicates=replicates,
        readout_sample=readout_sample,
        allow_foreign_lens=allow_foreign_lens,
    )
    # every mistake that can be seen without torch is refused before the model, the API or torch is imported
    check_run(models, probe, shard=parse_shard(shard), device_map=device_map, n_devices=n_devices, **common)
    from .api import export_images, run_to_folder
    from .sweep import looks_like_checkpoints, plan, run_sweep

    if checkpoints is not None or looks_like_checkpoints(models):
        if shard is not None:
            raise NormprobeError("--shard does not combine with a checkpoint sweep")
        if resume is not None and out is not None and Path(out) != resume:
            raise NormprobeError("--resume DIR writes into DIR; leave out --out")
        page = run_sweep(
            plan(models, checkpoints),
            resume or out or _default_out(f"{Path(models[0]).name}-sweep"),
            probes=probe,
            resume=resume is not None,
            overwrite=overwrite,
            **common,
        )
        from .claims import baselines_of
        from .report.evolution import first_holds_lines
        from .sweep import Sweep

        sweep = Sweep(page.parent)
        against = [b.replace("_", "-") for b in baselines_of(sweep.claims)]
        for line in first_holds_lines(sweep.first_holds(), against):
            typer.echo(line)
        typer.echo(f"wrote {page.parent}/ (evolution report: {page}; claims by step: {page.parent / 'claims.parquet'})")
        return
    if len(models) > 1:
        if resume is not None or shard is not None:
            raise NormprobeError("--resume and --shard take one model")
        from .api import run_many_to_folder

        found: list[str] = []
        page = run_many_to_folder(
            models, out or _default_out("compare"), probes=probe, overwrite=overwrite, summary=found, **common
        )
        for line in found:
            typer.echo(line)
        typer.echo(f"wrote {page.parent}/ (comparison: {page})")
        return
    if resume is not None and out is not None and Path(out) != resume:
        raise NormprobeError("--resume DIR writes into DIR; leave out --out")
    folder = run_to_folder(
        models[0],
        resume or out or _default_out(models[0]),
        probes=probe,
        resume=resume is not None,
        overwrite=overwrite,
        shard=parse_shard(shard),
        device_map=device_map,
        n_devices=n_devices,
        **common,
    )
    if folder is not None:
        export_images(folder, format, probe_modules=probe)
        if progress:
            from .api import claims_summary
            from .console import say

            for line in claims_summary(folder):
                say(line)
        typer.echo(f"wrote {folder}/ (report: {folder / 'report.html'})")


@app.command()
def compare(
    folders: Annotated[list[Path], typer.Argument(help="Two or more run folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the comparison's report.html.")],
    label: Annotated[list[str] | None, typer.Option("--label", help="A name per run, in order (default: folder names).")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Write into an existing, non-empty folder (replacing its report.html).")
    ] = False,
    plotlyjs: PlotlyOpt = "inline",
) -> None:
    """Render one report overlaying saved runs (different models, sizes, checkpoints, corpora, dtypes)."""
    _no_model_needed()
    from .api import compare_to_folder

    if plotlyjs not in ("inline", "cdn"):
        raise NormprobeError(f"--plotlyjs must be inline or cdn, not {plotlyjs!r}")
    found: list[str] = []
    page = compare_to_folder(folders, out, labels=label, plotlyjs=plotlyjs, overwrite=overwrite, summary=found)
    for line in found:
        typer.echo(line)
    typer.echo(f"wrote {page} and {page.parent / 'claims.parquet'}")


@app.command()
def merge(
    folders: Annotated[list[Path], typer.Argument(help="Folders of `run --shard I/N` runs, one per shard.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder of the merged run.")],
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty output folder.")] = False,
    plotlyjs: PlotlyOpt = "inline",
    probe_module: ProbeModuleOpt = None,
) -> None:
    """Merge shard runs into one run, equal to a single run over all documents."""
    from .api import claims_summary, merge_shards, merged_line

    folder = merge_shards(folders, out, overwrite=overwrite, plotlyjs=plotlyjs, probe_modules=probe_module)
    typer.echo(merged_line(folder))
    for line in claims_summary(folder):
        typer.echo(line)
    typer.echo(f"wrote {folder}/ (report: {folder / 'report.html'})")


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="A run folder written by `normprobe run`.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file to write (default FOLDER/report.html).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    plotlyjs: PlotlyOpt = "inline",
    format: FormatOpt = "html",
    probe_module: ProbeModuleOpt = None,
) -> None:
    """Re-render report.html from a saved run, without the model."""
    _no_model_needed()
    from .api import export_images, rerender

    _check_format(format)
    if plotlyjs not in ("inline", "cdn"):
        raise NormprobeError(f"--plotlyjs must be inline or cdn, not {plotlyjs!r}")
    path = rerender(folder, out, plotlyjs=plotlyjs, overwrite=overwrite, probe_modules=probe_module)
    for image in export_images(folder, format, probe_modules=probe_module):
        typer.echo(f"wrote {image}")
    typer.echo(f"wrote {path}")


@app.command()
def probes() -> None:
    """List the probes you can pass to --probe, with where each comes from."""
    _no_model_needed()
    from .registry import registered_probes

    for entry in registered_probes().values():
        typer.echo(f"{entry.name:<10} {entry.origin:<22} {entry.description}")
    typer.echo("Also: --probe path/to/file.py[:Class] or --probe package.module:Class")


@app.command()
def models() -> None:
    """List the supported model types with their facts, the refused ones with why, and the short names."""
    from .families import FAMILIES, REFUSED, SHORT_NAMES, model_type_rows

    rows = model_type_rows()
    typer.echo(f"Supported model types ({len(rows)}; verified = checked against Hugging Face on a tiny model by the test suite):")
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
    typer.echo("  " + "  ".join(k.ljust(widths[k]) for k in rows[0]).rstrip())
    for row in rows:
        typer.echo("  " + "  ".join(v.ljust(widths[k]) for k, v in row.items()).rstrip())
    typer.echo("Hub examples:")
    for family in FAMILIES:
        if family.examples:
            typer.echo(f"  {family.name:<26} {', '.join(family.examples)}")
    typer.echo("Refused model types:")
    import shutil
    import textwrap

    width = max(60, shutil.get_terminal_size((100, 24)).columns - 1)  # wrapped whole, never clipped by a terminal
    for model_type, reason in sorted(REFUSED.items()):
        typer.echo(textwrap.fill(reason, width, initial_indent=f"  {model_type:<20} ", subsequent_indent=" " * 23))
    typer.echo("Short names:")
    typer.echo(f"  {'demo':<24} built in: a 4-layer GPT-2 shipped with normprobe, no download (`normprobe run demo`)")
    for short, hub in SHORT_NAMES.items():
        typer.echo(f"  {short:<24} {hub}")
    typer.echo("Also: any local Hugging Face folder, any Hub id of a supported model type.")


@app.command()
def trace(
    model: Annotated[
        str, typer.Argument(help="Model: demo, a Hub name or short name (gpt2-small, pythia-70m), or a local folder.")
    ],
    text: TextOpt = None,
    input: InputOpt = None,
    text_field: Annotated[str, typer.Option(help="Field or column holding the text in .jsonl/.csv/.parquet.")] = "text",
    encoding: Annotated[str, typer.Option(help="Text encoding of --input.")] = "utf-8",
    errors: Annotated[str, typer.Option(help="On undecodable bytes: strict (stop) or replace.")] = "strict",
    max_docs: Annotated[
        int | None, typer.Option(help="Trace this many documents (default: every --text, the first document of --input).")
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(help="Trace at most this many tokens of each document, BOS included (default: the model's context)."),
    ] = None,
    readout: Annotated[
        str, typer.Option(help="How each layer is read: logit (the logit lens) or tuned:DIR (a tuned-lens folder).")
    ] = "logit",
    allow_foreign_lens: Annotated[
        bool, typer.Option(help="Use a tuned lens trained for another model (its unembed_hash differs); run.json records it.")
    ] = False,
    top_k: Annotated[int, typer.Option(help="Top tokens kept per layer and position.")] = 5,
    columns: Annotated[
        str, typer.Option(help="all, or lens: the readout's columns only (no norm, update norm, descent cos, loss change).")
    ] = "all",
    prepend_bos: Annotated[
        bool, typer.Option("--prepend-bos/--no-prepend-bos", help="Start each document with BOS when the tokenizer has one.")
    ] = True,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    out: OutOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty output folder.")] = False,
    plotlyjs: PlotlyOpt = "inline",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Status lines on stderr.")] = True,
) -> None:
    """Trace texts through every layer: the lens table with norms, update norms, descent cos and loss changes."""
    from .adapter import check_model_name
    from .tracing import trace_to_folder

    check_model_name(model)

    folder = trace_to_folder(
        model,
        out or _default_out(f"{Path(model).name}-trace"),
        texts=text,
        input=input,
        text_field=text_field,
        encoding=encoding,
        errors=errors,
        max_docs=max_docs,
        max_tokens=max_tokens,
        readout=readout,
        allow_foreign_lens=allow_foreign_lens,
        top_k=top_k,
        columns=columns,
        prepend_bos=prepend_bos,
        device=device,
        dtype=dtype,
        overwrite=overwrite,
        plotlyjs=plotlyjs,
        progress=progress,
    )
    from .report.trace import first_match_lines
    from .tracing import Trace

    for line in first_match_lines(Trace.load(folder).table):
        typer.echo(line)
    typer.echo(f"wrote {folder}/ (trace: {folder / 'trace.html'})")


lens_app = typer.Typer(no_args_is_help=True, help="Tuned lenses: train one for a model (read it with run --readout tuned:DIR).")
app.add_typer(lens_app, name="lens")


@lens_app.command("train")
def lens_train(
    model: Annotated[str, typer.Argument(help="Model: demo, a Hub name or short name, or a local folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the lens (config.json, params.pt: tuned-lens's format).")],
    input: InputOpt = None,
    text: TextOpt = None,
    text_field: Annotated[str, typer.Option(help="Field or column holding the text in .jsonl/.csv/.parquet.")] = "text",
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 250,
    lr: Annotated[float, typer.Option(help="SGD learning rate (Nesterov momentum 0.9, linear warm-up then decay).")] = 0.1,
    batch_size: Annotated[int, typer.Option(help="Windows per step.")] = 4,
    seq_len: Annotated[int, typer.Option(help="Window length in tokens.")] = 128,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps.")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue the interrupted training in --out from its checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty output folder.")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 50,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
) -> None:
    """Train a tuned lens (tuned-lens's recipe) on a corpus (default: the built-in sample)."""
    from .adapter import check_model_name
    from .lens_training import train_lens

    check_model_name(model)

    folder = train_lens(
        model,
        out,
        texts=text,
        input=input,
        text_field=text_field,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seq_len=seq_len,
        device=device,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        checkpoint_every=checkpoint_every,
    )
    typer.echo(f"wrote {folder}/ (use it with: normprobe run {model} --probe updates --readout tuned:{folder})")


def _fail(message: str, code: int, whole_process: bool = False) -> None:
    typer.echo(f"normprobe: error: {message}", err=True)
    if whole_process:
        # The one line is all there is left to say. A thread pool (arrow's, torch's) can abort the
        # interpreter's teardown ("terminate called without an active exception", exit -6 instead of 1)
        # when a loaded machine ends the process mid-error: end it without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


# typer may vendor its own click; find its base exception classes from what it exports.
_CLICK_ERROR: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def resume_command(argv: list[str], folder: Path, resume_here: bool = False) -> str:
    """The command that continues an interrupted run: the same arguments, --out DIR becoming --resume DIR
    (or --resume FOLDER, when the run was written beside --out to replace it)."""
    import shlex

    kept: list[str] = []
    target = None
    args = iter(argv)
    for arg in args:
        if arg in ("--out", "-o", "--resume"):
            target = next(args, None)
        elif arg.startswith(("--out=", "--resume=")):
            target = arg.split("=", 1)[1]
        elif arg != "--overwrite":
            kept.append(arg)
    return shlex.join(["normprobe", *kept, "--resume", str(folder if resume_here else target or folder)])


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, exit 1 for bad input, 2 for bad usage, 130 on Ctrl-C."""
    from .deferred_imports import defer_module
    from .distributed import is_distributed
    from .interrupt import RunInterrupted

    if argv is None:  # this process is the CLI's: pandas loads with the first table, after a run frees its model
        defer_module("pandas")
    try:
        code = app(args=argv, prog_name="normprobe", standalone_mode=False)
    except RunInterrupted as exc:
        typer.echo(f"normprobe: interrupted: {exc}", err=True)
        if exc.folder is not None:
            again = resume_command(sys.argv[1:] if argv is None else argv, exc.folder, exc.resume_here)
            typer.echo(f"normprobe: to continue: {again}", err=True)
        sys.exit(exc.exit_code)
    except NormprobeError as exc:
        if _state["debug"]:
            raise
        _fail(" ".join(str(exc).split()), exc.exit_code, whole_process=argv is None)
    except _CLICK_ERROR as exc:
        _fail(" ".join(exc.format_message().split()), exc.exit_code, whole_process=argv is None)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("normprobe: interrupted", err=True)
        sys.exit(130)
    else:
        code = code if isinstance(code, int) else 0
        if argv is None or is_distributed():
            # Every file is written and closed: skip the interpreter's teardown. Freeing torch, arrow and
            # their thread pools costs about a second, and a pool once aborted it after finished work
            # ("terminate called without an active exception", exit -6); under torchrun gloo's threads do.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)


if __name__ == "__main__":
    main()
