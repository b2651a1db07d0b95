"""A trace's page and figures, drawn from its table alone (never a tensor).

One figure per document: the layer x position heatmap (buttons switch the metric; each cell shows
the readout's top-1 token, the hover its top-k with probabilities) and, beside it on the same layer
axis, a summary strip of the mean norm and mean descent cos over the document's positions.
Every piece of token text goes through `esc`, so a token that looks like markup shows as text.
"""

from __future__ import annotations

import html
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .common import TEMPLATE, Block, Section, esc

# metric -> (label, colorscale, reversed, diverging around 0)
METRICS = {
    "target_logprob": ("target log-prob", "Viridis", False, False),
    "entropy": ("entropy (nats)", "Cividis", False, False),
    "norm": ("norm ‖h‖", "Viridis", False, False),
    "descent_cos": ("descent cos", "RdBu", False, True),
    "delta_loss": ("Δloss", "RdBu", True, True),  # blue where the loss fell
}
CELL_CHARS = 6  # longer top-1 tokens are cut in the cells (the hover has them whole), as tuned-lens's plots do
TICK_CHARS = 12
CELL_TEXT_MAX = 2400  # cells (layers x positions) up to which each cell shows its top-1 token
TICKS_MAX = 80  # positions up to which every input token labels the axis
NOTEBOOK_POSITIONS = 40


def plotly_text(text: Any, limit: int | None = None) -> str:
    """Token text for Plotly: cut to `limit` characters, then <, > and & escaped. Quotes stay as they are:
    Plotly's cell text shows the entity &quot; literally, and inside its JSON they need no escaping."""
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text, quote=False)


def _grid(frame: pd.DataFrame, column: str, n_layers: int, n_positions: int) -> np.ndarray:
    grid = np.full((n_layers + 1, n_positions), np.nan)
    grid[frame["layer"].to_numpy(), frame["position"].to_numpy()] = frame[column].to_numpy(dtype=float, na_value=np.nan)
    return grid


def _as_lists(grid: np.ndarray) -> list:
    """Rows with null for missing cells: strict JSON in the buttons' arguments."""
    return [[None if not math.isfinite(v) else float(v) for v in row] for row in grid]


def _range(grid: np.ndarray, diverging: bool) -> tuple[float, float]:
    finite = grid[np.isfinite(grid)]
    if not finite.size:
        return (-1.0, 1.0)
    if diverging:
        bound = float(np.abs(finite).max()) or 1.0
        return (-bound, bound)
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low - 1.0, high + 1.0)


def _style(metric: str, grid: np.ndarray) -> dict[str, Any]:
    label, scale, reverse, diverging = METRICS[metric]
    low, high = _range(grid, diverging)
    return {
        "z": [_as_lists(grid)],
        "colorscale": [scale],
        "reversescale": [reverse],
        "zmin": [low],
        "zmax": [high],
        "colorbar.title.text": [esc(label)],
        "hovertemplate": [f"%{{hovertext}}<br><b>{esc(label)}</b>: %{{z:.4g}}<extra></extra>"],
    }


def _hover(frame: pd.DataFrame, n_layers: int, n_positions: int) -> list[list[str]]:
    hover = [[""] * n_positions for _ in range(n_layers + 1)]
    tokens: dict[int, str] = dict(zip(frame["position"].tolist(), frame["token"].tolist()))
    rows = zip(
        frame["layer"].tolist(),
        frame["position"].tolist(),
        frame["token"].tolist(),
        frame["top_tokens"].tolist(),
        frame["top_logprobs"].tolist(),
    )
    for layer, position, token, top_tokens, top_logprobs in rows:
        target = tokens.get(position + 1)
        name = "output" if layer == n_layers else f"layer {layer}"
        top = "<br>".join(f"{plotly_text(t)}  {math.exp(lp):.3f}" for t, lp in zip(top_tokens, top_logprobs))
        head = f"{name} · position {position}<br>input {plotly_text(token)}"
        head += f" → target {plotly_text(target)}" if target is not None else " (last position: no target)"
        hover[layer][position] = f"{head}<br>top {len(top_tokens)}:<br>{top}"
    return hover


