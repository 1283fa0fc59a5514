"""examples/quickstart.ipynb runs from top to bottom in a fresh Jupyter kernel (nbclient), as a reader
runs it: `fedstep.simulate` trains 3 digits clients for 2 rounds, the history shows, the plot draws."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def _text(output: dict) -> str:
    if output.get("output_type") == "stream":
        return output["text"]
    return output.get("data", {}).get("text/plain", "")


def test_the_quickstart_notebook_simulates_three_clients_shows_the_history_and_plots_accuracy(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit it clean"
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors, errors
    table = next(o for o in code[1].outputs if o.output_type == "execute_result")
    html = table["data"]["text/html"]
    assert "heldout_accuracy" in html and html.count("<tr>") == 3  # the header and rounds 1 and 2
    printed = "".join(_text(o) for o in code[2].outputs)
    assert "stopped: max_rounds" in printed and "final global model on the held-out set: accuracy 0." in printed
    assert any("image/png" in o.get("data", {}) for o in code[3].outputs), "the accuracy plot"
    summary = json.loads((tmp_path / "runs" / "quickstart" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["rounds"][1]["heldout_accuracy"] > summary["rounds"][0]["heldout_accuracy"]
