"""Per-layer curves of one saved run, shared by the comparison and evolution pages.

Each returns (layers, values) as arrays, or (None, None) when the run lacks the probe.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def residual_norm_curve(result: Any):
    f = result.descriptive("norms")
    if not f.get("residual_layers"):
        return None, None
    return np.array(f["residual_layers"]), np.array(f["residual_mean_norm"], dtype=float)


def position0_curve(result: Any):
    ratio = result.descriptive("norms").get("position0_ratio") or {}
    if not ratio:
        return None, None
    by_layer = {int(k): v for k, v in ratio.items()}  # keys are strings once read back from run.json
    layers = np.array(sorted(by_layer))
    return layers, np.array([by_layer[l] for l in layers], dtype=float)


def lens_loss_curve(result: Any):
    table = result.tables.get("updates")
    if table is None or not len(table):
        return None, None
    lens = table.drop_duplicates("layer").sort_values("layer")
    return lens["layer"].to_numpy(), lens["lens_loss_mean"].to_numpy()


def descent_curve(result: Any):
    table = result.tables.get("updates")
    if table is None or not len(table):
        return None, None
    block = table[table["component"] == "block"]
    return block["layer"].to_numpy(), block["descent_cos_mean"].to_numpy()
