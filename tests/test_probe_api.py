"""The public probe API: example probes from probes/, registration, and hook checks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import normprobe
from normprobe.cli import main
from normprobe.registry import registered_probes, resolve_probe

from .conftest import DOCS, TEST_DEVICE
from .reference import hf_residuals, token_ids

REPO = Path(__file__).resolve().parents[1]
ENTROPY = str(REPO / "probes" / "attention_entropy.py")
ALIGNMENT = str(REPO / "probes" / "final_alignment.py")


def test_attention_entropy_matches_hugging_face_attentions(demo_adapter, hf_model):
    from normprobe.adapter import DEMO_DIR

    hf = hf_model(DEMO_DIR)
    result = normprobe.run(demo_adapter, texts=DOCS, probes=[ENTROPY], batch_size=4, progress=False)
    table = result["attention_entropy"].set_index(["layer", "head", "position"])
    sums, counts = {}, {}
    for doc in DOCS:
        ids = token_ids(demo_adapter.tokenizer, doc)
        with torch.no_grad():
            attentions = hf(torch.tensor([ids]), output_attentions=True).attentions
        for layer, pattern in enumerate(attentions):
            for head in range(pattern.shape[1]):
                for t in range(len(ids)):
                    p = pattern[0, head, t, : t + 1].double()
                    key = (layer, head, t)
                    sums[key] = sums.get(key, 0.0) + float(-(p * p.clamp_min(1e-30).log()).sum())
                    counts[key] = counts.get(key, 0) + 1
    assert len(table) == len(sums)
    for key, total in sums.items():
        assert table.loc[key, "count"] == counts[key]
        assert table.loc[key, "entropy_mean"] == pytest.approx(total / counts[key], abs=1e-5)
    assert result.findings["attention_entropy"]["most_focused_head"].startswith("L")


def test_final_alignment_matches_hidden_states(demo_adapter):
    result = normprobe.run(demo_adapter, texts=DOCS, probes=[ALIGNMENT], batch_size=3, progress=False)
    table = result["final_alignment"].set_index(["layer", "position"])
    sums, counts = {}, {}
    for doc in DOCS:
        hs = hf_residuals(demo_adapter.hf_model, token_ids(demo_adapter.tokenizer, doc))
        for layer in range(demo_adapter.n_layers):
            for t in range(hs[0].shape[0]):
                cos = float(torch.dot(hs[layer][t], hs[-1][t]) / (hs[layer][t].norm() * hs[-1][t].norm()))
                sums[(layer, t)] = sums.get((layer, t), 0.0) + cos
                counts[(layer, t)] = counts.get((layer, t), 0) + 1
    for key, total in sums.items():
        assert table.loc[key, "cos_final_mean"] == pytest.approx(total / counts[key], abs=1e-5)


def test_report_without_figures_carries_no_plotly(demo_adapter, tmp_path):
    result = normprobe.run(demo_adapter, texts=DOCS, probes=[ALIGNMENT], progress=False)  # it has no figures()
    html = result.to_html(tmp_path / "page.html").read_text()
    assert "final_alignment" in html and "Plotly.newPlot" not in html
    assert len(html) < 200_000  # plotly.js alone is ~4.7 MB
    with_figures = normprobe.run(demo_adapter, texts=DOCS, probes=[ENTROPY], progress=False)
    assert len(with_figures.to_html(tmp_path / "figures.html").read_text()) > 3_000_000


def test_custom_probe_from_cli_with_report(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "run",
                "demo",
                "--probe",
                ENTROPY,
                "--probe",
                f"{ALIGNMENT}:FinalAlignmentProbe",
                "--max-docs",
                "5",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
    assert exc.value.code == 0, capsys.readouterr().err
    meta = json.loads((out / "run.json").read_text())
    assert meta["probes"] == ["attention_entropy", "final_alignment"]
    html = (out / "report.html").read_text()
    assert "Probe: attention_entropy" in html and "Attention entropy per head" in html
    assert html.count("Plotly.newPlot") == 1  # the entropy probe draws one figure; alignment shows tables


def test_module_class_spec_and_direct_class(demo_adapter):
    sys.path.insert(0, str(REPO))
    try:
        cls = resolve_probe("probes.final_alignment:FinalAlignmentProbe")
    finally:
        sys.path.remove(str(REPO))
    result = normprobe.run(demo_adapter, texts=DOCS[:2], probes=[cls], progress=False)
    assert set(result.tables) == {"final_alignment"}


def test_unknown_hook_names_hook_and_model(family_adapter):
    from normprobe import Probe

    class MidProbe(Probe):
        name = "mid"

        def hook_points(self):
            return ["blocks.0.hook_resid_mid"]

    with pytest.raises(normprobe.NormprobeError, match="reads hook 'blocks.0.hook_resid_mid', which model .* does not have"):
        normprobe.run(family_adapter("gpt_neox"), texts=["hi"], probes=[MidProbe], progress=False)

    class SiteProbe(MidProbe):
        name = "site"

        def hook_points(self):
            return [("resid_mid", 0)]

    with pytest.raises(normprobe.NormprobeError, match="has no resid_mid"):
        normprobe.run(family_adapter("gpt_neox"), texts=["hi"], probes=[SiteProbe], progress=False)


def _fake_distribution(tmp_path, name, target):
    dist = tmp_path / f"fake_probes_{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-probes-{name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[normprobe.probes]\n{name} = {target}\n")


def test_entry_point_registration_and_clash(tmp_path, monkeypatch, capsys):
    _fake_distribution(tmp_path, "alignment", "probes.final_alignment:FinalAlignmentProbe")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(REPO))
    entries = registered_probes()
    assert entries["alignment"].origin == "entry point (fake-probes-alignment)"
    assert resolve_probe("alignment").name == "final_alignment"
    with pytest.raises(SystemExit):
        main(["probes"])
    assert "alignment" in capsys.readouterr().out
    _fake_distribution(tmp_path, "norms", "probes.final_alignment:FinalAlignmentProbe")
    with pytest.raises(normprobe.NormprobeError, match="probe name 'norms' is claimed twice"):
        registered_probes()


def test_probe_file_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('nope')\n")
    with pytest.raises(normprobe.NormprobeError, match="failed to import: RuntimeError: nope"):
        resolve_probe(str(bad))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(normprobe.NormprobeError, match="exactly one Probe subclass"):
        resolve_probe(str(empty))
    with pytest.raises(normprobe.NormprobeError, match="probe file not found"):
        resolve_probe(str(tmp_path / "missing.py"))


def test_docs_probe_example_runs(demo_adapter, tmp_path):
    """The docs' "Write your own probe" example, run as written."""
    page = (REPO / "docs" / "custom-probes.md").read_text()
    code = page.split("```python", 1)[1].split("```", 1)[0]
    path = tmp_path / "readme_probe.py"
    path.write_text(code)
    result = normprobe.run(demo_adapter, texts=DOCS, probes=[str(path)], progress=False)
    table = result["final_alignment"]
    reference = normprobe.run(demo_adapter, texts=DOCS, probes=[ALIGNMENT], progress=False)["final_alignment"]
    assert list(table["count"]) == list(reference["count"])
    assert table["count"].dtype.kind == "i" and reference["count"].dtype.kind == "i"  # counts are integers
    assert table["cos_mean"].to_numpy() == pytest.approx(reference["cos_final_mean"].to_numpy(), abs=1e-6)


