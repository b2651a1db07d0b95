"""One page overlaying several saved runs: models, sizes, checkpoints, corpora or dtypes side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .claims import CONSOLE_WIDTH, VERDICT_STYLE, _clamp, _num, _short_where
from .common import TEMPLATE, Block, Section, empty_figure, esc, figure, integer_axis, log_toggle, present_in_order
from .curves import descent_curve, lens_loss_curve, position0_curve, residual_norm_curve
from .page import metadata_rows, render_page


def _depth_toggle(fig: go.Figure, layer_x: list[np.ndarray], relative_x: list[np.ndarray], log_y: bool) -> None:
    """Buttons switching every trace between relative depth (layer / n_layers) and layer index."""
    menus = [
        dict(
            type="buttons",
            direction="right",
            x=0.72,
            y=1.02,
            xanchor="right",
            yanchor="bottom",
            showactive=True,
            buttons=[
                dict(
                    label="relative depth",
                    method="update",
                    args=[{"x": [list(map(float, x)) for x in relative_x]}, {"xaxis.title.text": "layer / n_layers"}],
                ),
                dict(
                    label="layer index",
                    method="update",
                    args=[{"x": [list(map(float, x)) for x in layer_x]}, {"xaxis.title.text": "layer"}],
                ),
            ],
        ),
    ]
    if log_y:
        menus.append(log_toggle("yaxis"))
    fig.update_layout(updatemenus=menus)


def _overlay(
    title: str, y_title: str, series: list[tuple[str, np.ndarray, np.ndarray, int]], reason: str, log_y: bool = True
) -> go.Figure:
    """series: (label, layers, values, n_layers) per run; x starts as relative depth. `log_y`: a quantity that
    is positive by nature (norms, ratios, losses) gets a log-axis button; a cosine does not."""
    series = [s for s in series if len(s[1])]
    if not series:
        return empty_figure(title, reason)
    fig = figure(title, "layer / n_layers", y_title)
    layer_x, relative_x = [], []
    for label, layers, values, n_layers in series:
        relative = np.asarray(layers, dtype=float) / n_layers
        layer_x.append(np.asarray(layers, dtype=float))
        relative_x.append(relative)
        fig.add_trace(
            go.Scatter(
                x=relative,
                y=values,
                mode="lines+markers",
                name=esc(label),
                customdata=np.asarray(layers),
                hovertemplate=f"{esc(label)}<br>layer %{{customdata}}<br>%{{y:.4g}}<extra></extra>",
            )
        )
    _depth_toggle(fig, layer_x, relative_x, log_y)
    return fig


def _series(runs, curve) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    series = []
    for label, result in runs:
        layers, values = curve(result)
        if layers is not None:
            series.append((label, layers, values, result.meta["n_layers"]))
    return series


def _norm_growth(runs) -> go.Figure:
    return _overlay(
        "Mean norm of the residual stream h_0..h_L",
        "mean L2 norm",
        _series(runs, residual_norm_curve),
        "no run has the norms probe",
    )


def _position0(runs) -> go.Figure:
    return _overlay(
        "Position-0 outlier: norm at position 0 over the median of later positions",
        "ratio",
        _series(runs, position0_curve),
        "no run has the norms probe with a position 0 and later positions",
    )


def _lens_loss(runs) -> go.Figure:
    return _overlay(
        "Logit-lens loss over depth (last point: the model's output)",
        "cross-entropy (nats)",
        _series(runs, lens_loss_curve),
        "no run has the updates probe",
    )


def _descent(runs) -> go.Figure:
    series = _series(runs, descent_curve)
    fig = _overlay(
        "Descent alignment of the block update, cos(Δ, -dCE/dh)",
        "mean cosine",
        series,
        "no run has the updates probe",
        log_y=False,
    )
    if series:
        fig.add_hline(y=0, line=dict(color="#888", width=1))
    return fig


DIFFERENCE_CURVES = (
    ("mean norm of h_l", residual_norm_curve),
    ("lens loss (nats)", lens_loss_curve),
    ("descent cosine of the block update", descent_curve),
)


def difference_table(runs) -> pd.DataFrame:
    """Each run minus the first, per layer, for norm growth, lens loss and descent alignment.

    Tidy: one row per (quantity, run, layer). Only runs as deep as the first are subtracted (layer l of a
    12-layer model is not layer l of a 24-layer one), and only at layers both runs measured.
    """
    rows = []
    (_, first), rest = runs[0], runs[1:]
    for quantity, curve in DIFFERENCE_CURVES:
        base_layers, base_values = curve(first)
        if base_layers is None:
            continue
        base = dict(zip(base_layers.tolist(), base_values.tolist()))
        for label, result in rest:
            if result.meta.get("n_layers") != first.meta.get("n_layers"):
                continue
            layers, values = curve(result)
            for layer, value in zip(*(() if layers is None else (layers.tolist(), values.tolist()))):
                if layer in base:
                    rows.append((quantity, label, int(layer), value, base[layer], value - base[layer]))
    return pd.DataFrame(rows, columns=["quantity", "run", "layer", "value", "first", "difference"])


def _difference_figure(runs) -> tuple[go.Figure, str]:
    from plotly.subplots import make_subplots

    first = runs[0][0]
    title = f"Difference from the first run: each run minus {first}, per layer"
    table = difference_table(runs)
    left_out = [label for label, r in runs[1:] if r.meta.get("n_layers") != runs[0][1].meta.get("n_layers")]
    note = f" Left out, being of another depth than the first run: {', '.join(left_out)}." if left_out else ""
    if table.empty:
        return empty_figure(title, "no other run of the first run's depth shares a curve with it"), note
    quantities = present_in_order([q for q, _ in DIFFERENCE_CURVES], table["quantity"])
    fig = make_subplots(
        rows=len(quantities), cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=[esc(f"Δ {q}") for q in quantities]
    )
    colours = TEMPLATE.layout.colorway
    for row, quantity in enumerate(quantities, start=1):
        for i, (label, _) in enumerate(runs[1:], start=1):
            part = table[(table["quantity"] == quantity) & (table["run"] == label)]
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["layer"],
                    y=part["difference"],
                    mode="lines+markers",
                    name=esc(label),
                    legendgroup=esc(label),
                    showlegend=row == 1,
                    line=dict(color=colours[i % len(colours)]),
                    hovertemplate=f"{esc(label)} − {esc(first)}<br>layer %{{x}}<br>Δ %{{y:.4g}}<extra></extra>",
                ),
                row=row,
                col=1,
            )
        fig.add_hline(y=0, line=dict(color="#888", width=1), row=row, col=1)
    fig.update_layout(template=TEMPLATE, title=dict(text=esc(title), x=0.01), height=260 * len(quantities) + 120)
    fig.update_xaxes(title_text="layer", row=len(quantities), col=1)
    integer_axis(fig, "x", table["layer"])
    return fig, note


def claims_across(runs) -> pd.DataFrame:
    """One row per (run label, probe, claim, layer, component): every run's claims (normprobe.claim_tables)."""
    from ..claim_tables import stack_claims

    return stack_claims([(label, result.claims) for label, result in runs], "run")


