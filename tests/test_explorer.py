"""The interactive explorer (issue 14): views, caches, noise, the widget and the notebook, at the tiny field."""

from __future__ import annotations

import numpy as np
import pytest

from segdepth.apps import explorer as ex
from segdepth.apps.explorer import CONTROLS, Explorer, ViewFigure, lens_for, plot_view

GPTS = 1024  # the tiny preset's field: 512 px image, 128 px label grid
BASE = dict(surface="flat", thickness=5, vacancy=0.0, overfocus=50.0, focal_spread=15.0, lam=2.5)


@pytest.fixture(scope="module")
def explorer():
    return Explorer(gpts=GPTS, seed=0)


@pytest.fixture
def counted(monkeypatch):
    """Count the multislice and lens calls the explorer makes (module-namespace wrappers)."""
    counts = {"multislice": 0, "image": 0}

    def wrap(name, key):
        real = getattr(ex, name)

        def counting(*args, **kwargs):
            counts[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(ex, name, counting)

    wrap("simulate_exit_wave", "multislice")
    wrap("image_exit_wave", "image")
    return counts


def test_view_has_the_image_and_label_grids(explorer):
    v = explorer.view(**BASE)
    assert v.noisy.shape == v.clean.shape == (512, 512)
    for name in ("depth_true", "estimate", "confidence"):
        assert v[name].dims == ("label_y", "label_x") and v[name].shape == (128, 128)
    assert np.allclose(np.diff(v.x), 0.053) and np.allclose(np.diff(v.label_x), 0.212)
    assert v.x.values[0] == pytest.approx(0.0265) and v.label_x.values[0] == pytest.approx(0.106)
    assert v.estimate.dtype == np.uint8 and v.depth_true.dtype == np.uint8
    assert 0 <= float(v.confidence.min()) and float(v.confidence.max()) <= 1
    assert 1 <= int(v.depth_true.max()) <= 5  # at most the bulk thickness (no roughness; edges thin over a wedge)
    assert float(v.clean.sel(x=slice(0, 5)).mean()) == pytest.approx(1.0, abs=0.05)  # vacuum = 1
    a = v.attrs
    assert a["n_columns"] == v.sizes["column"] > 0 and 0 <= a["column_exact"] <= a["column_within_one"] <= 1
    assert a["lam"] == 2.5 and a["surface"] == "flat" and a["warnings"] == ""
    # the column table agrees with the true map at the column centres
    iy = np.rint(v.column_y.values / 0.212 - 0.5).astype(int)
    ix = np.rint(v.column_x.values / 0.212 - 0.5).astype(int)
    assert np.array_equal(v.depth_true.values[iy, ix], v.column_true.values)
    assert ((v.column_estimate == v.column_true).mean()) == pytest.approx(a["column_exact"])


def test_a_new_dose_only_renoises_and_predicts(explorer, counted):
    explorer.view(**BASE)
    calls = dict(explorer.calls)
    v = explorer.view(**{**BASE, "lam": 10.0})
    assert counted == {"multislice": 0, "image": 0}
    assert v.attrs["computed"] == "predict" and explorer.calls["predict"] == calls["predict"] + 1
    explorer.view(**{**BASE, "lam": 10.0, "noise_seed": 3})
    assert counted == {"multislice": 0, "image": 0}


def test_a_new_lens_reimages_without_multislice(explorer, counted):
    explorer.view(**BASE)
    v = explorer.view(**{**BASE, "focal_spread": 30.0})
    assert counted == {"multislice": 0, "image": 1} and v.attrs["computed"] == "image predict"
    explorer.view(**{**BASE, "focal_spread": 30.0, "overfocus": 80.0})
    assert counted == {"multislice": 0, "image": 2}
    explorer.view(**BASE)  # back to a cached lens
    assert counted == {"multislice": 0, "image": 2}


def test_a_new_particle_runs_multislice(explorer, counted):
    explorer.view(**BASE)
    v = explorer.view(**{**BASE, "thickness": 7})
    assert counted == {"multislice": 1, "image": 1} and v.attrs["computed"] == "multislice image predict"
    assert int(v.column_true.sum()) > int(explorer.view(**BASE).column_true.sum()) and v.attrs["time_multislice"] > 0
    explorer.view(**{**BASE, "thickness": 7, "lam": 5.0})
    assert counted == {"multislice": 1, "image": 1}


def test_a_small_cache_evicts_the_oldest_particle(counted):
    e = Explorer(gpts=GPTS, seed=0, cache_size=1)
    a = {**BASE, "surface": "faceted", "thickness": 3}
    e.view(**a)
    e.view(**{**a, "thickness": 4})
    e.view(**a)
    assert counted["multislice"] == 3 and len(e._particles) == 1


def test_more_dose_gives_less_noise(explorer):
    rms = []
    for lam in (1.0, 10.0, 100.0):
        v = explorer.view(**{**BASE, "lam": lam})
        rms.append(float(np.sqrt(((v.noisy - v.clean) ** 2).mean())))
    assert rms[0] > rms[1] > rms[2]
    assert rms[0] / rms[1] == pytest.approx(np.sqrt(10), rel=0.1)  # Var = c / lambda


def test_noise_is_reproducible_and_seeded(explorer):
    a = explorer.view(**BASE, noise_seed=1)
    b = explorer.view(**BASE, noise_seed=1)
    c = explorer.view(**BASE, noise_seed=2)
    assert np.array_equal(a.noisy, b.noisy) and np.array_equal(a.estimate, b.estimate)
    assert not np.array_equal(a.noisy, c.noisy)


def test_vacancies_remove_oxygen_from_the_same_particle(explorer):
    full = explorer.view(**BASE)
    holey = explorer.view(**{**BASE, "vacancy": 0.3})

    def table(v):
        return {(round(float(x), 3), round(float(y), 3)): (int(z), int(n)) for x, y, z, n in
                zip(v.column_x.values, v.column_y.values, v.column_Z.values, v.column_true.values)}

    a, b = table(full), table(holey)
    assert set(b) <= set(a)  # the same sites; an O column can lose all its atoms
    assert all(a[k][0] == 8 for k in set(a) - set(b))
    assert all(b[k][1] == a[k][1] for k in b if b[k][0] == 58)  # Ce untouched
    assert all(b[k][1] <= a[k][1] for k in b)
    assert sum(n for z, n in b.values() if z == 8) < sum(n for z, n in a.values() if z == 8)


def test_a_dose_far_below_training_is_reported_not_raised(explorer):
    v = explorer.view(**{**BASE, "lam": 0.02})
    assert "trained" in v.attrs["warnings"]


@pytest.mark.parametrize("bad, match", [
    ({"surface": "cube"}, "surface"), ({"thickness": 0}, "thickness"), ({"vacancy": 1.5}, "vacancy"),
    ({"lam": 0.0}, "lam"), ({"overfocus": -10.0}, "overfocus"), ({"focal_spread": -1.0}, "focal_spread"),
])
def test_bad_parameters_are_refused(explorer, bad, match):
    with pytest.raises(ValueError, match=match):
        explorer.view(**{**BASE, **bad})


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="no room"):
        Explorer(gpts=800)
    with pytest.raises(ValueError, match="divisible"):
        Explorer(gpts=1028)
    with pytest.raises(ValueError, match="both"):
        Explorer(model=object())


