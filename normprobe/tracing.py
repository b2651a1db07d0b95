"""`normprobe trace`: one text at every layer, as a tidy table with one row per (layer, position).

The same parts as a run, without a corpus loop: the adapter, the readout the probes use
(`make_readout`) and one hooked forward pass per document, whose per-token values are kept
instead of reduced. Rows follow the tuned-lens package's stream layout: layer l < L reads
h_l = resid_pre of block l (Hugging Face `hidden_states[l]`), layer L the last block's output,
read through the readout at layer L, which for every readout is the model's own output logits.

(The module is `tracing`, not `trace`: importing a submodule named `trace` would replace the
lazily exported function `normprobe.trace` with the module.)
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import NormprobeError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from .adapter import ModelAdapter

TABLE_FILE = "trace.parquet"
PAGE_FILE = "trace.html"
RUN_FILE = "run.json"
KIND = "trace"  # run.json's `kind`, which tells `normprobe report` to re-render a trace page
COLUMNS = (
    "doc",
    "layer",
    "position",
    "token_id",
    "token",
    "target_id",
    "target_logprob",
    "target_rank",
    "entropy",
    "top_ids",
    "top_logprobs",
    "top_tokens",
    "norm",
    "update_norm",
    "descent_cos",
    "delta_loss",
)
LENS_COLUMNS = ("target_logprob", "target_rank", "entropy", "top_ids", "top_logprobs", "top_tokens")
EXTRA_COLUMNS = ("norm", "update_norm", "descent_cos", "delta_loss")  # null under columns="lens"
COLUMN_SETS = ("all", "lens")
READOUT_CHUNK = 1 << 24  # logits (positions x vocabulary) held at once: 64 MB in float32
GROUP_BYTES = 1 << 29  # hidden states of the documents read out together: 512 MB in float32
VISIBLE_WHITESPACE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible(token: str) -> str:
    """A token's decoded text with its whitespace made visible (a space is ␣, a newline ↵)."""
    return "".join(VISIBLE_WHITESPACE.get(c, c) for c in token)