def claims_side_by_side(runs) -> pd.DataFrame:
    from ..claim_tables import side_by_side

    return side_by_side(claims_across(runs), [label for label, _ in runs], "run")


def claim_cell(row: dict[str, Any], label: str) -> tuple[str, str]:
    verdict = row.get(f"{label}: verdict")
    if verdict == "missing":
        return "missing", ""
    value = f"{_num(row[f'{label}: value'])} [{_num(row[f'{label}: ci_low'])}, {_num(row[f'{label}: ci_high'])}]"
    return str(verdict), value


def claim_where(row: dict[str, Any]) -> str:
    layer = row.get("layer")
    parts = [] if layer is None or pd.isna(layer) else [f"layer {int(layer)}"]
    return " ".join(parts + ([str(row["component"])] if row.get("component") else []))


def _claims_block(runs) -> str:
    """The side-by-side claims: per run, value [CI] and verdict; claims whose verdicts differ first."""
    from ..claim_tables import probes_missing

    labels = [label for label, _ in runs]
    table = claims_side_by_side(runs)
    missing = "".join(
        f"<li>Probe {esc(p)} is missing from {esc(', '.join(map(str, lacking)))}: its claims read “missing” there.</li>"
        for p, lacking in probes_missing(runs)
    )
    if not len(table):
        return f"<p>No run has claims.</p><ul>{missing}</ul>"
    differ = int(table["verdicts_differ"].sum())
    head = "".join(f"<th>{esc(h)}</th>" for h in ["claim", "where", *labels, "verdicts differ"])
    body = []
    for row in table.to_dict("records"):
        cells = [f"<td>{esc(row['probe'])}: {esc(row['claim'])}</td><td>{esc(claim_where(row))}</td>"]
        for label in labels:
            verdict, value = claim_cell(row, label)
            cells.append(f'<td style="{VERDICT_STYLE.get(verdict, "")}">{esc(value)} {esc(verdict)}</td>')
        cells.append(f"<td>{'yes' if row['verdicts_differ'] else ''}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<h3 id="claims">Claims, run by run</h3><ul><li>{differ} of {len(table)} claims have verdicts that differ between '
        "the runs; they come first. Each cell: value [95% CI] and that run's verdict against its own null and "
        f"baselines (each run's report has the baselines and notes).</li>{missing}</ul>"
        f"<table><tr>{head}</tr>{''.join(body)}</table>"
    )


