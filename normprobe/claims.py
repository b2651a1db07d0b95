"""Claims with verdicts: every conclusion normprobe prints, tested against its null and against baselines.

`claims(tables, baselines)` reads saved tables only (never tensors), so a saved run's claims are
recomputed on load and a test can hand it made-up tables. Each row is one claim at one layer (and
component): its value and interval, the natural null, per baseline the baseline's value, the
difference and the difference's interval, `min_effect`, and a verdict:

- `holds`: the interval excludes the null in the claimed direction, and the difference from every
  baseline excludes 0 in that direction by at least `min_effect`;
- `does not hold`: the interval lies wholly on the other side of the null;
- `undetermined`: anything else, and wherever the statistic cannot be trusted (see each claim).

Intervals are 95% percentile intervals of the Poisson bootstrap over documents (normprobe.bootstrap),
read from each probe's replicate tables; a baseline's replicates use the same document weights, so
differences are paired replicate by replicate. The `interval` column names the unit; the frequency
claim's interval is over token types (Fisher's z), as its column says. docs/claims.md has the details.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .bootstrap import percentile_interval

HOLDS, FAILS, UNDETERMINED = "holds", "does not hold", "undetermined"
GREATER, LESS, TWO_SIDED = "greater", "less", "two-sided"

# The smallest difference from a baseline that counts, in the claim's own units (see docs/claims.md).
MIN_EFFECT = {
    "norm_growth": 0.05,  # ratio of mean norms: 5 points more growth per block than the baseline
    "position0_ratio": 0.1,  # ratio of position 0's mean norm to later positions'
    "descent": 0.01,  # mean cos(Δ, -g)
    "lens_loss_drop": 0.05,  # nats
    "alpha_star": 0.25,  # the best step size along Δ
    "sink_mass": 0.05,  # attention weight on key 0 above uniform attention's
    "massive": 0.1,  # times --massive-ratio (the null): max/median |h_i| at position 0
    "frequency": 0.1,  # Spearman's rho
}
FLAT_LOSS_NATS = 1e-3  # α* is noise where the loss varies less than this over the α grid
MIN_TYPE_COUNT = 5  # the frequency claim uses token types seen at least this often
MIN_TYPES = 10  # and needs at least this many of them
DESCRIPTIVE_BELOW_LAYERS = 8  # a correlation across fewer layers is descriptive, never a claim
NO_BASELINE_NOTE = (
    "no baseline was run: learned structure cannot be told from the architecture without one (run with --baseline random-init)"
)
CLAIM_ORDER = ("norm_growth", "position0_ratio", "massive", "sink_mass", "frequency", "descent", "lens_loss_drop", "alpha_star")


@dataclass
class Estimate:
    """A claim's statistic on one set of tables: the value, its replicates (or a fixed interval), notes."""

    value: float
    replicates: np.ndarray | None = None  # [B] bootstrap replicates, paired across model and baselines
    interval: tuple[float, float] | None = None  # when there are no replicates (e.g. over token types)
    check: Estimate | None = None  # descent's first-order check (the actual loss change)
    note: str = ""
    undetermined: str = ""  # why no verdict is possible, whatever the interval

    def ci(self) -> tuple[float, float]:
        if self.replicates is not None:
            return percentile_interval(self.replicates)
        return self.interval if self.interval is not None else (float("nan"), float("nan"))


@dataclass
class Kind:
    probe: str
    null: float | None  # None: the null comes from the tables (massive: --massive-ratio)
    direction: str
    interval: str
    estimate: Callable[[dict[str, pd.DataFrame], dict[str, Any]], dict[tuple, Estimate]]
    context: dict[str, Any] = field(default_factory=dict)


# -- helpers -------------------------------------------------------------------------------------


def _replicate_matrix(frame: pd.DataFrame, keys: list[str], value: str) -> dict[tuple, np.ndarray]:
    """key tuple -> replicate values ordered by replicate index."""
    if frame is None or frame.empty or value not in frame:
        return {}
    out = {}
    for key, rows in frame.sort_values("replicate").groupby(keys, sort=False):
        out[key if isinstance(key, tuple) else (key,)] = rows[value].to_numpy(dtype=float)
    return out


