"""One page overlaying several saved runs: models, sizes, checkpoints, corpora or dtypes side by side."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

from .common import Block, Section, empty_figure, esc, figure, log_toggle
from .curves import descent_curve, lens_loss_curve, position0_curve, residual_norm_curve
from .norms import norms_findings_rows
from .page import metadata_rows, render_page
from .linesearch import line_search_findings_rows
from .updates import updates_findings_rows

FINDING_ROWS = {"norms": norms_findings_rows, "updates": updates_findings_rows, "linesearch": line_search_findings_rows}


def _depth_toggle(fig: go.Figure, layer_x: list[np.ndarray], relative_x: list[np.ndarray]) -> None:
    """Buttons switching every trace between relative depth (layer / n_layers) and layer index."""
    fig.update_layout(updatemenus=[
        dict(type="buttons", direction="right", x=0.72, y=1.02, xanchor="right", yanchor="bottom", showactive=True,
             buttons=[dict(label="relative depth", method="update",
                           args=[{"x": [list(map(float, x)) for x in relative_x]}, {"xaxis.title.text": "layer / n_layers"}]),
                      dict(label="layer index", method="update",
                           args=[{"x": [list(map(float, x)) for x in layer_x]}, {"xaxis.title.text": "layer"}])]),
        log_toggle("yaxis"),
    ])


def _overlay(title: str, y_title: str, series: list[tuple[str, np.ndarray, np.ndarray, int]], reason: str) -> go.Figure:
    """series: (label, layers, values, n_layers) per run; x starts as relative depth."""
    series = [s for s in series if len(s[1])]
    if not series:
        return empty_figure(title, reason)
    fig = figure(title, "layer / n_layers", y_title)
    layer_x, relative_x = [], []
    for label, layers, values, n_layers in series:
        relative = np.asarray(layers, dtype=float) / n_layers
        layer_x.append(np.asarray(layers, dtype=float))
        relative_x.append(relative)
        fig.add_trace(go.Scatter(x=relative, y=values, mode="lines+markers", name=esc(label),
                                 customdata=np.asarray(layers),
                                 hovertemplate=f"{esc(label)}<br>layer %{{customdata}}<br>%{{y:.4g}}<extra></extra>"))
    _depth_toggle(fig, layer_x, relative_x)
    return fig


def _series(runs, curve) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    series = []
    for label, result in runs:
        layers, values = curve(result)
        if layers is not None:
            series.append((label, layers, values, result.meta["n_layers"]))
    return series


def _norm_growth(runs) -> go.Figure:
    return _overlay("Mean norm of the residual stream h_0..h_L", "mean L2 norm", _series(runs, residual_norm_curve),
                    "no run has the norms probe")


def _position0(runs) -> go.Figure:
    return _overlay("Position-0 outlier: norm at position 0 over the median of later positions", "ratio",
                    _series(runs, position0_curve), "no run has the norms probe with a position 0 and later positions")


def _lens_loss(runs) -> go.Figure:
    return _overlay("Logit-lens loss over depth (last point: the model's output)", "cross-entropy (nats)",
                    _series(runs, lens_loss_curve), "no run has the updates probe")


def _descent(runs) -> go.Figure:
    series = _series(runs, descent_curve)
    fig = _overlay("Descent alignment of the block update, cos(Δ, -dCE/dh)", "mean cosine", series,
                   "no run has the updates probe")
    if series:
        fig.add_hline(y=0, line=dict(color="#888", width=1))
    return fig


def _side_by_side(runs) -> str:
    rows: dict[str, list[str]] = {}
    for i, (_, result) in enumerate(runs):
        for probe, make_rows in FINDING_ROWS.items():
            if probe in result.findings:
                for finding, value in make_rows(result.findings[probe]):
                    rows.setdefault(f"{probe}: {finding}", [""] * len(runs))[i] = value
    head = "".join(f"<th>{esc(label)}</th>" for label, _ in runs)
    body = "".join(f"<tr><td>{esc(k)}</td>{''.join(f'<td>{esc(v)}</td>' for v in vals)}</tr>" for k, vals in rows.items())
    return f"<table><tr><th>finding</th>{head}</tr>{body}</table>"


def _runs_table(runs) -> str:
    keys = ("model", "family", "n_layers", "d_model", "dtype", "corpus", "n_tokens", "status")
    head = "".join(f"<th>{esc(label)}</th>" for label, _ in runs)
    body = "".join(f"<tr><td>{esc(k)}</td>{''.join(f'<td>{esc(r.meta.get(k, chr(8212)))}</td>' for _, r in runs)}</tr>"
                   for k in keys)
    return f"<h2 id=\"runs\">Runs</h2><table><tr><th></th>{head}</tr>{body}</table>"


def unique_labels(labels: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label} ({seen[label]})")
    return out


def render_comparison(results: Sequence[Any], labels: Sequence[str], plotlyjs: str = "inline") -> str:
    runs = list(zip(unique_labels(list(labels)), results))
    section = Section(title="Comparison", anchor="comparison", findings=[], blocks=[
        Block(html=_side_by_side(runs), caption="Each run's findings, side by side."),
        Block(figure=_norm_growth(runs), caption="Runs of different depth line up on relative depth; the buttons switch to layer index."),
        Block(figure=_position0(runs)),
        Block(figure=_lens_loss(runs)),
        Block(figure=_descent(runs)),
    ])
    statuses = {r.meta.get("status", "complete") for _, r in runs}
    meta = {"status": "complete" if statuses == {"complete"} else "partial",
            "status_reason": "at least one run is not complete", "model": ", ".join(l for l, _ in runs)}
    details = "".join(f"<h3>{esc(label)}</h3>" + "<table>" + "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in metadata_rows(r.meta)) + "</table>" for label, r in runs)
    return render_page(meta, [section], plotlyjs=plotlyjs, title=f"normprobe comparison: {' vs '.join(l for l, _ in runs)}",
                       preface=_runs_table(runs), appendix=f'<h2 id="details">Each run\'s metadata</h2>{details}')
