"""Attention entropy per (layer, head, position): how spread out each head's attention is.

A query at position t can attend to t + 1 keys, so its entropy is at most log(t + 1); the table
gives both, and `entropy_ratio` = entropy / log(t + 1) compares positions fairly (position 0 is
excluded from the ratio: its one key gives entropy 0 of a maximum 0). Low entropy in early
positions often goes with attention sinks on the first token, the mechanism behind its large norm.

Use: normprobe run demo --probe probes/attention_entropy.py
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from normprobe import GroupedMoments, Probe


class AttentionEntropyProbe(Probe):
    name = "attention_entropy"
    description = "entropy of each head's attention over keys, per (layer, head, position)"

    def setup(self, model, seq_len):
        self.layers = self.selected_layers(model.n_layers)
        self.n_heads = model.n_heads
        self.seq_len = seq_len
        self.hooks = {f"blocks.{l}.attn.hook_pattern": i for i, l in enumerate(self.layers)}
        self.entropy = GroupedMoments(len(self.layers) * self.n_heads * seq_len, model.device, track_extremes=False)

    def hook_points(self):
        return list(self.hooks)

    def reduce(self, hook_name, pattern, batch):
        # pattern: [batch, head, query, key]; reduce to entropy per (batch, head, query) at once
        p = pattern.float()
        return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)

    def update(self, activations, batch):
        mask = batch.mask  # [B, T]
        positions = batch.positions[mask]
        for hook_name, slot in self.hooks.items():
            entropy = activations[hook_name].permute(0, 2, 1)[mask]  # [N, heads]
            heads = torch.arange(self.n_heads, device=entropy.device)
            groups = (slot * self.n_heads + heads[None, :]) * self.seq_len + positions[:, None]
            self.entropy.add(groups.reshape(-1), entropy.reshape(-1))

    def merge(self, other):
        self.entropy.merge(other.entropy)

    def state_dict(self):
        return {"entropy": self.entropy.state_dict()}

    def load_state_dict(self, state):
        self.entropy.load_state_dict(state["entropy"])

    def result(self):
        n = len(self.layers) * self.n_heads * self.seq_len
        index = np.arange(n)
        frame = pd.DataFrame(
            {
                "layer": np.array(self.layers)[index // (self.n_heads * self.seq_len)],
                "head": (index // self.seq_len) % self.n_heads,
                "position": index % self.seq_len,
                "count": self.entropy.counts().cpu().numpy(),
                "entropy_mean": self.entropy.mean().cpu().numpy(),
                "entropy_std": self.entropy.std().cpu().numpy(),
            }
        )
        frame = frame[frame["count"] > 0].reset_index(drop=True)
        frame["max_entropy"] = np.log(frame["position"] + 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            frame["entropy_ratio"] = np.where(frame["position"] > 0, frame["entropy_mean"] / frame["max_entropy"], np.nan)
        return {"attention_entropy": frame}

    @classmethod
    def findings(cls, tables):
        frame = tables["attention_entropy"]
        later = frame[frame["position"] > 0]
        per_head = later.groupby(["layer", "head"])["entropy_ratio"].mean()
        if per_head.empty:
            return {}
        (layer, head), lowest = per_head.idxmin(), float(per_head.min())
        return {
            "mean_entropy_ratio": float(per_head.mean()),
            "most_focused_head": f"L{layer}H{head}",
            "most_focused_head_ratio": lowest,
            "uniform_entropy_at_position_100": math.log(101),
        }

    @classmethod
    def figures(cls, tables):
        import plotly.graph_objects as go

        frame = tables["attention_entropy"]
        ratio = frame[frame["position"] > 0].groupby(["layer", "head"])["entropy_ratio"].mean().unstack("head")
        fig = go.Figure(
            go.Heatmap(
                z=ratio.to_numpy(),
                x=ratio.columns,
                y=ratio.index,
                colorscale="Viridis",
                colorbar=dict(title="entropy / max"),
                hovertemplate="layer %{y}<br>head %{x}<br>mean entropy ratio %{z:.3f}<extra></extra>",
            )
        )
        fig.update_layout(
            title="Attention entropy per head, relative to uniform attention (positions ≥ 1)",
            xaxis_title="head",
            yaxis_title="layer",
        )
        return [fig]