def _has_replicates(values: np.ndarray | None) -> bool:
    return values is not None and np.isfinite(values).sum() >= 2


def _stream_layers(norms: pd.DataFrame) -> list[tuple[str, int, int]]:
    """(site, table layer, stream index) of h_0..h_L: resid_pre of each layer, then the last resid_post as L."""
    pre = sorted(int(l) for l in norms.loc[norms["site"] == "resid_pre", "layer"].unique())
    post = sorted(int(l) for l in norms.loc[norms["site"] == "resid_post", "layer"].unique())
    stream = [("resid_pre", l, l) for l in pre]
    if post:
        stream.append(("resid_post", post[-1], post[-1] + 1))
    return stream


def _weighted(rows: pd.DataFrame, value: str = "mean") -> float:
    count = rows["count"].sum()
    return float((rows[value] * rows["count"]).sum() / count) if count > 0 else float("nan")


# -- norms ---------------------------------------------------------------------------------------


def _stream_means(tables: dict[str, pd.DataFrame]) -> tuple[dict[int, float], dict[int, float], dict, dict]:
    """Mean norms of h_l at positions >= 1 and at position 0, with their replicates, by stream index."""
    norms = tables.get("norms")
    if norms is None or norms.empty:
        return {}, {}, {}, {}
    reps = tables.get("norms_replicates")
    rest_reps = (
        _replicate_matrix(reps[reps["position_group"] == "rest"], ["site", "layer"], "mean")
        if reps is not None and not reps.empty
        else {}
    )
    first_reps = (
        _replicate_matrix(reps[reps["position_group"] == "position0"], ["site", "layer"], "mean")
        if reps is not None and not reps.empty
        else {}
    )
    later, first, later_r, first_r = {}, {}, {}, {}
    for site, layer, index in _stream_layers(norms):
        rows = norms[(norms["site"] == site) & (norms["layer"] == layer)]
        later[index] = _weighted(rows[rows["position"] > 0])
        first[index] = _weighted(rows[rows["position"] == 0])
        later_r[index] = rest_reps.get((site, layer))
        first_r[index] = first_reps.get((site, layer))
    return later, first, later_r, first_r


