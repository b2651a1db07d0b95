"""One voice: the console, the report, the notebook view and the comparison show each claim with the same numbers.

One CLI run of the demo with every probe and all three baselines is read back through every view; the
expected texts are formatted here from run.json's claims, not by the code under test.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import pandas as pd
import pytest

from normprobe import RunResult
from normprobe.cli import main
from normprobe.corpus import pydoc_topic_documents

from .conftest import TEST_DEVICE

N_DOCS = 24  # at least the documents a verdict needs (docs/claims.md)
WIDTH = 120


def g3(value) -> str:
    """How every view writes a number: three significant digits, n/a where there is none."""
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.3g}"


def value_cell(claim: dict) -> str:
    return f"{g3(claim['value'])} [{g3(claim['ci_low'])}, {g3(claim['ci_high'])}]"


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    return int(code), out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo with every probe and all three baselines, through the CLI; its console output."""
    root = tmp_path_factory.mktemp("voice")
    docs = root / "docs.txt"
    docs.write_text("\n".join(d.replace("\n", " ")[:200] for d in pydoc_topic_documents()[:N_DOCS]) + "\n")
    out = root / "run"
    argv = ["run", "demo", "--input", str(docs), "--seq-len", "24", "--alphas", "0,1,2", "--baseline-seeds", "1"]
    for probe in ("norms", "updates", "massive", "linesearch"):
        argv += ["--probe", probe]
    for baseline in ("random-init", "shuffled", "no-bos"):
        argv += ["--baseline", baseline]
    code, stdout, stderr = _cli([*argv, "--out", str(out), "--device", TEST_DEVICE])
    assert code == 0, stderr[-2000:]
    return out, stdout, stderr


def _console_claims(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.startswith("normprobe: ")]
    start = next(i for i, line in enumerate(lines) if line.startswith("normprobe: claims: "))
    return lines[start:]


def test_run_json_has_one_block_of_conclusions(demo_run):
    out, _, _ = demo_run
    body = json.loads((out / "run.json").read_text())
    assert "findings" not in body and all("findings" not in r for r in body["baselines"].values())
    assert len(body["claims"]) == len(RunResult.load(out).claims) > 0


def test_a_folder_written_with_findings_still_loads_and_drops_them(demo_run, tmp_path):
    import shutil

    out, _, _ = demo_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    body = json.loads((old / "run.json").read_text())
    body["findings"] = {"norms": {"growth": {"geometric": 1.95}}}  # what versions before kept beside the claims
    for record in body["baselines"].values():
        record["findings"] = {"norms": {}}
    (old / "run.json").write_text(json.dumps(body))
    loaded = RunResult.load(old)
    pd.testing.assert_frame_equal(loaded.claims, RunResult.load(out).claims)
    again = json.loads(loaded.run_json())
    assert "findings" not in again and all("findings" not in r for r in again["baselines"].values())
    assert loaded.findings["norms"]["growth"]["geometric"] != 1.95  # recomputed from the tables, never read


def test_console_is_a_short_table_with_verdicts_first(demo_run):
    out, stdout, stderr = demo_run
    said = [line for line in (stdout + stderr).splitlines() if not line.startswith("wrote ") and str(out) not in line]
    assert said and all(len(line) <= WIDTH for line in said), max(said, key=len)  # paths are never cut
    claims = json.loads((out / "run.json").read_text())["claims"]
    verdicts = [c["verdict"] for c in claims]
    lines = _console_claims(stderr)
    held, failed = verdicts.count("holds"), verdicts.count("does not hold")
    undetermined = len(verdicts) - held - failed
    assert lines[0] == f"normprobe: claims: {held} hold, {failed} do not hold, {undetermined} undetermined"
    rows = [
        line[len("normprobe:   ") :] for line in lines if line.startswith(("normprobe:   holds ", "normprobe:   does not hold "))
    ]
    assert len(rows) == min(held + failed, 15)
    said = [row.startswith("holds") for row in rows]
    assert said == sorted(said, reverse=True)  # every `holds` before every `does not hold`
    decided = [c for c in claims if c["verdict"] in ("holds", "does not hold")]
    for claim, row in zip(sorted(decided, key=lambda c: c["verdict"] != "holds"), rows):  # stable: the table's order
        assert row.startswith(claim["verdict"]) and f" {claim['claim']} " in row and value_cell(claim) in row
    if undetermined:
        assert any(line.startswith(f"normprobe:   {undetermined} undetermined") for line in lines)
        assert f"normprobe:   every claim: {out / 'report.html'}" in lines


def test_report_notebook_and_comparison_show_each_claims_numbers(demo_run, tmp_path):
    out, _, _ = demo_run
    claims = json.loads((out / "run.json").read_text())["claims"]
    report = (out / "report.html").read_text()
    assert 'id="findings"' not in report and "<h2>Findings" not in report
    notebook = RunResult.load(out)._repr_html_()
    code, stdout, err = _cli(["compare", str(out), str(out), "--label", "a", "--label", "b", "--out", str(tmp_path / "cmp")])
    assert code == 0, err
    comparison = (tmp_path / "cmp" / "report.html").read_text()
    for claim in claims:
        cell = value_cell(claim)
        assert cell in report, claim
        assert cell in notebook, claim
        assert f"{cell} {claim['verdict']}" in comparison, claim
    # the comparison's claims table holds each run's claims, numbers equal to the run's own
    table = pd.read_parquet(tmp_path / "cmp" / "claims.parquet")
    assert len(table) == 2 * len(claims) and list(table.columns[:5]) == ["run", "probe", "claim", "layer", "component"]
    for label in ("a", "b"):
        mine = table[table["run"] == label]
        assert [g3(v) for v in mine["value"]] == [g3(c["value"]) for c in claims]
        assert list(mine["verdict"]) == [c["verdict"] for c in claims]
    assert f"claims: the verdicts of all {len(claims)} claims agree between a, b" in stdout


