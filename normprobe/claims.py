"""Claims with verdicts: every conclusion normprobe prints, tested against its valid nulls.

`claims(tables, baselines)` reads saved tables only (never tensors), so a saved run's claims are
recomputed on load and a test can hand it made-up tables. Each row is one claim at one layer (and
component): its value and interval, the natural null, per baseline the baseline's value, the
difference and the difference's interval, `min_effect`, and a verdict with its reason.

Each claim kind declares the baselines that are valid nulls for it (`VALID_NULLS`): random-init for
properties of learned weights, no-bos for what depends on the BOS token at position 0, shuffled for
what depends on the order of the text. Other baselines are shown beside a claim and never gate it.

- `holds`: the interval clears the natural null by `min_effect` on the claimed side, at least one
  valid baseline was run and the difference from every valid baseline clears 0 by `min_effect`, at
  least `MIN_DOCUMENTS` documents were probed, and the claim survives the run's multiplicity control
  (Benjamini-Hochberg over every tested claim of the run, `p_adjusted` ≤ `FDR`);
- `does not hold`: the interval shows the effect is below its minimum: wholly below null + `min_effect`
  (two-sided: wholly within null ± `min_effect`), or a valid baseline's difference wholly below
  `min_effect` (the note names the null or the baseline);
- `undetermined`: anything else, with `reason` one of `REASONS`: `underpowered` (an interval that
  straddles, or a claim that does not survive the multiplicity control), or not testable here:
  `no valid baseline`, `too few documents`, `readout cannot read layer`, `non-finite`, `not testable`.
  `reason` is empty for `holds` and `does not hold`.

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
from .linefit import refine_minimum
from .stats import nonfinite_layers

HOLDS, FAILS, UNDETERMINED = "holds", "does not hold", "undetermined"
GREATER, LESS, TWO_SIDED = "greater", "less", "two-sided"
# why a claim is undetermined (the `reason` column; empty for holds and does not hold)
UNDERPOWERED, NO_VALID_BASELINE, TOO_FEW_DOCUMENTS = "underpowered", "no valid baseline", "too few documents"
UNREADABLE, NON_FINITE, NOT_TESTABLE = "readout cannot read layer", "non-finite", "not testable"
REASONS = (UNDERPOWERED, NO_VALID_BASELINE, TOO_FEW_DOCUMENTS, UNREADABLE, NON_FINITE, NOT_TESTABLE)

# The smallest effect that counts, against the null and against every valid baseline, in the claim's units.
MIN_EFFECT = {
    "norm_growth": 0.05,  # ratio of mean norms: 5 points more growth per block
    "position0_ratio": 0.1,  # ratio of position 0's mean norm to later positions'
    "massive": 1.0,  # max/median |h_i| at position 0 (a Gaussian vector of 64-4096 dims gives 4-6)
    "outlier_dimension": 0.02,  # share of ‖h‖² in the token's top dimension, positions >= 1
    "sink_mass": 0.05,  # attention weight on key 0 above uniform attention's
    "frequency": 0.1,  # Spearman's rho
    "descent": 0.01,  # mean cos(Δ, -g), g at the start of the step
    "removal_raises_loss": 0.01,  # nats per token
    "lens_loss_drop": 0.05,  # nats
    "alpha_star": 0.25,  # the best step size along Δ, two-sided around 1
}
RANDOM_INIT, SHUFFLED, NO_BOS = "random-init", "shuffled", "no-bos"
# The baselines that are valid nulls for each claim (docs/claims.md gives the reasons). No claim of today
# asserts a dependence on word order, so shuffled gates none; it is shown for reference.
VALID_NULLS = {
    "norm_growth": (RANDOM_INIT,),
    "position0_ratio": (RANDOM_INIT, NO_BOS),
    "massive": (RANDOM_INIT,),
    "outlier_dimension": (RANDOM_INIT,),
    "sink_mass": (RANDOM_INIT,),
    "frequency": (RANDOM_INIT,),
    "descent": (RANDOM_INIT,),
    "removal_raises_loss": (RANDOM_INIT,),
    "lens_loss_drop": (RANDOM_INIT,),
    "alpha_star": (RANDOM_INIT,),
}
# Below this many documents a bootstrap over documents is no interval (docs/claims.md: the percentile
# interval of a mean covers 0.92 of the time at 20 normal documents, 0.86 at 20 lognormal ones, 0.51/0.41 at 2).
MIN_DOCUMENTS = 20
FDR = 0.05  # Benjamini-Hochberg over the tested claims of a run, on two-sided-equivalent p-values
FLAT_LOSS_NATS = 1e-3  # α* is noise where the loss varies less than this over the α grid
MIN_TYPE_COUNT = 5  # the frequency claim uses token types seen at least this often
MIN_TYPES = 10  # and needs at least this many of them
DESCRIPTIVE_BELOW_LAYERS = 8  # a correlation across fewer layers is descriptive, never a claim
NO_BASELINE_NOTE = (
    "no baseline was run: learned structure cannot be told from the architecture without one (run with --baseline random-init)"
)
CLAIM_ORDER = (
    "norm_growth",
    "position0_ratio",
    "massive",
    "outlier_dimension",
    "sink_mass",
    "frequency",
    "descent",
    "removal_raises_loss",
    "lens_loss_drop",
    "alpha_star",
)


@dataclass
class Estimate:
    """A claim's statistic on one set of tables: the value, its replicates (or a fixed interval), notes."""

    value: float
    replicates: np.ndarray | None = None  # [B] bootstrap replicates, paired across model and baselines
    interval: tuple[float, float] | None = None  # when there are no replicates (e.g. over token types)
    check: Estimate | None = None  # descent's first-order check (the actual loss change), shown, never gating
    note: str = ""
    undetermined: str = ""  # why no verdict is possible, whatever the interval
    reason: str = NOT_TESTABLE  # the `reason` reported with `undetermined`

    def ci(self) -> tuple[float, float]:
        if self.replicates is not None:
            return percentile_interval(self.replicates)
        return self.interval if self.interval is not None else (float("nan"), float("nan"))