def _ratio(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def _norm_growth(tables, context) -> dict[tuple, Estimate]:
    means, _, reps, _ = _stream_means(tables)
    out: dict[tuple, Estimate] = {}
    last = max(means) if means else None
    for index in sorted(means):
        if index + 1 in means and means[index] > 0:
            note = "embedding → block 0 output" if index == 0 else ("the last block's output" if index + 1 == last else "")
            out[(index, "block")] = Estimate(means[index + 1] / means[index], _ratio(reps[index + 1], reps[index]), note=note)
    # the headline: growth per block from the first block's output (h_1) to the last (h_L), geometric
    if last is not None and 1 in means and last >= 2 and means[1] > 0:
        span = last - 1
        value = (means[last] / means[1]) ** (1 / span)
        ratio = _ratio(reps[last], reps[1])
        replicates = np.power(ratio, 1 / span) if ratio is not None else None
        layers = [l for l in sorted(means) if l >= 1]
        r2 = _geometric_fit_r2(layers, [means[l] for l in layers])
        out[(None, "h_1..h_L per block (geometric)")] = Estimate(
            value, replicates, note=f"geometric fit over h_1..h_L: R² {r2:.2f}" if r2 == r2 else ""
        )
    return out


def _geometric_fit_r2(layers: list[int], means: list[float]) -> float:
    if len(layers) < 3 or min(means) <= 0:
        return float("nan")
    x, y = np.asarray(layers, dtype=float), np.log(np.asarray(means, dtype=float))
    slope, intercept = np.polyfit(x, y, 1)
    total = ((y - y.mean()) ** 2).sum()
    return float(1 - ((y - (slope * x + intercept)) ** 2).sum() / total) if total > 0 else float("nan")


def _position0_ratio(tables, context) -> dict[tuple, Estimate]:
    later, first, later_r, first_r = _stream_means(tables)
    out = {}
    for index in sorted(later):
        if first[index] == first[index] and later[index] > 0:
            component = "output" if _is_output(tables, index) else "resid_pre"
            out[(index, component)] = Estimate(first[index] / later[index], _ratio(first_r[index], later_r[index]))
    return out


def _is_output(tables, index: int) -> bool:
    norms = tables["norms"]
    post = norms.loc[norms["site"] == "resid_post", "layer"]
    return len(post) > 0 and index == int(post.max()) + 1


def _frequency(tables, context) -> dict[tuple, Estimate]:
    by_token = tables.get("norms_by_token")
    if by_token is None or by_token.empty:
        return {}
    counts = tables.get("token_counts")
    external = counts is not None and not counts.empty
    frequency = dict(zip(counts["token_id"].astype(int), counts["count"].astype(float))) if external else {}
    out = {}
    stream = sorted(
        {(s, int(l)) for s, l in zip(by_token["site"], by_token["layer"])}, key=lambda sl: (sl[0] != "resid_pre", sl[1])
    )
    for site, layer in stream:
        rows = by_token[(by_token["site"] == site) & (by_token["layer"] == layer) & (by_token["count"] >= MIN_TYPE_COUNT)]
        freq = rows["token_id"].map(frequency) if external else rows["count"].astype(float)
        keep = freq.notna() & (freq > 0)
        rows, freq = rows[keep], freq[keep]
        index = layer if site == "resid_pre" else layer + 1
        component = "resid_pre" if site == "resid_pre" else "output"
        n = len(rows)
        source = "--token-counts" if external else "the probe corpus"
        note = f"{n} token types seen ≥{MIN_TYPE_COUNT} times; frequencies from {source}"
        if n < MIN_TYPES:
            out[(index, component)] = Estimate(
                float("nan"), undetermined=f"only {n} token types seen ≥{MIN_TYPE_COUNT} times", note=note
            )
            continue
        rho = float(np.log(freq).rank().corr(rows["mean"].rank()))
        half = 1.959964 * math.sqrt(1.06 / (n - 3))  # Fieller, Hartley & Pearson's standard error of z(rho)
        z = math.atanh(max(min(rho, 0.999999), -0.999999))
        out[(index, component)] = Estimate(rho, interval=(math.tanh(z - half), math.tanh(z + half)), note=note)
    return out


# -- massive ------------------------------------------------------------------------------------


def _massive(tables, context) -> dict[tuple, Estimate]:
    massive = tables.get("massive")
    if massive is None or massive.empty:
        return {}
    reps = tables.get("massive_replicates")
    max_r = _replicate_matrix(reps, ["site", "layer"], "max_abs_mean") if reps is not None else {}
    med_r = _replicate_matrix(reps, ["site", "layer"], "median_abs_mean") if reps is not None else {}
    first = massive[massive["position"] == 0]
    out = {}
    for site, layer, index in _stream_layers(massive):
        row = first[(first["site"] == site) & (first["layer"] == layer)]
        if row.empty:
            continue
        value = float(row["max_abs_mean"].iloc[0] / row["median_abs_mean"].iloc[0])
        component = "resid_pre" if site == "resid_pre" else "output"
        out[(index, component)] = Estimate(value, _ratio(max_r.get((site, layer)), med_r.get((site, layer))))
    return out


def _massive_null(tables) -> float:
    reps = tables.get("massive_replicates")
    if reps is not None and len(reps) and "massive_ratio" in reps:
        return float(reps["massive_ratio"].iloc[0])
    from .options import DEFAULT_MASSIVE_RATIO

    return DEFAULT_MASSIVE_RATIO


def _sink_mass(tables, context) -> dict[tuple, Estimate]:
    sink, massive = tables.get("attention_sink"), tables.get("massive")
    if sink is None or sink.empty or massive is None:
        return {}
    queries = massive[(massive["site"] == "resid_pre") & (massive["position"] > 0)].drop_duplicates("position")
    if queries.empty:
        return {}
    uniform = float((queries["count"] / (queries["position"] + 1)).sum() / queries["count"].sum())
    reps = tables.get("sink_replicates")
    mass_r = _replicate_matrix(reps, ["layer"], "sink_mass") if reps is not None else {}
    uniform_r = _replicate_matrix(reps, ["layer"], "uniform_mass") if reps is not None else {}
    out = {}
    for layer, rows in sink.groupby("layer"):
        value = _weighted(rows, "sink_mass_mean") - uniform
        m, u = mass_r.get((layer,)), uniform_r.get((layer,))
        out[(int(layer), "attention")] = Estimate(
            value, m - u if m is not None and u is not None else None, note=f"uniform attention gives {uniform:.3g}"
        )
    return out


# -- updates and linesearch ---------------------------------------------------------------------


def readout_context(tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """The layers whose readout is meaningful (lens loss at most log V), from the model's updates table."""
    updates = tables.get("updates")
    if updates is None or updates.empty or "uniform_loss" not in updates:
        return {"meaningful": None}
    lens = updates.drop_duplicates("layer").sort_values("layer")
    ok = lens["lens_loss_mean"] <= lens["uniform_loss"]
    meaningful = [int(l) for l in lens.loc[ok, "layer"]]
    return {"meaningful": meaningful, "first_meaningful": meaningful[0] if meaningful else None}


NOT_MEANINGFUL = "readout not meaningful at this layer (lens loss above log V)"


def _descent(tables, context) -> dict[tuple, Estimate]:
    updates = tables.get("updates")
    if updates is None or updates.empty:
        return {}
    reps = tables.get("updates_replicates")
    cos_r = _replicate_matrix(reps, ["layer", "component"], "descent_cos") if reps is not None else {}
    actual_r = _replicate_matrix(reps, ["layer", "component"], "actual_change") if reps is not None else {}
    meaningful = context.get("meaningful")
    out = {}
    for row in updates[updates["component"] != "output"].itertuples():
        key = (int(row.layer), str(row.component))
        # runs saved before the first-order check have no actual change: descent is then undetermined
        check = Estimate(float(getattr(row, "actual_change_mean", float("nan"))), actual_r.get(key))
        unread = NOT_MEANINGFUL if meaningful is not None and int(row.layer) not in meaningful else ""
        out[key] = Estimate(float(row.descent_cos_mean), cos_r.get(key), check=check, undetermined=unread)
    return out


def _lens_loss_drop(tables, context) -> dict[tuple, Estimate]:
    updates = tables.get("updates")
    if updates is None or updates.empty:
        return {}
    first = context.get("first_meaningful")
    if first is None:
        return {(None, "to output"): Estimate(float("nan"), undetermined="the readout is meaningful at no layer")}
    lens = updates.drop_duplicates("layer").sort_values("layer")
    loss = dict(zip(lens["layer"].astype(int), lens["lens_loss_mean"].astype(float)))
    values = np.array(list(loss.values()))
    if len(values) > 1 and np.allclose(values, values[-1], rtol=1e-6, atol=0):
        # the model readout reads every layer through the rest of the network: each loss is the model's own
        return {
            (None, "to output"): Estimate(
                0.0, undetermined="every layer's loss is the model's own (model readout): no lens loss to fall"
            )
        }
    reps = _replicate_matrix(tables.get("lens_loss_replicates"), ["layer"], "lens_loss")
    layers = [l for l in sorted(loss) if l >= first]
    out = {}
    for a, b in zip(layers[:-1], layers[1:]):
        ra, rb = reps.get((a,)), reps.get((b,))
        out[(a, "step")] = Estimate(
            loss[a] - loss[b],
            ra - rb if ra is not None and rb is not None else None,
            note=f"lens loss at layer {a} minus layer {b}",
        )
    if len(layers) >= 2:
        a, b = layers[0], layers[-1]
        ra, rb = reps.get((a,)), reps.get((b,))
        out[(a, "to output")] = Estimate(
            loss[a] - loss[b],
            ra - rb if ra is not None and rb is not None else None,
            note=f"first meaningful layer {a} to the output",
        )
    return out


def _alpha_star(tables, context) -> dict[tuple, Estimate]:
    from .probes.linesearch import refine_minimum

    table = tables.get("line_search")
    if table is None or table.empty:
        return {}
    reps = tables.get("line_search_replicates")
    by_key = {}
    if reps is not None and not reps.empty:
        for key, rows in reps.groupby(["layer", "component"], sort=False):
            wide = rows.pivot(index="replicate", columns="alpha", values="lens_loss").sort_index(axis=1)
            by_key[(int(key[0]), str(key[1]))] = wide
    meaningful = context.get("meaningful")
    out = {}
    for (layer, component), rows in table.sort_values("alpha").groupby(["layer", "component"], sort=False):
        alphas, losses = rows["alpha"].to_numpy(float), rows["lens_loss_mean"].to_numpy(float)
        if not np.isfinite(losses).any():
            continue
        star, edge = refine_minimum(alphas, losses)
        spread = float(np.nanmax(losses) - np.nanmin(losses))
        why = ""
        if meaningful is not None and int(layer) not in meaningful:
            why = NOT_MEANINGFUL
        elif spread < FLAT_LOSS_NATS:
            why = f"the loss varies by {spread:.2g} nats over the α grid (< {FLAT_LOSS_NATS:g})"
        elif edge:
            why = f"α* sits at the grid's end ({star:g})"
        wide = by_key.get((int(layer), str(component)))
        replicates = None
        if wide is not None and list(wide.columns) == list(alphas):
            replicates = np.array(
                [refine_minimum(alphas, r)[0] if np.isfinite(r).all() else np.nan for r in wide.to_numpy(float)]
            )
        out[(int(layer), str(component))] = Estimate(
            star, replicates, undetermined=why, note=f"loss range over the grid {spread:.3g} nats"
        )
    order = {c: i for i, c in enumerate(("attn", "mlp", "block"))}
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9), kv[0][1])))