def trace_figure(frame: pd.DataFrame, metric: str, meta: dict[str, Any]) -> go.Figure:
    """One document's heatmap with its metric buttons and, on the same layer axis, the summary strip.

    Built as one dict (three x axes side by side) rather than through make_subplots: Plotly's object
    updates cost a page of many documents seconds.
    """
    n_layers = int(meta.get("n_layers", frame["layer"].max()))
    n_positions = int(frame["position"].max()) + 1
    grids = {m: _grid(frame, m, n_layers, n_positions) for m in METRICS}
    layers = list(range(n_layers + 1))
    top1 = [["" for _ in range(n_positions)] for _ in layers]
    for layer, position, tops in zip(frame["layer"], frame["position"], frame["top_tokens"]):
        top1[layer][position] = plotly_text(tops[0], CELL_CHARS) if len(tops) else ""
    show_text = (n_layers + 1) * n_positions <= CELL_TEXT_MAX
    style = _style(metric, grids[metric])
    heatmap = dict(
        type="heatmap",
        x=list(range(n_positions)),
        y=layers,
        z=style["z"][0],
        hovertext=_hover(frame, n_layers, n_positions),
        textfont=dict(size=9),
        colorscale=style["colorscale"][0],
        reversescale=style["reversescale"][0],
        zmin=style["zmin"][0],
        zmax=style["zmax"][0],
        zauto=False,
        hovertemplate=style["hovertemplate"][0],
        xgap=1,
        ygap=1,
        colorbar=dict(title=dict(text=style["colorbar.title.text"][0]), x=1.0, len=0.9),
    )
    if show_text:
        heatmap.update(text=top1, texttemplate="%{text}")
    counts = np.bincount(frame["layer"].to_numpy(), minlength=n_layers + 1)
    mean_norm = np.nan_to_num(np.nanmean(grids["norm"], axis=1))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a one-token text has no cos at all
        mean_cos = np.nanmean(grids["descent_cos"][:n_layers], axis=1)
    cos_list = [None if not math.isfinite(v) else float(v) for v in mean_cos]
    norm_bar = dict(
        type="bar",
        x=mean_norm.tolist(),
        y=layers,
        orientation="h",
        marker=dict(color="#7f7f7f"),
        showlegend=False,
        xaxis="x2",
        yaxis="y",
        customdata=counts.tolist(),
        hovertemplate="layer %{y}: mean norm %{x:.4g} over %{customdata} positions<extra></extra>",
    )
    cos_bar = dict(
        type="bar",
        x=cos_list,
        y=layers[:n_layers],
        orientation="h",
        showlegend=False,
        xaxis="x3",
        yaxis="y",
        marker=dict(color=["#2166ac" if (v or 0) > 0 else "#b2182b" for v in cos_list]),
        customdata=(counts[:n_layers] - 1).tolist(),
        hovertemplate="layer %{y}: mean descent cos %{x:.3f} over %{customdata} positions<extra></extra>",
    )
    buttons = [dict(label=esc(METRICS[m][0]), method="restyle", args=[_style(m, grids[m]), [0]]) for m in METRICS]
    ticks = (
        list(range(n_positions)) if n_positions <= TICKS_MAX else list(range(0, n_positions, math.ceil(n_positions / TICKS_MAX)))
    )
    tokens = dict(zip(frame["position"], frame["token"]))
    title = f"{meta.get('model', 'model')}, {meta.get('readout', {}).get('label', 'logit lens')}: every layer, every position"
    strip_title = dict(xref="paper", yref="paper", y=1.0, yanchor="bottom", showarrow=False, font=dict(size=13))
    layout = dict(
        template=TEMPLATE,
        title=dict(text=esc(title), x=0.01),
        height=min(900, max(380, 150 + 30 * (n_layers + 1))),
        margin=dict(l=70, r=30, t=100, b=110),
        bargap=0.15,
        xaxis=dict(
            domain=[0, 0.72],
            tickvals=ticks,
            ticktext=[plotly_text(tokens.get(p, ""), TICK_CHARS) for p in ticks],
            tickangle=-60,
            title=dict(text=esc("input token (position)")),
            showgrid=False,
        ),
        xaxis2=dict(domain=[0.74, 0.86], zeroline=True),
        xaxis3=dict(domain=[0.88, 1.0], zeroline=True),
        yaxis=dict(
            tickvals=layers, ticktext=[str(l) for l in layers[:-1]] + ["out"], title=dict(text=esc("layer")), showgrid=False
        ),
        annotations=[
            dict(text=esc("mean ‖h‖"), x=0.80, **strip_title),
            dict(text=esc("mean descent cos"), x=0.94, **strip_title),
        ],
        updatemenus=[
            dict(
                type="buttons",
                direction="right",
                x=0.0,
                y=1.02,
                xanchor="left",
                yanchor="bottom",
                showactive=True,
                active=list(METRICS).index(metric),
                buttons=buttons,
                pad=dict(t=0, b=0),
            )
        ],
    )
    return go.Figure(dict(data=[heatmap, norm_bar, cos_bar], layout=layout), skip_invalid=False)


def _caption(meta: dict[str, Any]) -> str:
    return esc(
        "Rows: layer l is the input of block l (Hugging Face hidden_states[l]); 'out' is the model's own output. "
        "Each cell shows the readout's top-1 token (hover: the input, its target and the top-k with probabilities). "
        "descent cos is cos(h_{l+1} − h_l, −∇ loss) for the next token and Δloss the readout's loss at h_{l+1} "
        "minus at h_l (negative: the block moved towards the target); both are empty on the last position, "
        "which has no target. The strip on the right averages norm and descent cos over this document's positions: "
        "one text, no interval; a run over a corpus gives intervals."
    )


def document_label(meta: dict[str, Any], doc: int) -> str:
    texts = meta.get("texts") or []
    text = " ".join(str(texts[doc]).split()) if doc < len(texts) else ""
    return f"Document {doc}" + (f": {text[:70]}{'…' if len(text) > 70 else ''}" if text else "")