@dataclass
class Kind:
    probe: str
    null: float
    direction: str
    interval: str
    estimate: Callable[[dict[str, pd.DataFrame], dict[str, Any]], dict[tuple, Estimate]]
    same_sign: bool = True  # two-sided: a baseline's difference must lie on the model's side of the null
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
    """Spearman ρ per layer; a baseline is read on the model's token types with the model's frequencies."""
    by_token = tables.get("norms_by_token")
    if by_token is None or by_token.empty:
        return {}
    counts = tables.get("token_counts")
    external = counts is not None and not counts.empty
    frequency = dict(zip(counts["token_id"].astype(int), counts["count"].astype(float))) if external else {}
    model_types = context.get("frequency_types")  # set by the model's pass: (index, component) -> frequency by token id
    out = {}
    stream = sorted(
        {(s, int(l)) for s, l in zip(by_token["site"], by_token["layer"])}, key=lambda sl: (sl[0] != "resid_pre", sl[1])
    )
    for site, layer in stream:
        index = layer if site == "resid_pre" else layer + 1
        component = "resid_pre" if site == "resid_pre" else "output"
        rows = by_token[(by_token["site"] == site) & (by_token["layer"] == layer)]
        if model_types is not None and context.get("is_baseline"):
            types = model_types.get((index, component), {})
            rows = rows[rows["token_id"].isin(list(types)) & (rows["count"] > 0)]
            freq = rows["token_id"].map(types)
        else:
            rows = rows[rows["count"] >= MIN_TYPE_COUNT]
            freq = rows["token_id"].map(frequency) if external else rows["count"].astype(float)
        keep = freq.notna() & (freq > 0)
        rows, freq = rows[keep], freq[keep]
        if model_types is not None and not context.get("is_baseline"):
            model_types[(index, component)] = dict(zip(rows["token_id"].astype(int), freq.astype(float)))
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