KINDS: dict[str, Kind] = {
    "norm_growth": Kind("norms", 1.0, GREATER, "documents", _norm_growth),
    "position0_ratio": Kind("norms", 1.0, GREATER, "documents", _position0_ratio),
    "frequency": Kind("norms", 0.0, TWO_SIDED, "token types (Fisher z)", _frequency),
    "massive": Kind("massive", None, GREATER, "documents", _massive),
    "sink_mass": Kind("massive", 0.0, GREATER, "documents", _sink_mass),
    "descent": Kind("updates", 0.0, GREATER, "documents", _descent),
    "lens_loss_drop": Kind("updates", 0.0, GREATER, "documents", _lens_loss_drop),
    "alpha_star": Kind("linesearch", 0.0, GREATER, "documents", _alpha_star),
}


# -- verdicts -----------------------------------------------------------------------------------


def _difference(model: Estimate, base: Estimate | None) -> tuple[float, float, float, float, float, float]:
    """(baseline value, its ci, difference, its ci); paired replicates where both have them."""
    nan = float("nan")
    if base is None:
        return nan, nan, nan, nan, nan, nan
    b_low, b_high = base.ci()
    diff = model.value - base.value
    mine, theirs = model.replicates, base.replicates
    if mine is not None and theirs is not None and _has_replicates(mine) and _has_replicates(theirs) and len(mine) == len(theirs):
        d_low, d_high = percentile_interval(mine - theirs)
    else:
        m_low, m_high = model.ci()
        spread = math.hypot((m_high - m_low) / 2, (b_high - b_low) / 2)  # independent, normal approximation
        d_low, d_high = diff - spread, diff + spread
    return base.value, b_low, b_high, diff, d_low, d_high