def render_trace_page(table: pd.DataFrame, meta: dict[str, Any], plotlyjs: str = "inline") -> str:
    from .page import render_page

    sections = []
    for doc in sorted(table["doc"].unique()):
        frame = table[table["doc"] == doc]
        sections.append(
            Section(
                title=document_label(meta, int(doc)),
                anchor=f"doc-{int(doc)}",
                blocks=[Block(figure=trace_figure(frame, "target_logprob", meta), caption=_caption(meta))],
            )
        )
    shown = {k: v for k, v in meta.items() if k not in ("texts", "token_ids")}
    return render_page(shown, sections, plotlyjs=plotlyjs, title=f"normprobe trace: {meta.get('model', 'model')}")


def notebook_html(table: pd.DataFrame, meta: dict[str, Any]) -> str:
    """A plain HTML logit-lens table for notebooks (no plotly.js): top-1 token per layer and position of the
    first document, shaded by the target's probability; `.figure(metric)` gives the interactive heatmap."""
    frame = table[table["doc"] == table["doc"].min()]
    n_layers = int(meta.get("n_layers", frame["layer"].max()))
    positions = sorted(frame["position"].unique())[:NOTEBOOK_POSITIONS]
    cells = {(r.layer, r.position): r for r in frame[frame["position"].isin(positions)].itertuples(index=False)}
    style = "border:1px solid #ddd;padding:1px 4px;font-family:monospace;font-size:0.8em;white-space:pre"
    head = "".join(f'<th style="{style}">{esc(cells[(0, p)].token)}</th>' for p in positions)
    body = []
    for layer in range(n_layers, -1, -1):
        row = []
        for p in positions:
            cell = cells[(layer, p)]
            prob = math.exp(cell.target_logprob) if pd.notna(cell.target_logprob) else 0.0
            shade = f"background:rgba(33,102,172,{0.1 + 0.8 * prob:.2f})" if pd.notna(cell.target_logprob) else ""
            row.append(f'<td style="{style};{shade}">{esc(cell.top_tokens[0])}</td>')
        body.append(f'<tr><th style="{style}">{"out" if layer == n_layers else layer}</th>{"".join(row)}</tr>')
    more = len(frame["position"].unique()) - len(positions)
    note = f" (first {len(positions)} of {len(positions) + more} positions)" if more > 0 else ""
    n_docs = meta.get("n_docs", 1)
    return (
        f"<div><b>normprobe trace</b>: {esc(meta.get('model'))}, {esc(meta.get('readout', {}).get('label'))}, "
        f"{esc(n_docs)} document(s), {esc(meta.get('n_tokens'))} tokens. Top-1 token per layer (rows) and input "
        f"position (columns) of document 0{esc(note)}; blue: the target's probability."
        f'<table style="border-collapse:collapse"><tr><th style="{style}">layer</th>{head}</tr>{"".join(body)}'
        "</table><small>.figure(metric) draws the heatmap, .table holds the data, .save(dir) writes the page."
        "</small></div>"
    )


def first_match_layers(table: pd.DataFrame) -> pd.DataFrame:
    """Per (doc, position): the first layer whose top-1 token is the model's own top-1 (the last layer's).

    One row per (doc, position) with its token, the model's top-1 and `first_match_layer`; the last layer
    is the model's output, so every position matches there at the latest.
    """
    columns = ["doc", "position", "token", "model_top1", "first_match_layer", "output_layer"]
    if not len(table):
        return pd.DataFrame(columns=columns)
    top1 = table["top_ids"].map(lambda ids: int(ids[0]) if len(ids) else -1)
    frame = table[["doc", "layer", "position", "token"]].assign(top1=top1.to_numpy())
    rows = []
    for (doc, position), group in frame.groupby(["doc", "position"], sort=True):
        group = group.sort_values("layer")
        output = group.iloc[-1]
        first = int(group.loc[group["top1"] == output["top1"], "layer"].iloc[0])
        rows.append((int(doc), int(position), output["token"], int(output["top1"]), first, int(output["layer"])))
    return pd.DataFrame(rows, columns=columns)


def first_match_lines(table: pd.DataFrame, width: int = 109) -> list[str]:
    """What `trace` prints: per document, the first layer where the top-1 prediction matches the model's
    output, position by position, and its median; the last layer is the output itself."""
    matches = first_match_layers(table)
    if not len(matches):
        return ["no positions were traced"]
    output = int(matches["output_layer"].iloc[0])
    lines = [f"first layer whose top-1 prediction is the model's (layer {output} is the output), by position:"]
    for doc, rows in matches.groupby("doc", sort=True):
        layers = rows["first_match_layer"].tolist()
        head = f"  doc {doc}: "
        text = " ".join(map(str, layers))
        if len(head) + len(text) > width:
            text = text[: width - len(head) - 2].rsplit(" ", 1)[0] + " …"
        lines.append(head + text)
        only_output = sum(layer == output for layer in layers)
        lines.append(
            f"  doc {doc}: median layer {float(np.median(layers)):g} over {len(layers)} positions; "
            f"{only_output} match only at the output"
        )
    return lines