def lens_losses(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(one row per layer: layer, lens_loss_mean[, uniform_loss]; replicates: layer, replicate, lens_loss).

    A `lens` table (layer, component, lens_loss_mean, count[, uniform_loss]) with `lens_replicates`
    (layer[, component], replicate, lens_loss) is read when present; otherwise the updates probe's
    lens rows and `lens_loss_replicates`. The layer n_layers is the output.
    """
    lens, reps = tables.get("lens"), tables.get("lens_replicates")
    if lens is None or lens.empty or "lens_loss_mean" not in lens:
        lens, reps = tables.get("updates"), tables.get("lens_loss_replicates")
    if lens is None or lens.empty or "lens_loss_mean" not in lens:
        return None, None
    per_layer = lens.drop_duplicates("layer").sort_values("layer")
    if reps is not None and "component" in reps and "component" in lens:
        firsts = set(zip(per_layer["layer"], per_layer["component"]))
        reps = reps[[(l, c) in firsts for l, c in zip(reps["layer"], reps["component"])]]
    return per_layer, reps


def readout_context(tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """The layers whose readout is meaningful (lens loss at most log V), from the model's lens losses."""
    lens, _ = lens_losses(tables)
    if lens is None or "uniform_loss" not in lens:
        return {"meaningful": None}
    ok = lens["lens_loss_mean"] <= lens["uniform_loss"]
    meaningful = [int(l) for l in lens.loc[ok, "layer"]]
    return {"meaningful": meaningful, "first_meaningful": meaningful[0] if meaningful else None}


NOT_MEANINGFUL = "readout not meaningful at this layer (lens loss above log V)"


def _unread(context: dict[str, Any], layer: int) -> str:
    meaningful = context.get("meaningful")
    return NOT_MEANINGFUL if meaningful is not None and layer not in meaningful else ""


def _descent(tables, context) -> dict[tuple, Estimate]:
    """cos(Δ, -g) with g at the start of the step; the actual loss change is shown beside it (check)."""
    updates = tables.get("updates")
    if updates is None or updates.empty:
        return {}
    reps = tables.get("updates_replicates")
    cos_r = _replicate_matrix(reps, ["layer", "component"], "descent_cos") if reps is not None else {}
    actual_r = _replicate_matrix(reps, ["layer", "component"], "actual_change") if reps is not None else {}
    out = {}
    for row in updates[updates["component"] != "output"].itertuples():
        key = (int(row.layer), str(row.component))
        check = Estimate(float(getattr(row, "actual_change_mean", float("nan"))), actual_r.get(key))
        end = getattr(row, "descent_cos_end_mean", float("nan"))
        note = f"cos with g at the end of the step {end:.3g}" if end == end else ""
        unread = _unread(context, int(row.layer))
        if row.descent_cos_mean != row.descent_cos_mean and end == end:
            unread = (
                "the model readout measures the gradient at the step's start only with --ablate (the rerun without the update)"
            )
            out[key] = Estimate(float("nan"), note=note, undetermined=unread)
            continue
        out[key] = Estimate(
            float(row.descent_cos_mean), cos_r.get(key), check=check, note=note, undetermined=unread, reason=UNREADABLE
        )
    return out


def _removal_raises_loss(tables, context) -> dict[tuple, Estimate]:
    """The loss without the update minus with it (nats per token): -actual_change, through the run's readout."""
    updates = tables.get("updates")
    if updates is None or updates.empty or "actual_change_mean" not in updates:
        return {}
    reps = tables.get("updates_replicates")
    actual_r = _replicate_matrix(reps, ["layer", "component"], "actual_change") if reps is not None else {}
    out = {}
    for row in updates[updates["component"] != "output"].itertuples():
        key = (int(row.layer), str(row.component))
        change = float(row.actual_change_mean)
        replicates = actual_r.get(key)
        if change != change:
            out[key] = Estimate(change, undetermined="no loss without the update: the model readout measures it with --ablate")
            continue
        unread = _unread(context, key[0])
        out[key] = Estimate(-change, -replicates if replicates is not None else None, undetermined=unread, reason=UNREADABLE)
    return out


def _lens_loss_drop(tables, context) -> dict[tuple, Estimate]:
    lens, lens_reps = lens_losses(tables)
    if lens is None:
        return {}
    first = context.get("first_meaningful")
    if first is None:
        return {
            (None, "to output"): Estimate(float("nan"), undetermined="the readout is meaningful at no layer", reason=UNREADABLE)
        }
    loss = dict(zip(lens["layer"].astype(int), lens["lens_loss_mean"].astype(float)))
    values = np.array(list(loss.values()))
    if len(values) > 1 and np.allclose(values, values[-1], rtol=1e-6, atol=0):
        # the model readout reads every layer through the rest of the network: each loss is the model's own
        return {
            (None, "to output"): Estimate(
                0.0, undetermined="every layer's loss is the model's own (model readout): no lens loss to fall"
            )
        }
    reps = _replicate_matrix(lens_reps, ["layer"], "lens_loss")
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
        why, reason = "", NOT_TESTABLE
        if meaningful is not None and int(layer) not in meaningful:
            why, reason = NOT_MEANINGFUL, UNREADABLE
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
            star, replicates, undetermined=why, reason=reason, note=f"loss range over the grid {spread:.3g} nats"
        )
    order = {c: i for i, c in enumerate(("attn", "mlp", "block"))}
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9), kv[0][1])))