def verdict(
    direction: str,
    null: float,
    ci: tuple[float, float],
    differences: list[tuple[float, float]],
    min_effect: float,
    check: tuple[float, float] | None = None,
) -> str:
    """The verdict rule of docs/claims.md. `check` is an interval that must lie below 0 as well (descent)."""
    low, high = ci
    if not (low == low and high == high):
        return UNDETERMINED
    if direction == GREATER:
        wrong_side, right_side = high < null, low > null
        beats = all(d_low >= min_effect for d_low, _ in differences)
    elif direction == LESS:
        wrong_side, right_side = low > null, high < null
        beats = all(d_high <= -min_effect for _, d_high in differences)
    else:  # two-sided: a nonzero effect holds; one within ±min_effect of the null does not
        wrong_side = null - min_effect <= low and high <= null + min_effect
        right_side = low > null or high < null
        sign = 1.0 if low > null else -1.0
        beats = all((d_low >= min_effect) if sign > 0 else (d_high <= -min_effect) for d_low, d_high in differences)
    if check is not None:
        c_low, c_high = check
        if c_low == c_low and c_low > 0:
            wrong_side = True
        right_side = right_side and c_high == c_high and c_high < 0
    if wrong_side:
        return FAILS
    return HOLDS if right_side and beats else UNDETERMINED


