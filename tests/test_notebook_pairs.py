"""Committed notebooks: every .ipynb has the cells of its .py source (issue 14), outputs copied in by the runner."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

from segdepth.apps.notebook import outputs_into_pair, same_cells

NB = Path(__file__).resolve().parents[1] / "notebooks"
PAIRS = sorted(NB.glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("py", PAIRS, ids=[p.stem for p in PAIRS])
def test_each_committed_notebook_has_the_cells_of_its_source(py):
    assert same_cells(py, py.with_suffix(".ipynb")), f"{py.name} and its .ipynb differ: run `make sync`"


def _tiny_pair(tmp_path):
    py = tmp_path / "nb.py"
    py.write_text("# %% [markdown]\n# # title\n\n# %% tags=[\"parameters\"]\nx = 1\n\n# %%\nprint(x * 2)\n")
    nb = jupytext.read(py)
    nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    nbformat.write(nb, str(py.with_suffix(".ipynb")))
    return py


def test_outputs_go_into_the_pair_and_a_stale_run_is_refused(tmp_path):
    py = _tiny_pair(tmp_path)
    run = jupytext.read(py)
    run.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="2\n")]
    injected = nbformat.v4.new_code_cell("x = 3", metadata={"tags": ["injected-parameters"]})
    run.cells.insert(2, injected)
    executed = tmp_path / "executed.ipynb"
    nbformat.write(run, str(executed))
    pair = outputs_into_pair(py, executed, parameters={"x": 3})
    back = nbformat.read(str(pair), as_version=4)
    assert [c.cell_type for c in back.cells] == ["markdown", "code", "code"]  # no injected cell
    assert back.cells[2].outputs[0]["text"] == "2\n"
    assert back.metadata["segdepth_outputs"]["parameters"] == {"x": 3}
    assert same_cells(py, pair)

    py.write_text(py.read_text().replace("print(x * 2)", "print(x * 3)"))
    with pytest.raises(ValueError, match="cells differ"):
        outputs_into_pair(py, executed)