def _outlier_dimension(tables, context) -> dict[tuple, Estimate]:
    """Mean share of ‖h‖² in the token's top dimension, max_i h_i² / ‖h‖², over positions >= 1."""
    massive = tables.get("massive")
    if massive is None or massive.empty or "top_share_mean" not in massive:
        return {}
    reps = tables.get("outlier_replicates")
    share_r = _replicate_matrix(reps, ["site", "layer"], "top_share") if reps is not None else {}
    later = massive[massive["position"] > 0]
    out = {}
    for site, layer, index in _stream_layers(massive):
        rows = later[(later["site"] == site) & (later["layer"] == layer)]
        if rows.empty:
            continue
        component = "resid_pre" if site == "resid_pre" else "output"
        out[(index, component)] = Estimate(_weighted(rows, "top_share_mean"), share_r.get((site, layer)))
    return out


KINDS: dict[str, Kind] = {
    "norm_growth": Kind("norms", 1.0, GREATER, "documents", _norm_growth),
    "position0_ratio": Kind("norms", 1.0, GREATER, "documents", _position0_ratio),
    "frequency": Kind("norms", 0.0, TWO_SIDED, "token types (Fisher z)", _frequency),
    "massive": Kind("massive", 1.0, GREATER, "documents", _massive),
    "outlier_dimension": Kind("massive", 0.0, GREATER, "documents", _outlier_dimension),
    "sink_mass": Kind("massive", 0.0, GREATER, "documents", _sink_mass),
    "descent": Kind("updates", 0.0, GREATER, "documents", _descent),
    "removal_raises_loss": Kind("updates", 0.0, GREATER, "documents", _removal_raises_loss),
    "lens_loss_drop": Kind("updates", 0.0, GREATER, "documents", _lens_loss_drop),
    "alpha_star": Kind("linesearch", 1.0, TWO_SIDED, "documents", _alpha_star, same_sign=False),
}


# -- verdicts -----------------------------------------------------------------------------------

_Z = 1.959963984540054  # the normal quantile of a 95% interval's upper end


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


@dataclass
class Test:
    """One comparison of a claim: against the natural null (`against` "null") or a valid baseline (its kind)."""

    against: str
    value: float  # the statistic, or the difference from the baseline
    ci: tuple[float, float]
    center: float  # the null, or 0 for a difference


def _clears(test: Test, side: float, min_effect: float) -> bool:
    low, high = test.ci
    return low >= test.center + min_effect if side > 0 else high <= test.center - min_effect