def baseline_slug(kind: str) -> str:
    return kind.replace("-", "_").replace(" ", "_")


def claims(tables: dict[str, pd.DataFrame], baselines: dict[str, dict[str, pd.DataFrame]] | None = None) -> pd.DataFrame:
    """One row per claim (and layer, component), with values, intervals, baselines and verdicts."""
    from .stats import nonfinite_layers

    baselines = baselines or {}
    context = readout_context(tables)
    nonfinite = {layer for layers in nonfinite_layers(tables).values() for layer in layers}  # issue 32
    rows = []
    for name in CLAIM_ORDER:
        kind = KINDS[name]
        model = kind.estimate(tables, context)
        if not model:
            continue
        based = {b: kind.estimate(t, context) for b, t in baselines.items()}
        null = kind.null if kind.null is not None else _massive_null(tables)
        min_effect = MIN_EFFECT[name] * (null if kind.null is None else 1.0)
        n_replicates = _replicate_count(model)
        for key, estimate in model.items():
            layer, component = key
            ci = estimate.ci()
            row: dict[str, Any] = {
                "probe": kind.probe,
                "claim": name,
                "layer": layer,
                "component": component,
                "value": estimate.value,
                "ci_low": ci[0],
                "ci_high": ci[1],
                "null": null,
                "direction": kind.direction,
                "min_effect": min_effect,
                "interval": f"documents (Poisson bootstrap, B={n_replicates})" if kind.interval == "documents" else kind.interval,
            }
            check = estimate.check.ci() if estimate.check is not None else None
            row["check_value"] = estimate.check.value if estimate.check is not None else float("nan")
            row["check_ci_low"], row["check_ci_high"] = check if check is not None else (float("nan"), float("nan"))
            differences = []
            for b in baselines:
                slug = baseline_slug(b)
                values = _difference(estimate, based[b].get(key))
                for suffix, v in zip(
                    ("value", "ci_low", "ci_high", "difference", "difference_ci_low", "difference_ci_high"), values
                ):
                    row[f"{slug}_{suffix}"] = v
                differences.append((values[4], values[5]))
            decided = verdict(kind.direction, null, ci, differences, min_effect, check)
            notes = [estimate.note] if estimate.note else []
            empty = estimate.value != estimate.value  # NaN: an empty cell (issue 32), never read as a zero
            if empty and layer in nonfinite:
                decided = UNDETERMINED
                notes.insert(0, f"every value read at layer {layer} was non-finite (no finite token)")
            elif estimate.undetermined:
                decided = UNDETERMINED
                notes.insert(0, estimate.undetermined)
            elif empty:
                decided = UNDETERMINED
                notes.insert(0, "no finite value at this layer")
            if any(not (lo == lo and hi == hi) for lo, hi in differences):
                if decided == HOLDS:
                    decided = UNDETERMINED
                notes.append("a baseline lacks this statistic")
            row["verdict"] = decided
            row["note"] = "; ".join(notes)
            rows.append(row)
    frame = pd.DataFrame(rows, columns=claim_columns(list(baselines)))
    if len(frame):
        frame["layer"] = frame["layer"].astype("Int64")
    return frame


