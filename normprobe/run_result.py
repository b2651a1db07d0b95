"""`RunResult`: a run's tables (normprobe.results) with its figures, its notebook view and its report page.

It sits above both the report and the notebook view, which draw from tables and never import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import NormprobeError
from .results import RunTables, write_atomic


class FigureViews:
    """figures() and show(), for anything that lists its report sections."""

    def _sections(self) -> list:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def figures(self) -> dict[str, Any]:
        """The report's figures as `plotly.graph_objects.Figure`s, keyed by title, in the report's order."""
        from .report import figures_by_title

        return figures_by_title(self._sections())

    def show(self, *titles: str, renderer: str | None = None) -> None:
        """Draw the figures; give words of titles (case ignored) to draw only the figures whose titles hold them."""
        figures = self.figures()
        chosen = [t for t in figures if not titles or any(w.lower() in t.lower() for w in titles)]
        if not chosen:
            raise NormprobeError(f"no figure title contains {', '.join(map(repr, titles))}; titles: {'; '.join(figures)}")
        for title in chosen:
            figures[title].show(renderer=renderer)


class RunResult(FigureViews, RunTables):
    """What one run measured. `tables` are tidy DataFrames; `claims` are its only conclusions.

    In a notebook it shows a compact summary; `figures()` and `show()` give the report's figures;
    `save(out)` writes the tables, run.json and report.html; `RunResult.load(folder)` reads them back.
    """

    def _repr_html_(self) -> str:
        from .notebook import claims_view, esc, run_line

        reason = self.meta.get("status_reason")
        note = f"<br><small>{esc(reason)}</small>" if reason and self.meta.get("status") != "complete" else ""
        return (
            f"<div><b>normprobe run</b>: {esc(run_line(self.meta))}{note}{claims_view(self.claims)}"
            "<small>.figures() gives the report's figures, .show() draws them, .tables holds the data.</small></div>"
        )

    def _sections(self) -> list:
        from .report import sections_for

        return sections_for(self)

    def to_html(self, path: str | Path, plotlyjs: str = "inline") -> Path:
        """Write the report page (figures and claims, self-contained unless `plotlyjs` says otherwise) to `path`."""
        import warnings

        from .report import render_report

        path = Path(path)
        with warnings.catch_warnings():
            # empty cells are NaN: numpy's "mean of empty slice" and the like are no news to the reader
            warnings.simplefilter("ignore", RuntimeWarning)
            page = render_report(self, plotlyjs=plotlyjs)
        write_atomic(path, page.encode("utf-8"))
        return path