def _short(test: Test, side: float | None, min_effect: float) -> bool:
    """The interval shows the effect is below its minimum: wholly short of center + side * min_effect,
    or with no side (two-sided) wholly within center ± min_effect."""
    low, high = test.ci
    if side is None:
        return test.center - min_effect < low and high < test.center + min_effect
    return high < test.center + min_effect if side > 0 else low > test.center - min_effect


def _p_value(test: Test, side: float, min_effect: float) -> float:
    """One-sided p of 'the effect clears center + side * min_effect', from the interval's normal spread."""
    low, high = test.ci
    se = (high - low) / (2 * _Z)
    margin = side * (test.value - test.center) - min_effect
    if not se > 0:
        return 0.0 if margin > 0 else 1.0
    return 0.5 * math.erfc(margin / se / math.sqrt(2))


def _clears_any(test: Test, side: float | None, min_effect: float) -> bool:
    sides = [side] if side is not None else [1.0, -1.0]
    return any(_clears(test, s, min_effect) for s in sides)


def _p_any(test: Test, side: float | None, min_effect: float) -> float:
    sides = [side] if side is not None else [1.0, -1.0]
    return min(_p_value(test, s, min_effect) for s in sides)


def decide(direction: str, min_effect: float, tests: list[Test], same_sign: bool = True) -> tuple[str, str, str, float]:
    """(verdict, reason, note, one-sided p) from the null test (first) and the valid baselines' tests.

    The multiplicity control and the not-testable reasons (documents, readout, estimate) are applied
    by `claims`; this is the rule of docs/claims.md for one claim with data.
    """
    null, baselines = tests[0], tests[1:]
    if not all(math.isfinite(v) for t in tests for v in (t.value, *t.ci)):
        return UNDETERMINED, NON_FINITE, "a value or interval is not finite", float("nan")
    side = 1.0 if direction == GREATER else -1.0 if direction == LESS else (1.0 if null.value >= null.center else -1.0)
    # a two-sided claim's baselines: on the model's side of the null (same_sign), or on either side
    base_side = side if direction != TWO_SIDED or same_sign else None
    # intersection-union: every comparison must clear its minimum, so the claim's p is the largest
    p = max([_p_value(null, side, min_effect)] + [_p_any(t, base_side, min_effect) for t in baselines])
    if _short(null, None if direction == TWO_SIDED else side, min_effect):
        return FAILS, "", f"the interval lies within its minimum effect {min_effect:g} of the null", p
    for test in baselines:
        if _short(test, base_side, min_effect):
            return FAILS, "", f"does not beat {test.against} by its minimum effect {min_effect:g}", p
    if not baselines:
        return UNDETERMINED, NO_VALID_BASELINE, "", p
    if _clears(null, side, min_effect) and all(_clears_any(t, base_side, min_effect) for t in baselines):
        return HOLDS, "", "", p
    return UNDETERMINED, UNDERPOWERED, "an interval straddles its minimum effect", p


def verdict(
    direction: str,
    null: float,
    ci: tuple[float, float],
    differences: list[tuple[float, float]],
    min_effect: float,
) -> str:
    """The rule of docs/claims.md on intervals alone: `differences` are the valid baselines' (low, high)."""
    center = 0.5 * (ci[0] + ci[1])
    tests = [Test("null", center, ci, null)] + [
        Test(f"baseline {i}", 0.5 * (lo + hi), (lo, hi), 0.0) for i, (lo, hi) in enumerate(differences)
    ]
    return decide(direction, min_effect, tests)[0]


def baseline_slug(kind: str) -> str:
    return kind.replace("-", "_").replace(" ", "_")


def baseline_kind(name: str) -> str:
    """The kind of a baseline run name ('random-init', 'random-init seed 2', 'shuffled', ...)."""
    for kind in (RANDOM_INIT, SHUFFLED, NO_BOS):
        if name == kind or name.startswith(kind + " ") or baseline_slug(name).startswith(baseline_slug(kind)):
            return kind
    return name