def _replicate_count(estimates: dict[tuple, Estimate]) -> int:
    for estimate in estimates.values():
        if estimate.replicates is not None:
            return len(estimate.replicates)
    return 0


def claim_columns(baselines: list[str]) -> list[str]:
    columns = [
        "probe",
        "claim",
        "layer",
        "component",
        "value",
        "ci_low",
        "ci_high",
        "null",
        "direction",
        "min_effect",
        "interval",
        "check_value",
        "check_ci_low",
        "check_ci_high",
    ]
    for b in baselines:
        slug = baseline_slug(b)
        columns += [
            f"{slug}_{s}" for s in ("value", "ci_low", "ci_high", "difference", "difference_ci_low", "difference_ci_high")
        ]
    return columns + ["verdict", "note"]


def baselines_of(frame: pd.DataFrame) -> list[str]:
    """The baseline slugs a claims frame holds columns for."""
    return [c[: -len("_difference_ci_low")] for c in frame.columns if c.endswith("_difference_ci_low")]


# -- sentences ----------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{value:.{digits}g}" if math.isfinite(value) else "n/a"


def value_text(row: Any, prefix: str = "") -> str:
    """'1.20 [1.18, 1.22]' for the model (prefix '') or a baseline's value or difference (prefix 'slug_')."""
    return f"{_num(row.get(prefix + 'value'))} [{_num(row.get(prefix + 'ci_low'))}, {_num(row.get(prefix + 'ci_high'))}]"


def difference_text(row: Any, slug: str) -> str:
    return (
        f"{_num(row.get(f'{slug}_difference'))} [{_num(row.get(f'{slug}_difference_ci_low'))}, "
        f"{_num(row.get(f'{slug}_difference_ci_high'))}]"
    )


WHAT = {
    "norm_growth": "the block grows the mean norm (ratio of mean ‖h‖, positions ≥ 1)",
    "position0_ratio": "position 0's mean norm exceeds later positions' (ratio)",
    "massive": "position 0 holds a massive activation (max/median |h_i|)",
    "sink_mass": "heads attend to key 0 more than uniform attention (excess weight)",
    "frequency": "the mean norm of a token type varies with its frequency (Spearman ρ)",
    "descent": "the update descends the loss (cos(Δ, -dCE/dh), with the actual loss change below 0)",
    "lens_loss_drop": "the lens loss falls (nats)",
    "alpha_star": "moving along the update lowers the loss (best step α* > 0)",
}


def where_text(row: Any) -> str:
    layer, component = row.get("layer"), row.get("component")
    parts = []
    if layer is not None and not (isinstance(layer, float) and math.isnan(layer)) and layer is not pd.NA:
        parts.append(f"layer {int(layer)}")
    if component:
        parts.append(str(component))
    return " ".join(parts)


def claim_sentence(row: Any) -> str:
    """One sentence: the claim, where, the effect and interval, what it was tested against, the verdict.

    Only a claim that holds is worded as a finding; every other is worded as a test that did not pass.
    """
    row = dict(row)
    slugs = [c[: -len("_difference_ci_low")] for c in row if str(c).endswith("_difference_ci_low")]
    against = f"null {_num(row['null'])}"
    for slug in slugs:
        against += f"; vs {slug.replace('_', '-')} {value_text(row, slug + '_')}, difference {difference_text(row, slug)}"
    where = where_text(row)
    head = f"{row['claim']}{f' at {where}' if where else ''}"
    effect = f"{value_text(row)} ({row['interval']}; {against})"
    if row["verdict"] == HOLDS:
        text = f"{head} holds: {WHAT[row['claim']]}, {effect}"
    else:
        text = f"{head} {row['verdict']}: {effect}"
    if row.get("note"):
        text += f"; {row['note']}"
    return text


def claims_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The claims as JSON-able dicts for run.json (NaN becomes null when written)."""
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [{k: (int(v) if k == "layer" and v is not None else v) for k, v in r.items()} for r in records]