def test_compare_prints_the_claims_whose_verdicts_differ_and_a_missing_probe(demo_run, tmp_path):
    out, _, _ = demo_run
    # the same run without its baselines and without linesearch: saved again, no model needed
    other = RunResult.load(out)
    other.baselines = {}
    other.meta.pop("baselines", None)
    dropped = other.meta["probe_tables"].pop("linesearch")
    other.meta["probes"] = [p for p in other.meta["probes"] if p != "linesearch"]
    other.tables = {k: v for k, v in other.tables.items() if k not in dropped}
    other.save(tmp_path / "bare", report=False)
    code, stdout, err = _cli(
        ["compare", str(out), str(tmp_path / "bare"), "--label", "full", "--label", "bare", "--out", str(tmp_path / "c")]
    )
    assert code == 0, err
    lines = stdout.splitlines()
    assert all(len(line) <= WIDTH for line in lines if not line.startswith("wrote "))
    assert "probe linesearch is missing from bare" in lines
    full = pd.DataFrame(json.loads((out / "run.json").read_text())["claims"])
    bare = pd.DataFrame(json.loads((tmp_path / "bare" / "run.json").read_text())["claims"])
    key = ["probe", "claim", "layer", "component"]
    both = full.merge(bare, on=key, how="outer", suffixes=("_full", "_bare"))
    differ = both[both["verdict_full"].fillna("missing") != both["verdict_bare"].fillna("missing")]
    if len(differ):
        assert f"claims whose verdict differs between the runs: {len(differ)} of {len(both)}" in lines
        shown = [line for line in lines if line.startswith("  ") and not line.startswith("  ... ")]
        assert len(shown) == min(len(differ), 15)
        assert len(differ) <= 15 or any(line.startswith(f"  ... {len(differ) - 15} more: see ") for line in lines)
        if len(differ) <= 15:
            for row in differ.to_dict("records"):
                full_cell = (
                    "full missing"
                    if pd.isna(row["verdict_full"])
                    else f"full {value_cell({k: row[k + '_full'] for k in ('value', 'ci_low', 'ci_high')})} {row['verdict_full']}"
                )
                assert any(line.startswith(f"  {row['claim']}") and full_cell in line for line in shown), full_cell
    else:
        assert f"claims: the verdicts of all {len(both)} claims agree between full, bare" in lines


def test_merge_prints_the_merged_counts_and_the_claims(demo_adapter, tmp_path):
    from normprobe.api import run_to_folder

    from .conftest import DOCS

    options = dict(probes=["norms"], texts=DOCS, batch_size=1, progress=False, plotlyjs="cdn")
    shards = [run_to_folder(demo_adapter, tmp_path / f"shard{i}", shard=(i, 2), **options) for i in range(2)]
    code, stdout, err = _cli(["merge", *map(str, shards), "--out", str(tmp_path / "merged"), "--plotlyjs", "cdn"])
    assert code == 0, err
    metas = [json.loads((s / "run.json").read_text()) for s in shards]
    docs, windows, tokens = (sum(m[f"n_{k}"] for m in metas) for k in ("docs", "windows", "tokens"))
    lines = stdout.splitlines()
    assert lines[0] == f"merged 2 shards: {docs:,} docs, {windows:,} windows, {tokens:,} tokens"
    verdicts = [c["verdict"] for c in json.loads((tmp_path / "merged" / "run.json").read_text())["claims"]]
    held, failed = verdicts.count("holds"), verdicts.count("does not hold")
    assert lines[1] == f"claims: {held} hold, {failed} do not hold, {len(verdicts) - held - failed} undetermined"
    assert lines[-1] == f"wrote {tmp_path / 'merged'}/ (report: {tmp_path / 'merged' / 'report.html'})"


def _frame(rows: list[dict]) -> pd.DataFrame:
    base = {"probe": "norms", "layer": 1, "component": "block", "null": 1.0, "direction": "greater", "min_effect": 0.05}
    base |= {"interval": "documents (Poisson bootstrap, B=200)", "note": ""}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_a_reason_every_undetermined_claim_shares_is_said_once():
    from normprobe.report.claims import claims_table_lines

    why = "only 2 documents: a verdict needs at least 20 (run more text)"
    rows = [{"claim": c, "value": 1.1, "ci_low": 1.0, "ci_high": 1.2, "verdict": "undetermined", "note": why} for c in "abc"]
    lines = claims_table_lines(_frame(rows), ["norms"], "r/report.html")
    assert lines[0] == "claims: 0 hold, 0 do not hold, 3 undetermined"
    assert sum(why in line for line in lines) == 1 and f"  all 3 undetermined: {why}" in lines
    assert lines[-1] == "  every claim: r/report.html"


def test_unknown_claim_kinds_and_a_reason_column_are_shown_as_they_are():
    from normprobe.report.claims import claims_html, claims_table_lines

    rows = [
        {"claim": "outlier_dimension", "value": 0.12, "ci_low": 0.1, "ci_high": 0.14, "verdict": "holds", "reason": ""},
        {
            "claim": "ablation",
            "value": 0.03,
            "ci_low": -0.01,
            "ci_high": 0.07,
            "verdict": "undetermined",
            "reason": "underpowered",
        },
    ]
    frame = _frame(rows)
    lines = claims_table_lines(frame, ["norms"])
    assert any(line.startswith("  holds") and "outlier_dimension" in line and "0.12 [0.1, 0.14]" in line for line in lines)
    assert "  1 undetermined: underpowered" in lines
    page = claims_html(frame)
    assert "<th>reason</th>" in page and "<td>underpowered</td>" in page and "outlier_dimension" in page