def effective_documents(tables: dict[str, pd.DataFrame]) -> float | None:
    """How many documents the replicate weights carry: mean(W)² / var(W) of each replicate's total weight.

    With Poisson(1) weights per document, a replicate's weight W = Σ_d w_d n_d has mean Σ n_d and variance
    Σ n_d², so this is (Σ n_d)² / Σ n_d² (n_d: the document's position-0 tokens, i.e. its windows), the
    number of equally sized documents with the same spread. Used when the run's document count is not given.
    """
    reps = tables.get("norms_replicates")
    if reps is None or reps.empty or "weight" not in reps:
        return None
    first = reps[reps["position_group"] == "position0"]
    if first.empty:
        return None
    site, layer = first["site"].iloc[0], first["layer"].iloc[0]
    weights = first[(first["site"] == site) & (first["layer"] == layer)]["weight"].to_numpy(float)
    variance = weights.var(ddof=1) if len(weights) > 1 else 0.0
    return float(weights.mean() ** 2 / variance) if variance > 0 else None


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (NaN stays NaN and does not count towards the family)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    if tested.size == 0:
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    adjusted = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(adjusted[::-1])[::-1])
    return out


def claims(
    tables: dict[str, pd.DataFrame],
    baselines: dict[str, dict[str, pd.DataFrame]] | None = None,
    n_documents: int | None = None,
) -> pd.DataFrame:
    """One row per claim (and layer, component), with values, intervals, baselines and verdicts.

    `n_documents`: the run's document count (RunResult passes meta's n_docs); when None it is estimated
    from the replicate weights (`effective_documents`), and when that is unknown too the rule is not applied.
    """
    baselines = baselines or {}
    context = readout_context(tables)
    context["frequency_types"] = {}
    documents = n_documents if n_documents is not None else effective_documents(tables)
    nonfinite = {layer for layers in nonfinite_layers(tables).values() for layer in layers}
    rows = []
    for name in CLAIM_ORDER:
        kind = KINDS[name]
        model = kind.estimate(tables, context)
        if not model:
            continue
        based = {b: kind.estimate(t, {**context, "is_baseline": True}) for b, t in baselines.items()}
        n_replicates = _replicate_count(model)
        for key, estimate in model.items():
            based_at = {b: e.get(key) for b, e in based.items()}
            rows.append(_claim_row(name, kind, key, estimate, based_at, documents, n_replicates, nonfinite))
    frame = pd.DataFrame(rows, columns=claim_columns(list(baselines)) + ["_p_one", "_pending"])
    _control_multiplicity(frame)
    _note_contradictions(frame)
    frame = frame.drop(columns=["_p_one", "_pending"])
    if len(frame):
        frame["layer"] = frame["layer"].astype("Int64")
    return frame


