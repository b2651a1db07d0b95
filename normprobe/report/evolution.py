"""The evolution report: each claim's value, interval and verdict against training step, and descriptive curves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from .common import Block, Section, empty_figure, esc, figure, integer_axis, log_toggle
from .curves import descent_curve, lens_loss_curve, residual_norm_curve
from .page import render_page


def evolution_numbers(runs: Sequence[tuple[int, Any]]) -> dict[str, Any]:
    """Per-checkpoint descriptive numbers for the curves (conclusions are the claims, in claims.parquet)."""
    steps = [step for step, _ in runs]
    out: dict[str, Any] = {
        "steps": steps,
        "growth_geometric": [],
        "position0_ratio_max": [],
        "model_loss": [],
        "descent_cos_block_mean": [],
    }
    for _, result in runs:
        norms = result.descriptive("norms")
        out["growth_geometric"].append((norms.get("growth") or {}).get("geometric"))
        out["position0_ratio_max"].append(norms.get("position0_ratio_max"))
        table = result.tables.get("updates")
        if table is not None and len(table):
            output = table[table["component"] == "output"]
            block = table[table["component"] == "block"]
            out["model_loss"].append(float(output["lens_loss_mean"].iloc[0]) if len(output) else None)
            weights = block["count"].to_numpy(dtype=float)
            out["descent_cos_block_mean"].append(float(np.average(block["descent_cos_mean"], weights=weights)))
        else:
            out["model_loss"].append(None)
            out["descent_cos_block_mean"].append(None)
    return out


VERDICT_SYMBOL = {"holds": "circle", "does not hold": "x", "undetermined": "circle-open"}


def _where(row: dict[str, Any]) -> str:
    layer = row.get("layer")
    parts = [] if layer is None or pd.isna(layer) else [f"layer {int(layer)}"]
    return " ".join(parts + ([str(row["component"])] if row.get("component") else [])) or "overall"


def claim_figure(claim: str, rows: pd.DataFrame) -> go.Figure:
    """One claim kind against training step: a line per (layer, component) with its interval as error bars and
    its verdict as the marker (filled: holds, x: does not hold, open: undetermined)."""
    fig = figure(f"Claim {claim} against training step", "training step", "value [95% CI]")
    for _, group in rows.groupby(["layer", "component"], dropna=False, sort=False):
        group = group.sort_values("step")
        name = _where(group.iloc[0].to_dict())
        value = group["value"].to_numpy(dtype=float)
        fig.add_trace(
            go.Scatter(
                x=group["step"],
                y=value,
                mode="lines+markers",
                name=esc(name),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=group["ci_high"].to_numpy(dtype=float) - value,
                    arrayminus=value - group["ci_low"].to_numpy(dtype=float),
                ),
                marker=dict(symbol=[VERDICT_SYMBOL.get(v, "diamond-open") for v in group["verdict"]], size=9),
                customdata=group["verdict"],
                hovertemplate=f"{esc(name)}<br>step %{{x}}<br>%{{y:.4g}}<br>%{{customdata}}<extra></extra>",
            )
        )
    null = rows["null"].dropna()
    if len(null) and null.nunique() == 1:
        fig.add_hline(y=float(null.iloc[0]), line=dict(color="#888", width=1, dash="dot"))
    return fig


def _claims_table(claims: pd.DataFrame, steps: list[int]) -> str:
    """Per claim: the first step at which it holds, then value [CI] and verdict at every step."""
    from ..claim_tables import first_holding, side_by_side
    from .claims import VERDICT_STYLE, _num

    first = {(r["probe"], r["claim"], r["layer"], r["component"]): r for r in first_holding(claims, "step").to_dict("records")}
    wide = side_by_side(claims, steps, "step")
    head = "".join(f"<th>{esc(h)}</th>" for h in ["claim", "where", "first step it holds", *(f"step {s}" for s in steps)])
    body = []
    for row in wide.to_dict("records"):
        found = first.get((row["probe"], row["claim"], row["layer"], row["component"])) or {}
        held = found.get("first_holds")
        since = "never" if held is None or pd.isna(held) else held
        cells = [esc(f"{row['probe']}: {row['claim']}"), esc(_where(row)), esc(since)]
        tds = "".join(f"<td>{c}</td>" for c in cells)
        for step in steps:
            verdict = row.get(f"{step}: verdict")
            text = (
                "missing"
                if verdict == "missing"
                else (
                    f"{_num(row[f'{step}: value'])} [{_num(row[f'{step}: ci_low'])}, {_num(row[f'{step}: ci_high'])}] {verdict}"
                )
            )
            tds += f'<td style="{VERDICT_STYLE.get(verdict, "")}">{esc(text)}</td>'
        body.append(f"<tr>{tds}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def claims_section(claims: pd.DataFrame, steps: list[int]) -> Section:
    if not len(claims):
        return Section(title="Claims over training", anchor="claims", blocks=[Block(html="<p>No checkpoint has claims.</p>")])
    blocks = [
        Block(
            html=_claims_table(claims, steps),
            caption="Each checkpoint's claims, tested as in its own report (its null and baselines); the claims whose "
            "verdicts change over training come first. claims.parquet holds every column.",
        )
    ]
    for claim, rows in claims.groupby("claim", sort=False):
        blocks.append(Block(figure=claim_figure(str(claim), rows)))
    return Section(
        title="Claims over training",
        anchor="claims",
        notes=[
            "Markers: filled, the claim holds at that step; x, it does not hold; open, undetermined (its run's report says why)."
        ],
        blocks=blocks,
    )


def _vs_step(title: str, y_title: str, steps, values, reason: str, log_y: bool = True) -> go.Figure:
    points = [(s, v) for s, v in zip(steps, values) if v is not None]
    if not points:
        return empty_figure(title, reason)
    fig = figure(title, "training step", y_title)
    x, y = zip(*points)
    fig.add_trace(
        go.Scatter(x=x, y=y, mode="lines+markers", name=esc(y_title), hovertemplate="step %{x}<br>%{y:.4g}<extra></extra>")
    )
    # a log y-axis only for quantities positive by nature, not for cosines
    fig.update_layout(updatemenus=[log_toggle("xaxis", x=0.78)] + ([log_toggle("yaxis")] if log_y else []))
    return fig


def _curves(title: str, y_title: str, runs, extract, reason: str) -> go.Figure:
    curves = [(step, *extract(result)) for step, result in runs]
    curves = [c for c in curves if c[1] is not None and len(c[1])]
    if not curves:
        return empty_figure(title, reason)
    fig = figure(title, "layer", y_title)
    colours = sample_colorscale("Viridis", list(np.linspace(0, 0.9, len(curves))))
    for (step, layers, values), colour in zip(curves, colours):
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=values,
                mode="lines+markers",
                name=f"step {step}",
                line=dict(color=colour),
                hovertemplate=f"step {step}<br>layer %{{x}}<br>%{{y:.4g}}<extra></extra>",
            )
        )
    integer_axis(fig, "x", curves[0][1])
    return fig


def render_evolution(
    runs: Sequence[tuple[int, Any]], claims: pd.DataFrame | None = None, plotlyjs: str = "inline", name: str | None = None
) -> str:
    """The page: the claims over training first (`claims`: one row per step and claim, as Sweep.claims gives), then
    descriptive curves."""
    from ..claim_tables import stack_claims

    f = evolution_numbers(runs)
    steps = f["steps"]
    if claims is None:
        claims = stack_claims([(step, result.claims) for step, result in runs], "step")
    no_updates = "run the sweep with --probe updates"
    no_norms = "run the sweep with --probe norms"
    section = Section(
        title="Curves over training",
        anchor="evolution",
        notes=["Descriptive curves of the saved tables; what holds is in the claims above."],
        blocks=[
            Block(
                figure=_vs_step("Model loss at each checkpoint", "cross-entropy (nats)", steps, f["model_loss"], no_updates),
                caption="The log-x button hides step 0.",
            ),
            Block(
                figure=_vs_step(
                    "Norm growth factor per layer (geometric mean of ratios)",
                    "growth per layer",
                    steps,
                    f["growth_geometric"],
                    no_norms,
                )
            ),
            Block(
                figure=_vs_step(
                    "Position-0 outlier ratio (largest over layers)", "ratio", steps, f["position0_ratio_max"], no_norms
                )
            ),
            Block(
                figure=_vs_step(
                    "Mean descent alignment of the block update",
                    "mean cos(Δ, -dCE/dh)",
                    steps,
                    f["descent_cos_block_mean"],
                    no_updates,
                    log_y=False,
                )
            ),
            Block(
                figure=_curves(
                    "Mean norm of the residual stream h_0..h_L, one line per checkpoint",
                    "mean L2 norm",
                    runs,
                    residual_norm_curve,
                    no_norms,
                )
            ),
            Block(
                figure=_curves(
                    "Logit-lens loss over depth, one line per checkpoint",
                    "cross-entropy (nats)",
                    runs,
                    lens_loss_curve,
                    no_updates,
                )
            ),
            Block(
                figure=_curves(
                    "Descent alignment of the block update per layer, one line per checkpoint",
                    "mean cosine",
                    runs,
                    descent_curve,
                    no_updates,
                )
            ),
        ],
    )
    first = runs[0][1].meta
    name = name or first.get("model")
    meta = {
        "model": name,
        "status": "complete",
        "family": first.get("family"),
        "n_layers": first.get("n_layers"),
        "d_model": first.get("d_model"),
        "corpus": first.get("corpus"),
        "n_tokens": first.get("n_tokens"),
        "dtype": first.get("dtype"),
        "probes": first.get("probes"),
        "checkpoints": ", ".join(str(s) for s in steps),
    }
    sections = [claims_section(claims, steps), section]
    return render_page(meta, sections, plotlyjs=plotlyjs, title=f"normprobe over training: {name}")


def first_holds_lines(first: pd.DataFrame, against: list[str] | None = None, width: int = 109) -> list[str]:
    """What a sweep prints: per claim that holds at some step, the first step at which it holds, with its value and
    interval there; `against`: the baselines each step was tested against."""
    from .claims import _num

    held = first[first["first_holds"].notna()] if len(first) else first
    at_last = int(first["holds_at_last"].sum()) if len(first) else 0
    tested = "its null and " + ", ".join(against) if against else "its null only (no baseline)"
    lines = [
        f"claims over training: {len(held)} of {len(first)} hold at some step, {at_last} at the last",
        f"  each step tested against {tested}; value [95% CI] at the first step it holds"[:width],
    ]
    for row in held.head(15).to_dict("records"):
        value = f"{_num(row['value'])} [{_num(row['ci_low'])}, {_num(row['ci_high'])}]"
        line = f"  {row['claim']} {_where(row)}: holds from step {int(row['first_holds'])}, {value}"
        if not row["holds_at_last"]:
            line += " (not at the last step)"
        lines.append(line[:width])
    if len(held) > 15:
        lines.append(f"  ... {len(held) - 15} more: see the evolution report")
    return lines
