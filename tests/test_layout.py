"""Package layout (issue 13): stage boundaries hold at import time, re-exports resolve, models ship as package data."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import segdepth

STAGES = ("physics", "data", "learn", "apps")


def _modules(stage: str) -> list[str]:
    package = importlib.import_module(f"segdepth.{stage}")
    return [f"segdepth.{stage}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]


def _loaded_after_import(*modules: str) -> dict[str, set[str]]:
    """Top-level packages in ``sys.modules`` after importing each module in its own fresh interpreter."""
    code = "import sys, {}; print(' '.join(sorted(k.split('.')[0] for k in sys.modules)))"
    procs = {m: subprocess.Popen([sys.executable, "-c", code.format(m)], stdout=subprocess.PIPE, text=True)
             for m in modules}
    out = {}
    for m, proc in procs.items():
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, m
        out[m] = set(stdout.split())
    return out


def test_the_probe_sees_what_a_module_loads():
    loaded = _loaded_after_import("segdepth.learn.model", "abtem")
    assert "torch" in loaded["segdepth.learn.model"] and "abtem" in loaded["abtem"]  # the checks below can fail


def test_every_stage_has_its_modules():
    physics = {m.rsplit(".", 1)[1] for m in _modules("physics")}
    assert physics >= {"structures", "simulation", "noise", "labels", "generate"}
    assert {m.rsplit(".", 1)[1] for m in _modules("learn")} >= {"model", "training", "inference", "metrics"}


def test_physics_and_data_never_load_torch():
    loaded = _loaded_after_import("segdepth", "segdepth.constants", *_modules("physics"), *_modules("data"))
    assert len(loaded) > 10
    assert [m for m, mods in loaded.items() if "torch" in mods] == []


def test_learning_never_loads_abtem():
    loaded = _loaded_after_import(*_modules("learn"))
    assert [m for m, mods in loaded.items() if "abtem" in mods] == []


@pytest.mark.parametrize("package", ["segdepth", *(f"segdepth.{s}" for s in STAGES)])
def test_every_re_exported_name_resolves(package):
    mod = importlib.import_module(package)
    assert mod.__all__ and sorted(mod.__all__) == sorted(set(mod.__all__))
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        mod.nonexistent  # noqa: B018


def test_top_level_names_are_the_stage_objects():
    from segdepth.learn.inference import predict
    from segdepth.physics.simulation import Microscope

    assert segdepth.predict is predict and segdepth.Microscope is Microscope
    assert "predict" in dir(segdepth) and "physics" in dir(segdepth)


def test_shipped_models_live_in_the_package():
    from segdepth.learn.inference import DEFAULT_MODEL, DEFAULT_ROTATED_MODEL, MODELS_DIR, REFERENCE_MODEL

    assert MODELS_DIR.parent == __import__("pathlib").Path(segdepth.__file__).parent
    for path in (DEFAULT_MODEL, REFERENCE_MODEL, DEFAULT_ROTATED_MODEL):
        assert path.is_file() and path.with_suffix(".json").is_file()
