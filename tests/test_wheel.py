"""The package installs as a wheel and finds its shipped model from there (issue 13)."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_predicts(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "segdepth", src / "segdepth", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(src)], check=True, capture_output=True)
    (wheel,) = dist.glob("segdepth-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for stem in ("segdepth_robust_wise_base8_bin4", "segdepth_robust_base8_bin4"):  # the default, the first robust
        assert f"segdepth/models/{stem}.safetensors" in names and f"segdepth/models/{stem}.json" in names
    assert "segdepth/physics/simulation.py" in names and "segdepth/learn/inference.py" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    # the dependencies come from this interpreter's site-packages (a path entry: its .pth files, among them
    # the editable install of the clone, are not processed, so only the wheel's segdepth can be imported)
    target = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                            capture_output=True, text=True).stdout.strip()
    Path(target, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    work = tmp_path / "work"
    work.mkdir()
    y, x = np.mgrid[0:256, 0:256] * 0.053
    image = 1 - 0.3 * np.exp(-((np.sin(np.pi * x / 3.826)) ** 2 + np.sin(np.pi * y / 5.411) ** 2) / 0.05)
    np.save(work / "small.npy", image.astype(np.float32))
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([str(py), "-c", "import segdepth; print(segdepth.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve())
    run = subprocess.run([str(venv / "bin" / "segdepth"), "predict", "small.npy", "--pixel-size", "0.053",
                          "--lam", "2.5", "--out", "depth.nc"], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    with xr.open_dataset(work / "depth.nc") as ds:
        assert ds["depth"].shape[-2:] == (64, 64)
        assert ds.attrs["model"] == "default"  # the shipped model, read from the installed package
        assert 0 <= int(ds["depth"].min()) <= int(ds["depth"].max()) <= 10