# -- validation (before any model loads) ------------------------------------------
def check_options(top_k: Any, max_tokens: Any, columns: Any = "all") -> None:
    if columns not in COLUMN_SETS:
        raise NormprobeError(f"--columns must be all or lens, not {columns!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise NormprobeError(f"--top-k must be a whole number of at least 1 (got {top_k!r})")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise NormprobeError(f"--max-tokens must be a whole number of at least 1 (got {max_tokens!r})")


def documents_to_trace(
    texts: str | Sequence[str] | None = None,
    input: str | Path | None = None,
    *,
    text_field: str = "text",
    encoding: str = "utf-8",
    errors: str = "strict",
    max_docs: int | None = None,
) -> list[str]:
    """The documents a trace reads: every text given, or the first `max_docs` (default 1) of a file."""
    from .corpus import InputSpec, as_text, iter_documents, validate_input

    if max_docs is not None and (isinstance(max_docs, bool) or not isinstance(max_docs, int) or max_docs < 1):
        raise NormprobeError(f"--max-docs must be a whole number of at least 1 (got {max_docs!r})")
    if texts is None and input is None:
        raise NormprobeError("give the text to trace: --text TEXT (repeatable) or --input FILE")
    if texts is not None and input is not None:
        raise NormprobeError("give the text to trace with --text or with --input, not both")
    if input is not None:
        spec = InputSpec(Path(input), text_field, encoding, errors)
        validate_input(spec)
        docs = []
        for doc in iter_documents(spec):
            docs.append(doc)
            if len(docs) >= (max_docs or 1):
                break
        return docs
    texts = [texts] if isinstance(texts, str) else list(texts or [])
    if not texts:
        raise NormprobeError("give at least one text to trace")
    for number, text in enumerate(texts, start=1):
        if not isinstance(text, str):
            raise NormprobeError(f"text {number} is {type(text).__name__}, not a string")
        if not text.strip():
            raise NormprobeError(f"text {number} is empty or only whitespace; there is nothing to trace")
        as_text(text, f"text {number}", errors)
    return texts[:max_docs] if max_docs is not None else texts


def _model_for(model: str | ModelAdapter, readout, device: str, dtype: str) -> ModelAdapter:
    """A loaded adapter as is; a name is checked (with the lens against its config) and loaded."""
    from .adapter import ModelAdapter, load_model, parse_dtype, resolve_source, validate_source
    from .readouts import check_lens_fits_config

    if isinstance(model, ModelAdapter):
        return model
    if not isinstance(model, str):
        raise NormprobeError(f"model must be a name, a folder or a loaded ModelAdapter, not {type(model).__name__}")
    parse_dtype(dtype)
    check_lens_fits_config(readout, validate_source(resolve_source(model)), model)
    return load_model(model, device=device, dtype=dtype)


# -- the trace ---------------------------------------------------------------------------
def _traceable(spec):
    """A readout that gives every layer its own logits; the model readout has none, refused before any load."""
    if spec.kind == "model":
        raise NormprobeError(
            "trace reads every layer through a lens, and --readout model has none (it reads h_l "
            "through the rest of the network): use logit or tuned:DIR"
        )
    return spec


def trace(
    model: str | ModelAdapter,
    text: str | Sequence[str],
    readout: str = "logit",
    top_k: int = 5,
    *,
    max_tokens: int | None = None,
    prepend_bos: bool = True,
    device: str = "auto",
    dtype: str = "float32",
    allow_foreign_lens: bool = False,
    columns: str = "all",
) -> Trace:
    """Trace texts through every layer of a model and return a `Trace` (`.table`, `.figure()`, `.save()`).

    `model` is a name or folder (`demo`, `gpt2-small`, `./my-model`) or a `ModelAdapter` from
    `normprobe.load_model`, which is reused: tracing ten prompts loads the model once. `text` is one
    string or a list (one trace each, told apart by the `doc` column). `readout` is `logit` (the logit
    lens) or `tuned:DIR` (a tuned lens; one trained for another model needs `allow_foreign_lens`);
    `max_tokens` caps each document's tokens, BOS included. `columns="lens"` computes the readout's
    columns only (norm, update_norm, descent_cos and delta_loss stay null): one product with the
    unembedding per layer instead of two.
    """
    from .readouts import parse_readout

    docs = documents_to_trace(text)
    return trace_documents(
        model,
        docs,
        readout=parse_readout(readout),
        top_k=top_k,
        max_tokens=max_tokens,
        prepend_bos=prepend_bos,
        device=device,
        dtype=dtype,
        allow_foreign_lens=allow_foreign_lens,
        columns=columns,
    )


def trace_documents(
    model,
    docs: list[str],
    *,
    readout,
    top_k: int,
    max_tokens: int | None,
    prepend_bos: bool,
    device: str = "auto",
    dtype: str = "float32",
    source: str = "texts",
    allow_foreign_lens: bool = False,
    columns: str = "all",
) -> Trace:
    import pandas as pd
    import torch

    from .readouts import make_readout, parse_readout

    check_options(top_k, max_tokens, columns)
    spec = _traceable(parse_readout(readout))
    adapter = _model_for(model, spec, device, dtype)
    started = time.time()  # the trace itself, not the model's load
    reader = make_readout(adapter, spec, allow_foreign_lens)  # a lens for another model fails here, in one line
    if not callable(getattr(reader, "logits", None)):
        raise NormprobeError(f"readout {spec.kind!r} gives no logits, so it cannot be traced")
    if top_k > adapter.d_vocab:
        raise NormprobeError(f"--top-k {top_k} is more than {adapter.source.name}'s vocabulary of {adapter.d_vocab}")
    attention = adapter.select_attention(False)  # what a run without pattern probes uses, so the two agree
    token_ids = [_token_ids(adapter, doc, text, max_tokens, prepend_bos) for doc, text in enumerate(docs)]
    with torch.inference_mode():
        frames = [
            _trace_group(adapter, reader, group, token_ids, top_k, columns == "all") for group in _groups(adapter, token_ids)
        ]
    table = pd.concat(frames, ignore_index=True).sort_values(["doc", "layer", "position"], kind="stable")
    table = table[list(COLUMNS)].reset_index(drop=True)
    meta = {
        "kind": KIND,
        "status": "complete",
        "model": adapter.source.name,
        "resolved_model": adapter.source.location,
        "model_source": adapter.source.kind,
        "revision": adapter.source.revision,
        **{("model_n_ctx" if k == "n_ctx" else k): v for k, v in adapter.facts().items()},
        "dtype": adapter.dtype,
        "device": str(adapter.device),
        "attention": attention[0],
        "activation": adapter.activation[0],
        "readout": {
            **spec.describe(),
            "label": spec.label,
            "text": spec.text,
            **({"foreign_lens_allowed": True} if spec.kind == "tuned" and allow_foreign_lens else {}),
        },
        "top_k": top_k,
        "columns": columns,
        "max_tokens": max_tokens,
        "prepend_bos": prepend_bos,
        "corpus": source,
        "n_docs": len(docs),
        "n_tokens": sum(len(i) for i in token_ids),
        "texts": list(docs),
        "token_ids": token_ids,
        "seconds": round(time.time() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": dict(_versions()),
    }
    return Trace(table=table, meta=meta)


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    from .runner import _versions as versions

    return versions()


def _token_ids(adapter, doc: int, text: str, max_tokens: int | None, prepend_bos: bool) -> list[int]:
    from .batching import token_pieces
    from .console import warn

    bos = adapter.bos_token_id if prepend_bos else None
    ids = ([bos] if bos is not None else []) + [i for piece in token_pieces(doc, text, adapter.encode) for i in piece]
    if not ids:
        raise NormprobeError(f"text {doc + 1} tokenises to nothing; there is nothing to trace")
    limit = min(max_tokens or adapter.n_ctx, adapter.n_ctx)
    if len(ids) > limit:
        if max_tokens is None or max_tokens > adapter.n_ctx:
            warn(f"text {doc + 1} has {len(ids)} tokens; tracing the first {limit}, {adapter.source.name}'s context")
        ids = ids[:limit]
    return ids


def _residuals(adapter, ids: list[int]) -> torch.Tensor:
    """h_0..h_L [L + 1, T, d] in float32 from one hooked forward: resid_pre of each block, then the last output."""
    import torch

    L = adapter.n_layers
    names = [adapter.hook_name("resid_pre", l) for l in range(L)] + [adapter.hook_name("resid_post", L - 1)]
    kept: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda activation, hook=None: kept.__setitem__(name, activation[0].float())

    tokens = torch.tensor([ids], dtype=torch.long, device=adapter.device)
    adapter.forward(tokens, torch.ones_like(tokens), [(n, keep(n)) for n in names])
    silent = [n for n in names if n not in kept]
    if silent:
        raise NormprobeError(
            f"hook {silent[0]} was attached but never fired on {adapter.source.name} ({len(silent)} of {len(names)} hooks silent)"
        )
    return torch.stack([kept[n] for n in names])


def _readout_rows(reader, h: torch.Tensor, layer: int, targets: torch.Tensor, top_k: int, rows_per_chunk: int):
    """Per position: the target's log-prob and rank, the entropy, and the top-k ids and log-probs."""
    import torch

    parts: dict[str, list] = {"target_logprob": [], "target_rank": [], "entropy": [], "top_ids": [], "top_logprobs": []}
    for start in range(0, h.shape[0], rows_per_chunk):
        logprobs = torch.log_softmax(reader.logits(h[start : start + rows_per_chunk], layer).float(), dim=-1)
        top = torch.topk(logprobs, top_k, dim=-1)
        parts["top_ids"].append(top.indices)
        parts["top_logprobs"].append(top.values)
        parts["entropy"].append(-(logprobs.exp() * logprobs).sum(-1))
        chunk_targets = targets[start : start + rows_per_chunk]
        has = chunk_targets >= 0
        target_lp = logprobs.gather(1, chunk_targets.clamp(min=0)[:, None]).squeeze(1)
        parts["target_logprob"].append(torch.where(has, target_lp, torch.full_like(target_lp, float("nan"))))
        parts["target_rank"].append(torch.where(has, (logprobs > target_lp[:, None]).sum(-1), -1))
    return {k: torch.cat(v).cpu() for k, v in parts.items()}


def _groups(adapter, token_ids: list[list[int]]) -> Iterator[list[int]]:
    """Documents in order, grouped so that a group's hidden states stay under GROUP_BYTES (a document alone may not)."""
    per_token = (adapter.n_layers + 1) * adapter.d_model * 4
    group: list[int] = []
    size = 0
    for doc, ids in enumerate(token_ids):
        if group and (size + len(ids)) * per_token > GROUP_BYTES:
            yield group
            group, size = [], 0
        group.append(doc)
        size += len(ids)
    if group:
        yield group


def _trace_group(adapter, reader, docs: list[int], token_ids: list[list[int]], top_k: int, extra: bool = True) -> pd.DataFrame:
    """Each document's own forward pass (no padding), then every readout over the group's positions at once.

    Without `extra`, only the readout's columns: norm, update_norm, descent_cos and delta_loss stay null.
    """
    import numpy as np
    import pandas as pd
    import torch

    from .readouts import chunked_loss, chunked_loss_and_grad
    from .readouts.steps import step_statistics

    L, V = adapter.n_layers, adapter.d_vocab
    ids = [i for d in docs for i in token_ids[d]]
    hs = torch.cat([_residuals(adapter, token_ids[d]) for d in docs], dim=1)  # [L + 1, positions, d]
    targets = torch.tensor([t for d in docs for t in token_ids[d][1:] + [-1]], dtype=torch.long, device=hs.device)
    has = targets >= 0  # positions with a next token
    rows_per_chunk = max(1, READOUT_CHUNK // V)
    # The block's loss change reads h_{l+1} through layer l's readout, as the updates probe does; the
    # logit readout is the same at every layer, so there it is the next layer's loss.
    same_every_layer = reader.kind == "logit"
    nan = torch.full((len(ids),), float("nan"))
    per_layer, losses = [], {}
    for layer in range(L + 1):
        h = hs[layer]
        values = _readout_rows(reader, h, layer, targets, top_k, rows_per_chunk)
        values["norm"] = torch.linalg.vector_norm(h, dim=-1).cpu() if extra else nan
        values["update_norm"], values["descent_cos"], values["delta_loss"] = nan, nan.clone(), nan.clone()
        if layer < L and extra:
            delta = hs[layer + 1] - h
            values["update_norm"] = torch.linalg.vector_norm(delta, dim=-1).cpu()
            if bool(has.any()):
                loss, grad = chunked_loss_and_grad(reader, h[has], targets[has], layer, READOUT_CHUNK, V)
                losses[layer] = loss
                values["descent_cos"][has.cpu()] = step_statistics(delta[has], grad)["descent_cos"].cpu()
                if not same_every_layer:
                    values["delta_loss"][has.cpu()] = (
                        chunked_loss(reader, hs[layer + 1][has], targets[has], layer, READOUT_CHUNK, V) - loss
                    ).cpu()
        per_layer.append(values)
    if extra and same_every_layer and bool(has.any()):
        losses[L] = chunked_loss(reader, hs[L][has], targets[has], L, READOUT_CHUNK, V)
        for layer in range(L):
            per_layer[layer]["delta_loss"][has.cpu()] = (losses[layer + 1] - losses[layer]).cpu()

    strings = _token_strings(adapter, set(ids) | {int(i) for v in per_layer for i in v["top_ids"].unique().tolist()})
    n = len(ids)
    doc_column = np.repeat(np.asarray(docs, dtype=np.int64), [len(token_ids[d]) for d in docs])
    positions = np.concatenate([np.arange(len(token_ids[d]), dtype=np.int64) for d in docs])
    target_values = targets.cpu().numpy()
    target_ids = pd.array(np.where(target_values >= 0, target_values, 0), dtype="Int64")
    target_ids[target_values < 0] = pd.NA
    tokens = [strings[i] for i in ids]
    frames = []
    for layer, values in enumerate(per_layer):
        top_ids = values["top_ids"].numpy().astype(np.int64)
        rank = pd.array(values["target_rank"].numpy().astype(np.int64), dtype="Int64")
        rank[target_values < 0] = pd.NA
        frames.append(
            pd.DataFrame(
                {
                    "doc": doc_column,
                    "layer": np.full(n, layer, dtype=np.int64),
                    "position": positions,
                    "token_id": np.asarray(ids, dtype=np.int64),
                    "token": tokens,
                    "target_id": target_ids,
                    "target_logprob": values["target_logprob"].double().numpy(),
                    "target_rank": rank,
                    "entropy": values["entropy"].double().numpy(),
                    "top_ids": list(top_ids),
                    "top_logprobs": list(values["top_logprobs"].double().numpy()),
                    "top_tokens": [[strings[i] for i in row] for row in top_ids.tolist()],
                    "norm": values["norm"].double().numpy(),
                    "update_norm": values["update_norm"].double().numpy(),
                    "descent_cos": values["descent_cos"].double().numpy(),
                    "delta_loss": values["delta_loss"].double().numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


_STRINGS: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()


def _token_strings(adapter, ids: set[int]) -> dict[int, str]:
    """Decoded, whitespace-visible text of token ids, remembered per loaded model across traces."""
    known = _STRINGS.setdefault(adapter, {})
    new = sorted(i for i in ids if i not in known)
    known.update({i: visible(s) for i, s in zip(new, adapter.token_strings(new))})
    return known


# -- the result -----------------------------------------------------------------------------
@dataclass(repr=False)
class Trace:
    """One or more texts traced through every layer.

    `table` has one row per (doc, layer, position) (see docs/trace.md for the columns); `meta` holds
    the model's facts, the readout, the texts and their token ids. `figure(metric)` draws the
    layer x position heatmap, `save(dir)` writes trace.parquet, trace.html and run.json.
    """

    table: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"Trace(model={m.get('model')!r}, readout={m.get('readout', {}).get('text')!r}, "
            f"docs={m.get('n_docs')}, tokens={m.get('n_tokens')}, rows={len(self.table)})"
        )

    def figure(self, metric: str = "target_logprob", doc: int = 0):
        """The layer x position heatmap of one document (a plotly Figure), showing `metric` first;
        its buttons switch to the others. Metrics: target_logprob, entropy, norm, descent_cos, delta_loss."""
        from .report.trace import METRICS, trace_figure

        if metric not in METRICS:
            raise NormprobeError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        docs = sorted(self.table["doc"].unique())
        if doc not in docs:
            raise NormprobeError(f"this trace has documents {', '.join(map(str, docs))}, not {doc!r}")
        return trace_figure(self.table[self.table["doc"] == doc], metric, self.meta)

    def _repr_html_(self) -> str:
        from .report.trace import notebook_html

        return notebook_html(self.table, self.meta)

    def to_html(self, path: str | Path, plotlyjs: str = "inline") -> Path:
        import warnings

        from .report.trace import render_trace_page
        from .results import write_atomic

        path = Path(path)
        with warnings.catch_warnings():  # columns="lens": the norm strip averages null columns (empty means)
            warnings.simplefilter("ignore", RuntimeWarning)
            page = render_trace_page(self.table, self.meta, plotlyjs=plotlyjs)
        write_atomic(path, page.encode("utf-8"))
        return path

    def save(self, out: str | Path, overwrite: bool = False, plotlyjs: str = "inline") -> Path:
        """Write trace.parquet, trace.html and run.json (last) into `out`; a non-empty `out` needs `overwrite`."""
        import json

        from .results import _json_safe, _parquet_bytes, write_atomic, write_folder

        def write(folder: Path) -> None:
            write_atomic(folder / TABLE_FILE, _parquet_bytes(self.table))
            self.to_html(folder / PAGE_FILE, plotlyjs=plotlyjs)
            body = {**self.meta, "tables": ["trace"]}
            write_atomic(folder / RUN_FILE, (json.dumps(_json_safe(body), indent=2) + "\n").encode("utf-8"))

        out = Path(out)
        try:  # a non-empty `out` (a run's folder, an older trace) is replaced whole once the trace is complete
            return write_folder(out, overwrite, write)
        except OSError as exc:
            raise NormprobeError(f"cannot write the trace to {out}: {exc.strerror or exc}") from None

    @classmethod
    def load(cls, folder: str | Path) -> Trace:
        """A saved trace folder; one line if it is not one."""
        import pandas as pd

        from .jsonio import read_json
        from .verify import check_trace, read_table

        folder = Path(folder)
        meta = read_json(folder / RUN_FILE, f"{folder} holds no {RUN_FILE}; is it a normprobe trace folder?")
        if not isinstance(meta, dict) or meta.get("kind") != KIND:
            raise NormprobeError(f"{folder / RUN_FILE} is not a trace's run.json")
        check_trace(meta, pd.DataFrame(columns=list(COLUMNS)), folder, table_too=False)  # before the table is read
        if not (folder / TABLE_FILE).is_file():
            raise NormprobeError(f"{folder} is damaged: {TABLE_FILE} is missing")
        table = read_table(folder, folder / TABLE_FILE)
        missing = [c for c in COLUMNS if c not in table.columns]
        if missing:
            raise NormprobeError(f"{folder / TABLE_FILE} lacks the column {missing[0]!r}; the folder is damaged")
        check_trace(meta, table, folder)  # every row where run.json's documents and layers say: no huge grids later
        meta.pop("tables", None)
        return cls(table=table, meta=meta)


def rerender_trace(folder: Path, out: Path | None = None, plotlyjs: str = "inline", overwrite: bool = False) -> Path:
    """`normprobe report DIR` on a trace folder: trace.html again from trace.parquet and run.json, no model."""
    from .lock import FolderLock

    result = Trace.load(folder)
    if out is None:
        with FolderLock.acquire(folder):
            return result.to_html(folder / PAGE_FILE, plotlyjs=plotlyjs)
    out = Path(out)
    if out.is_dir():
        raise NormprobeError(f"--out {out} is a folder; give the path of the HTML file to write")
    if out.exists() and not overwrite:
        raise NormprobeError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return result.to_html(out, plotlyjs=plotlyjs)
    except OSError as exc:
        raise NormprobeError(f"cannot write {out}: {exc.strerror or exc}") from None


def is_trace_folder(folder: str | Path) -> bool:

    from .jsonio import read_json

    try:
        return read_json(Path(folder) / RUN_FILE, "").get("kind") == KIND
    except (NormprobeError, AttributeError):
        return False


def trace_to_folder(
    model: str,
    out: str | Path,
    *,
    texts: Sequence[str] | None = None,
    input: str | Path | None = None,
    text_field: str = "text",
    encoding: str = "utf-8",
    errors: str = "strict",
    max_docs: int | None = None,
    max_tokens: int | None = None,
    readout: str = "logit",
    top_k: int = 5,
    columns: str = "all",
    prepend_bos: bool = True,
    device: str = "auto",
    dtype: str = "float32",
    overwrite: bool = False,
    plotlyjs: str = "inline",
    progress: bool = True,
    allow_foreign_lens: bool = False,
) -> Path:
    """The `trace` command: validate everything before the model loads, trace, save the folder."""
    from .adapter import parse_dtype, pick_device, resolve_source, validate_source
    from .console import model_line, say
    from .readouts import check_lens_fits_config, parse_readout
    from .results import check_output_dir

    if plotlyjs not in ("inline", "cdn"):
        raise NormprobeError(f"--plotlyjs must be inline or cdn, not {plotlyjs!r}")
    if errors not in ("strict", "replace"):
        raise NormprobeError(f"--errors must be strict or replace, not {errors!r}")
    check_options(top_k, max_tokens, columns)
    spec = _traceable(parse_readout(readout))
    docs = documents_to_trace(texts, input, text_field=text_field, encoding=encoding, errors=errors, max_docs=max_docs)
    out = Path(out)
    check_output_dir(out, overwrite)
    dtype = parse_dtype(dtype)
    source = resolve_source(model)
    config = validate_source(source)
    check_lens_fits_config(spec, config, model)
    vocab = (config or {}).get("vocab_size")
    if isinstance(vocab, int) and top_k > vocab:
        raise NormprobeError(f"--top-k {top_k} is more than {model}'s vocabulary of {vocab}")
    say(model_line(source, dtype, pick_device(device)), progress)
    result = trace_documents(
        model,
        docs,
        readout=spec,
        top_k=top_k,
        max_tokens=max_tokens,
        prepend_bos=prepend_bos,
        device=device,
        dtype=dtype,
        source=str(input) if input is not None else "texts",
        allow_foreign_lens=allow_foreign_lens,
        columns=columns,
    )
    say(
        f"traced {result.meta['n_docs']} document(s), {result.meta['n_tokens']} tokens, in {result.meta['seconds']:.1f} s",
        progress,
    )
    return result.save(out, overwrite=overwrite, plotlyjs=plotlyjs)