def _claim_row(
    name: str,
    kind: Kind,
    key: tuple,
    estimate: Estimate,
    based: dict[str, Estimate | None],
    documents: float | None,
    n_replicates: int,
    nonfinite: set[int] = frozenset(),  # type: ignore[assignment]
) -> dict[str, Any]:
    """The one generic builder of a claim row: values, baselines, and the verdict of docs/claims.md."""
    layer, component = key
    min_effect = MIN_EFFECT[name]
    valid = VALID_NULLS[name]
    ci = estimate.ci()
    row: dict[str, Any] = {
        "probe": kind.probe,
        "claim": name,
        "layer": layer,
        "component": component,
        "value": estimate.value,
        "ci_low": ci[0],
        "ci_high": ci[1],
        "null": kind.null,
        "direction": kind.direction,
        "min_effect": min_effect,
        "interval": f"documents (Poisson bootstrap, B={n_replicates})" if kind.interval == "documents" else kind.interval,
        "valid_nulls": ", ".join(valid),
        "n_documents": float(documents) if documents is not None else float("nan"),
    }
    check = estimate.check.ci() if estimate.check is not None else None
    row["check_value"] = estimate.check.value if estimate.check is not None else float("nan")
    row["check_ci_low"], row["check_ci_high"] = check if check is not None else (float("nan"), float("nan"))
    tests = [Test("null", estimate.value, ci, kind.null)]
    missing = []
    for b, base in based.items():
        values = _difference(estimate, base)
        for suffix, v in zip(("value", "ci_low", "ci_high", "difference", "difference_ci_low", "difference_ci_high"), values):
            row[f"{baseline_slug(b)}_{suffix}"] = v
        if baseline_kind(b) in valid:
            if base is None or not (values[4] == values[4] and values[5] == values[5]):
                missing.append(b)
            else:
                tests.append(Test(b, values[3], (values[4], values[5]), 0.0))
    decided, reason, why, p = decide(kind.direction, min_effect, tests, kind.same_sign)
    notes = [estimate.note] if estimate.note else []
    if estimate.value != estimate.value and layer in nonfinite:  # an empty cell is never read as a zero
        decided, reason, why = UNDETERMINED, NON_FINITE, f"every value read at layer {layer} was non-finite (no finite token)"
    elif documents is not None and documents < MIN_DOCUMENTS:  # it holds for every claim of the run
        decided, reason, why = UNDETERMINED, TOO_FEW_DOCUMENTS, f"{documents:.3g} documents (fewer than {MIN_DOCUMENTS})"
        if estimate.undetermined:
            why += f"; {estimate.undetermined}"
    elif estimate.undetermined:
        decided, reason, why = UNDETERMINED, estimate.reason, estimate.undetermined
    elif estimate.value != estimate.value:
        decided, reason, why = UNDETERMINED, NON_FINITE, "no finite value at this layer"
    elif missing and decided != FAILS:
        decided, reason, why = UNDETERMINED, NO_VALID_BASELINE, f"{', '.join(missing)} lacks this statistic"
    elif reason == NO_VALID_BASELINE:
        why = f"no valid baseline was run: run with --baseline {valid[0]}"
    if why:
        notes.insert(0, why)
    row["verdict"], row["reason"], row["note"] = decided, reason, "; ".join(notes)
    # the family of the multiplicity control: every claim tested against the null and a valid baseline
    row["_p_one"] = p if len(tests) > 1 and reason in ("", UNDERPOWERED) else float("nan")
    row["_pending"] = decided == HOLDS
    return row


def _control_multiplicity(frame: pd.DataFrame) -> None:
    """Benjamini-Hochberg at FDR over the run's tested claims; a claim that holds must survive it."""
    if not len(frame):
        return
    p_two = np.minimum(1.0, 2 * frame["_p_one"].to_numpy(float))
    adjusted = benjamini_hochberg(p_two)
    frame["p_value"], frame["p_adjusted"] = p_two, adjusted
    lost = frame["_pending"].to_numpy(bool) & ~(adjusted <= FDR)
    for i in np.flatnonzero(lost):
        frame.iat[i, frame.columns.get_loc("verdict")] = UNDETERMINED
        frame.iat[i, frame.columns.get_loc("reason")] = UNDERPOWERED
        tested = int(np.isfinite(p_two).sum())
        note = f"holds before the multiplicity control: BH-adjusted p {adjusted[i]:.3g} > {FDR:g} over {tested} tested claims"
        old = frame["note"].iat[i]
        frame.iat[i, frame.columns.get_loc("note")] = f"{note}; {old}" if old else note