def test_lens_samples_grow_with_the_focal_spread():
    assert lens_for(0.0).defocus_samples == 1
    assert lens_for(15.0).defocus_samples == 7
    assert lens_for(45.0).defocus_samples == 21 and lens_for(45.0).defocus_spread == 45.0


def test_figure_has_four_panels_and_redraws_in_place(explorer):
    v = explorer.view(**BASE)
    fig = plot_view(v)
    assert len([ax for ax in fig.axes if ax.images]) == 4
    canvas = ViewFigure(v)
    first = canvas.png()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    w = explorer.view(**{**BASE, "lam": 50.0})
    assert canvas.update(w) and canvas.png() != first
    assert "lambda = 50" in canvas.axes[0].get_title()


def test_widget_builds_and_the_dose_slider_updates_the_view(explorer):
    pytest.importorskip("ipywidgets", reason="ipywidgets is not installed (pip install segdepth[explore])")
    box = explorer.widgets(**{k: v for k, v in BASE.items() if k in CONTROLS})
    assert set(explorer.controls) == set(CONTROLS)
    assert explorer.last_view.attrs["lam"] == pytest.approx(2.5, rel=1e-3)
    png = explorer.image_widget.value
    assert png[:4] == b"\x89PNG" and "columns exact" in explorer.status_widget.value
    explorer.controls["lam"].value = 10.0
    assert explorer.last_view.attrs["lam"] == pytest.approx(10.0, rel=1e-3)
    assert explorer.image_widget.value != png
    explorer.controls["focal_spread"].value = 25.0
    assert explorer.last_view.attrs["focal_spread"] == 25.0 and explorer.last_view.attrs["computed"] == "image predict"
    assert box.children  # a VBox of the controls, the figure and the status line
    with pytest.raises(ValueError, match="unknown controls"):
        explorer.widgets(dose=3)


@pytest.mark.slow
def test_notebook_runs_headless_under_papermill(tmp_path):
    import nbformat

    from segdepth.apps.notebook import REPO, run_notebook

    out = run_notebook(REPO / "notebooks" / "08_explorer.py", tmp_path / "08.ipynb",
                       {"gpts": GPTS, "figure": str(tmp_path / "explorer.png")})
    nb = nbformat.read(str(out), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the static figure
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)  # the explorer
    text = "".join(o.get("text", "") for o in outputs)
    assert "new dose" in text and "ran: predict " in text and "ran: multislice image predict" in text
    assert (tmp_path / "explorer.png").stat().st_size > 0