class _WeightWatch(normprobe.Probe):
    """Reports, at result(), what is left of the model it was set up with."""

    name = "weight_watch"

    def setup(self, model, seq_len):
        self.model = model
        self.weight = model.hf_model.get_input_embeddings().weight
        self.numel_at_setup = self.weight.numel()

    def hook_points(self):
        return [("resid_pre", 0)]

    def update(self, activations, batch):
        pass

    def result(self):
        import pandas as pd

        return {
            "weight_watch": pd.DataFrame(
                {
                    "numel_at_setup": [self.numel_at_setup],
                    "numel_at_result": [self.weight.numel()],
                    "model_kept": [self.model.hf_model is not None],
                    "token_text": self.model.token_strings([5]),
                }
            )
        }


def test_a_model_the_runner_loaded_is_released_before_the_tables(demo_adapter):
    """The runner frees the weights of a model it loaded before result() (the peak then holds no
    tables, claims or report on top of the weights); the tokenizer stays for token strings."""
    watched = normprobe.run("demo", texts=DOCS[:2], probes=[_WeightWatch], device=TEST_DEVICE, progress=False)
    row = watched.tables["weight_watch"].iloc[0]
    assert row["numel_at_setup"] == demo_adapter.d_vocab * demo_adapter.d_model
    assert row["numel_at_result"] == 0 and not row["model_kept"]
    assert row["token_text"] == demo_adapter.tokenizer.decode([5])


def test_a_model_handed_in_stays_whole(demo_adapter):
    watched = normprobe.run(demo_adapter, texts=DOCS[:2], probes=[_WeightWatch], progress=False)
    row = watched.tables["weight_watch"].iloc[0]
    assert row["model_kept"] and row["numel_at_result"] == row["numel_at_setup"] == demo_adapter.d_vocab * demo_adapter.d_model
    again = normprobe.run(demo_adapter, texts=DOCS[:2], probes=["norms"], progress=False)
    assert again.meta["n_tokens"] == watched.meta["n_tokens"]