def _note_contradictions(frame: pd.DataFrame) -> None:
    """Where descent and a loss change at the same layer disagree, say why on both rows."""
    if not len(frame):
        return
    by = {(r.claim, r.layer, r.component): i for i, r in enumerate(frame.itertuples())}
    for (claim, layer, component), i in by.items():
        if claim != "descent":
            continue
        pairs = [(by.get(("removal_raises_loss", layer, component)), "the step lowers the loss")]
        if component == "block":
            pairs.append((by.get(("lens_loss_drop", layer, "step")), "the lens loss falls to the next layer"))
        for j, what in pairs:
            if j is None:
                continue
            verdicts = {frame["verdict"].iat[i], frame["verdict"].iat[j]}
            if verdicts != {HOLDS, FAILS}:
                continue
            note = (
                f"descent and '{what}' disagree: cos(Δ, -g) reads the gradient's direction at the step's start, the loss "
                "change the whole step (curvature, overshoot, or a different lens at the next layer)"
            )
            for k in (i, j):
                old = frame["note"].iat[k]
                frame.iat[k, frame.columns.get_loc("note")] = f"{old}; {note}" if old else note


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
        "valid_nulls",
        "n_documents",
        "check_value",
        "check_ci_low",
        "check_ci_high",
    ]
    for b in baselines:
        slug = baseline_slug(b)
        columns += [
            f"{slug}_{s}" for s in ("value", "ci_low", "ci_high", "difference", "difference_ci_low", "difference_ci_high")
        ]
    return columns + ["p_value", "p_adjusted", "verdict", "reason", "note"]


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
    "outlier_dimension": "one dimension carries an outsized share of ‖h‖² at every position (max_i h_i²/‖h‖², positions ≥ 1)",
    "sink_mass": "heads attend to key 0 more than uniform attention (excess weight)",
    "frequency": "the mean norm of a token type varies with its frequency (Spearman ρ)",
    "descent": "the update points down the loss (cos(Δ, -dCE/dh), gradient at the step's start)",
    "removal_raises_loss": "removing the update raises the loss (nats per token)",
    "lens_loss_drop": "the lens loss falls (nats)",
    "alpha_star": "the step is not the best step on its line (best step α* ≠ 1)",
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

    Only a claim that holds is worded as a finding; every other is worded as a test that did not pass,
    with its reason. Baselines that are not valid nulls for the claim are marked 'for reference'.
    """
    row = dict(row)
    slugs = [c[: -len("_difference_ci_low")] for c in row if str(c).endswith("_difference_ci_low")]
    valid = {baseline_slug(v.strip()) for v in str(row.get("valid_nulls") or "").split(",") if v.strip()}
    against = f"null {_num(row['null'])}, minimum effect {_num(row.get('min_effect'))}"
    for slug in slugs:
        reference = "" if slug in valid or any(slug.startswith(v) for v in valid) else " (for reference)"
        against += (
            f"; vs {slug.replace('_', '-')}{reference} {value_text(row, slug + '_')}, difference {difference_text(row, slug)}"
        )
    where = where_text(row)
    head = f"{row['claim']}{f' at {where}' if where else ''}"
    effect = f"{value_text(row)} ({row['interval']}; {against})"
    if row["verdict"] == HOLDS:
        text = f"{head} holds: {WHAT[row['claim']]}, {effect}"
    else:
        reason = row.get("reason")
        text = f"{head} {row['verdict']}{f' ({reason})' if reason else ''}: {effect}"
    if row.get("note"):
        text += f"; {row['note']}"
    return text


def claims_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The claims as JSON-able dicts for run.json (NaN becomes null when written)."""
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [{k: (int(v) if k == "layer" and v is not None else v) for k, v in r.items()} for r in records]


def run_notes(frame: pd.DataFrame) -> list[str]:
    """What holds for the run as a whole, said once (the console and pages print these above the claims)."""
    notes = []
    few = frame[frame["reason"] == TOO_FEW_DOCUMENTS] if len(frame) and "reason" in frame else frame.iloc[0:0]
    if len(few):
        count = few["n_documents"].iloc[0]
        notes.append(
            f"{count:.3g} documents probed, fewer than {MIN_DOCUMENTS}: every claim is undetermined "
            "(a bootstrap over so few documents is no interval)"
        )
    if len(frame) and "reason" in frame and (frame["reason"] == NO_VALID_BASELINE).any() and not baselines_of(frame):
        notes.append(NO_BASELINE_NOTE)
    return notes
