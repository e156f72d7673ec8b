"""Notebooks executed by papermill on tiny parameters; assertions are on the files they write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segdepth.notebook import run_notebook
from segdepth.store import open_dataset

NB = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
def test_01_data_generation(tmp_path):
    out = tmp_path / "sim"
    fig = tmp_path / "fig3.png"
    run_notebook(
        NB / "01_data_generation.py",
        tmp_path / "01.ipynb",
        {"preset": "tiny", "n_structures": 2, "n_defocus": 2, "workers": 0, "output": str(out),
         "figure": str(fig), "n_show": 2, "seed": 5},
    )
    ds = open_dataset(out, load=True)
    assert ds.sizes["sample"] == 4 and ds.sizes["y"] == 512
    assert json.loads(ds.attrs["parameters"])["seed"] == 5
    assert fig.exists() and fig.stat().st_size > 10_000
    executed = json.loads((tmp_path / "01.ipynb").read_text())
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in executed["cells"])


def test_notebooks_have_parameters_cell_and_pair():
    for py in sorted(NB.glob("[0-9][0-9]_*.py")):
        text = py.read_text()
        assert 'tags=["parameters"]' in text, py
        assert py.with_suffix(".ipynb").exists(), f"{py.name} has no paired .ipynb (run `make sync`)"
