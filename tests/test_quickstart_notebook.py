"""The example notebook, executed top to bottom in a real Jupyter kernel: a raising cell fails the suite."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import normprobe

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def _array(value):
    """Plotly ships numpy arrays as {dtype, bdata}: base64 of the raw bytes."""
    import base64

    import numpy as np

    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value, dtype=float)


def _outputs(cell, mime):
    return [o["data"][mime] for o in cell.get("outputs", []) if mime in o.get("data", {})]


def test_quickstart_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_quickstart_runs_in_a_kernel_of_this_interpreter(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    n_cells = len(nb.cells)
    # jupyter_client starts a kernelspec whose argv begins with "python" under sys.executable; check it did,
    # and that the kernel imports this checkout's normprobe (it inherits PYTHONPATH)
    nb.cells.insert(
        0,
        nbformat.v4.new_code_cell(
            f"import sys, normprobe\nassert sys.executable == {sys.executable!r}, sys.executable\n"
            f"assert normprobe.__file__ == {normprobe.__file__!r}, normprobe.__file__"
        ),
    )
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    cells = nb.cells[1:]
    assert len(cells) == n_cells and not list(tmp_path.iterdir())  # the notebook writes nothing
    by_source = {c.source.splitlines()[-1]: c for c in cells if c.cell_type == "code"}

    summary = _outputs(by_source["result  # a compact summary: model, tokens, status and the claims table"], "text/html")
    assert len(summary) == 1 and "model demo (GPT-2, 4 layers, float32)" in summary[0]
    assert "status complete" in summary[0] and "plotly" not in summary[0].lower()

    printed = "".join(o.get("text", "") for o in cells[3].outputs if o.get("name") == "stdout")
    assert "TqdmWarning" not in printed and all(
        "TqdmWarning" not in o.get("text", "") for c in cells for o in c.get("outputs", [])
    )
    header, *rows = printed.splitlines()[:5]
    assert header.split() == ["layer", "value", "ci_low", "ci_high", "verdict"] and len(rows) == 4  # one per layer
    drop = re.search(r"to the output: ([0-9.]+) nats \[([0-9.]+), ([0-9.]+)\], (holds|does not hold|undetermined)", printed)
    assert drop and float(drop[2]) <= float(drop[1]) <= float(drop[3])

    shown = _outputs(by_source['result.show("logit-lens loss")'], PLOTLY_MIME)
    assert len(shown) == 1 and shown[0]["layout"]["title"]["text"].startswith("Logit-lens loss")
    mine = _outputs(by_source['mine.figures()["cos(h_l, h_L) per layer"]'], PLOTLY_MIME)
    assert len(mine) == 1
    cosines = _array(mine[0]["data"][0]["y"])
    assert len(cosines) == 4 and ((cosines > -1) & (cosines <= 1)).all()  # one cosine per layer of the demo model

    comparison = _outputs(by_source["comparison"], "text/html")
    assert len(comparison) == 1 and ">bfloat16</th>" in comparison[0] and "<b>claims</b>, run by run" in comparison[0]
    difference = _outputs(by_source['comparison.show("difference")'], PLOTLY_MIME)
    assert len(difference) == 1 and "each run minus float32" in difference[0]["layout"]["title"]["text"]
