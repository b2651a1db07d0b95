"""Cosine of each layer's residual with the final residual, per (layer, position).

In the inner-loop view h_0, h_1, ..., h_L is an optimisation trajectory; cos(h_l, h_L) shows how
early each token's representation points where it will end up. Reads only resid_pre of every
layer and the last block's resid_post.

Use: normprobe run demo --probe probes/final_alignment.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from normprobe import GroupedMoments, Probe


class FinalAlignmentProbe(Probe):
    name = "final_alignment"
    description = "cos(h_l, h_L) of each token's residual with its final residual, per (layer, position)"

    def setup(self, model, seq_len):
        self.n_layers = model.n_layers
        self.seq_len = seq_len
        self.pre = [("resid_pre", l) for l in range(model.n_layers)]
        self.final = ("resid_post", model.n_layers - 1)
        self.names = {spec: model.hook_name(*spec) for spec in self.pre + [self.final]}
        self.cosine = GroupedMoments(model.n_layers * seq_len, model.device, track_extremes=False)

    def hook_points(self):
        return self.pre + [self.final]  # (site, layer) pairs: the runner resolves them

    def update(self, activations, batch):
        mask = batch.mask
        positions = batch.positions[mask]
        final = activations[self.names[self.final]][mask].float()
        for layer, spec in enumerate(self.pre):
            h = activations[self.names[spec]][mask].float()
            cos = torch.nn.functional.cosine_similarity(h, final, dim=-1, eps=1e-30)
            self.cosine.add(layer * self.seq_len + positions, cos)

    def merge(self, other):
        self.cosine.merge(other.cosine)

    def state_dict(self):
        return {"cosine": self.cosine.state_dict()}

    def load_state_dict(self, state):
        self.cosine.load_state_dict(state["cosine"])

    def result(self):
        index = np.arange(self.n_layers * self.seq_len)
        frame = pd.DataFrame(
            {
                "layer": index // self.seq_len,
                "position": index % self.seq_len,
                "count": self.cosine.counts().cpu().numpy(),
                "cos_final_mean": self.cosine.mean().cpu().numpy(),
                "cos_final_std": self.cosine.std().cpu().numpy(),
            }
        )
        return {"final_alignment": frame[frame["count"] > 0].reset_index(drop=True)}

    @classmethod
    def findings(cls, tables):
        frame = tables["final_alignment"]
        weighted = (frame["cos_final_mean"] * frame["count"]).groupby(frame["layer"]).sum()
        per_layer = weighted / frame.groupby("layer")["count"].sum()
        halfway = per_layer[per_layer >= 0.5]
        return {
            "cos_final_by_layer": {int(k): float(v) for k, v in per_layer.items()},
            "first_layer_with_cos_at_least_0.5": int(halfway.index[0]) if len(halfway) else None,
        }