def comparison_lines(runs, where: str = "the comparison's report") -> list[str]:
    """What `compare` prints: the claims whose verdicts differ between the runs, and the probes a run lacks."""
    from ..claim_tables import probes_missing

    labels = [label for label, _ in runs]
    table = claims_side_by_side(runs)
    differ = table[table["verdicts_differ"]] if len(table) else table
    lines = [_clamp(f"probe {p} is missing from {', '.join(map(str, lacking))}") for p, lacking in probes_missing(runs)]
    if not len(differ):
        lines.append(_clamp(f"claims: the verdicts of all {len(table)} claims agree between {', '.join(map(str, labels))}"))
        return lines
    lines.append(_clamp(f"claims whose verdict differs between the runs: {len(differ)} of {len(table)}"))
    for row in differ.head(15).to_dict("records"):
        head = f"  {row['claim']} {_short_where(row)}:"
        parts = [f"{label} {' '.join(x for x in reversed(claim_cell(row, label)) if x)}" for label in labels]
        lines.append(_clamp(head + " " + "; ".join(parts), CONSOLE_WIDTH))
    if len(differ) > 15:
        lines.append(_clamp(f"  ... {len(differ) - 15} more: see {where}"))
    return lines


def _runs_table(runs) -> str:
    keys = ("model", "family", "n_layers", "d_model", "dtype", "corpus", "n_tokens", "status")
    head = "".join(f"<th>{esc(label)}</th>" for label, _ in runs)
    body = "".join(
        f"<tr><td>{esc(k)}</td>{''.join(f'<td>{esc(r.meta.get(k, chr(8212)))}</td>' for _, r in runs)}</tr>" for k in keys
    )
    return f"<h2 id=\"runs\">Runs</h2><table><tr><th></th>{head}</tr>{body}</table>"


def unique_labels(labels: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label} ({seen[label]})")
    return out


def comparison_sections(results: Sequence[Any], labels: Sequence[str]) -> list[Section]:
    runs = list(zip(unique_labels(list(labels)), results))
    difference, note = _difference_figure(runs)
    return [
        Section(
            title="Comparison",
            anchor="comparison",
            blocks=[
                Block(html=_claims_block(runs)),
                Block(
                    figure=_norm_growth(runs),
                    caption="Runs of different depth line up on relative depth; the buttons switch to layer index.",
                ),
                Block(figure=_position0(runs)),
                Block(figure=_lens_loss(runs)),
                Block(figure=_descent(runs)),
                Block(
                    figure=difference,
                    caption="Each run minus the first: curves that lie on top of each other above come apart here." + esc(note),
                ),
            ],
        )
    ]


def render_comparison(results: Sequence[Any], labels: Sequence[str], plotlyjs: str = "inline") -> str:
    runs = list(zip(unique_labels(list(labels)), results))
    statuses = {r.meta.get("status", "complete") for _, r in runs}
    meta = {
        "status": "complete" if statuses == {"complete"} else "partial",
        "status_reason": "at least one run is not complete",
        "model": ", ".join(l for l, _ in runs),
    }
    details = "".join(
        f"<h3>{esc(label)}</h3>"
        + "<table>"
        + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in metadata_rows(r.meta))
        + "</table>"
        for label, r in runs
    )
    return render_page(
        meta,
        comparison_sections(results, labels),
        plotlyjs=plotlyjs,
        title=f"normprobe comparison: {' vs '.join(l for l, _ in runs)}",
        preface=_runs_table(runs),
        appendix=f'<h2 id="details">Each run\'s metadata</h2>{details}',
    )
