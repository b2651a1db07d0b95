"""Several runs side by side, as an object: figures, differences, a notebook view, and the page it writes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .errors import NormprobeError
from .notebook import esc, run_line, table_html
from .results import REPORT_FILE, write_atomic
from .run_result import FigureViews, RunResult

CLAIMS_FILE = "claims.parquet"


class Comparison(FigureViews):
    """Runs overlaid: `claims`, `figures()`, `show()`, `differences()`, `to_html(path)` and `save(folder)`."""

    def __init__(self, results: Sequence[RunResult], labels: Sequence[str]):
        from .report.compare import unique_labels

        if len(results) < 2:
            raise NormprobeError("compare needs at least two runs")
        if len(labels) != len(results):
            raise NormprobeError(f"give one label per run ({len(results)}), not {len(labels)}")
        self.results = list(results)
        self.labels = unique_labels(list(labels))

    @classmethod
    def of(cls, runs: Sequence[RunResult | str | Path], labels: Sequence[str] | None = None) -> Comparison:
        """Runs as RunResults or run folders; labels default to folder names, else to each run's model."""
        results, names = [], []
        for i, run in enumerate(runs, start=1):
            if isinstance(run, RunResult):
                results.append(run)
                names.append(f"{i}: {run.meta.get('model', 'run')}")
            else:
                if not Path(run).is_dir():
                    raise NormprobeError(f"run folder not found: {run}")
                results.append(RunResult.load(run))
                names.append(Path(run).resolve().name)
        if labels is not None and len(labels) != len(results):
            raise NormprobeError(f"give one label per run ({len(results)}), not {len(labels)}")
        return cls(results, list(labels) if labels is not None else names)

    def _runs(self) -> list[tuple[str, RunResult]]:
        return list(zip(self.labels, self.results))

    def _sections(self) -> list:
        from .report.compare import comparison_sections

        return comparison_sections(self.results, self.labels)

    def differences(self) -> pd.DataFrame:
        """Each run minus the first, per layer: columns quantity, run, layer, value, first, difference."""
        from .report.compare import difference_table

        return difference_table(self._runs())

    @property
    def claims(self) -> pd.DataFrame:
        """Every run's claims in one table: one row per (run, probe, claim, layer, component), the run's label first."""
        from .report.compare import claims_across

        return claims_across(self._runs())

    def claims_side_by_side(self) -> pd.DataFrame:
        """A row per claim and per run its verdict, value and interval; the claims whose verdicts differ first."""
        from .report.compare import claims_side_by_side

        return claims_side_by_side(self._runs())

    def summary_lines(self) -> list[str]:
        """What `normprobe compare` prints: claims whose verdict differs between the runs, probes a run lacks."""
        from .report.compare import comparison_lines

        return comparison_lines(self._runs())

    def to_html(self, path: str | Path, plotlyjs: str = "inline") -> Path:
        from .report.compare import render_comparison

        path = Path(path)
        write_atomic(path, render_comparison(self.results, self.labels, plotlyjs=plotlyjs).encode("utf-8"))
        return path

    def save(self, out: str | Path, plotlyjs: str = "inline") -> Path:
        """Write OUT/claims.parquet (`claims`) and OUT/report.html (creating OUT); return the page's path."""
        from .results import _parquet_bytes

        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(out / CLAIMS_FILE, _parquet_bytes(self.claims))
            return self.to_html(out / REPORT_FILE, plotlyjs=plotlyjs)
        except OSError as exc:
            raise NormprobeError(f"cannot write the comparison to {out}: {exc.strerror or exc}") from None

    def __repr__(self) -> str:
        return f"Comparison({', '.join(repr(label) for label in self.labels)})"

    def _repr_html_(self) -> str:
        from .report.compare import claim_where

        labels = [label for label, _ in self._runs()]
        rows = [
            [f"{r['probe']}: {r['claim']}", claim_where(r), *(_cell_text(r, label) for label in labels)]
            for r in self.claims_side_by_side().to_dict("records")
        ]
        runs = "".join(f"<li>{esc(label)}: {esc(run_line(r.meta))}</li>" for label, r in self._runs())
        return (
            f"<div><b>normprobe comparison</b> of {len(self.results)} runs<ul>{runs}</ul>"
            "<p><b>claims</b>, run by run (value [95% CI] and verdict; those whose verdicts differ first)</p>"
            f"{table_html(['claim', 'where', *labels], rows)}"
            "<small>.figures() gives the page's figures, .show() draws them, .differences() holds each run "
            "minus the first per layer.</small></div>"
        )


def _cell_text(row: dict, label: str) -> str:
    from .report.compare import claim_cell

    verdict, value = claim_cell(row, label)
    return f"{value} {verdict}".strip()
