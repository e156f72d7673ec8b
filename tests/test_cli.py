from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import xarray as xr

from segdepth.apps.cli import main
from segdepth.learn.model import UNet
from segdepth.learn.modelio import save_model

ROOT = Path(__file__).resolve().parents[1]
MODEL_PIXEL = 0.1  # [A]


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "segdepth", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny random-weight model and valid inputs in every simple format."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = UNet(n_scales=1, channels=(2, 4), head_channels=(4, 4), median_size=1)
    save_model(model, root / "tiny.safetensors", {"sampling": MODEL_PIXEL, "label_factor": 4, "lam": 5.0})
    torch.manual_seed(1)
    other = UNet(n_scales=1, channels=(2, 4), head_channels=(4, 4), median_size=1)
    save_model(other, root / "other.safetensors", {"sampling": MODEL_PIXEL, "label_factor": 4, "lam": 5.0})
    save_model(other, root / "coarse.safetensors", {"sampling": 2 * MODEL_PIXEL, "label_factor": 4, "lam": 5.0})
    rng = np.random.default_rng(0)
    image = (rng.poisson(5.0, (64, 48)) / 5.0 + 0.05).astype(np.float32)
    np.save(root / "image.npy", image)
    np.save(root / "stack.npy", np.stack([image, image[::-1]]))
    tifffile.imwrite(root / "image.tif", image, imagej=True, resolution=(100, 100), metadata={"unit": "nm"})
    x = xr.Variable("x", (np.arange(48) + 0.5) * MODEL_PIXEL, {"units": "A"})
    xr.Dataset({"image": (("y", "x"), image)}, coords={"x": x}).to_netcdf(root / "image.nc")
    return root


def test_predict_subprocess_writes_netcdf(workdir):
    out = workdir / "stack_out.nc"
    result = run_cli(
        "predict", "stack.npy", "--out", out, "--model", "tiny.safetensors", "--pixel-size", MODEL_PIXEL,
        "--probabilities", "--tile", 32, "--overlap", 16, "--no-check", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    with xr.open_dataset(out) as ds:
        assert ds["depth"].shape == (2, 16, 12) and ds["depth"].dtype == np.uint8
        assert ds["probability"].dims == ("frame", "depth_class", "y", "x")
        np.testing.assert_allclose(ds["probability"].sum("depth_class"), 1, atol=1e-5)
        np.testing.assert_allclose(ds["x"].values, (np.arange(12) + 0.5) * 4 * MODEL_PIXEL)
        assert "model_card" in ds.attrs and "arguments" in ds.attrs


@pytest.mark.parametrize("name", ["image.tif", "image.nc"])
def test_predict_in_process_reads_calibrated_formats(workdir, name, capsys):
    out = workdir / f"{name}.out.nc"
    model = str(workdir / "tiny.safetensors")
    assert main(["predict", str(workdir / name), "--out", str(out), "--model", model, "--no-check"]) == 0
    with xr.open_dataset(out) as ds:
        assert ds["depth"].shape == (1, 16, 12)
        assert ds.attrs["pixel_size"] == pytest.approx(MODEL_PIXEL)  # taken from the file
    assert "wrote" in capsys.readouterr().out


def _bad_cases(root: Path) -> list[tuple[str, list[str], str]]:
    rng = np.random.default_rng(1)
    image = (rng.random((32, 32)) + 0.1).astype(np.float32)
    model = ["--model", "tiny.safetensors"]
    px = ["--pixel-size", "0.1"]

    def npy(name, array):
        np.save(root / name, array)
        return name

    (root / "truncated.npy").write_bytes((root / "image.npy").read_bytes()[:150])
    (root / "corrupt.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    (root / "corrupt.dm3").write_bytes(b"garbage" * 20)
    (root / "image.jpg").write_bytes(b"\xff\xd8\xff")
    (root / "image.png").write_bytes(b"\x89PNG\r\n")
    (root / "a_directory.npy").mkdir(exist_ok=True)
    (root / "corrupt.safetensors").write_bytes(b"garbage")
    (root / "corrupt.json").write_text((root / "tiny.json").read_text())
    nan, inf = image.copy(), image.copy()
    nan[1, 1], inf[2, 2] = np.nan, -np.inf
    colour = np.stack([image, image, 0.5 * image], axis=-1)
    cases = [
        ("missing input", ["missing.npy"], "missing.npy: no such file"),
        ("directory", ["a_directory.npy"], "is a directory"),
        ("extension", ["image.jpg"], "unsupported file type '.jpg'"),
        ("truncated png", ["image.png"], "corrupt or truncated"),
        ("truncated", ["truncated.npy"], "corrupt or truncated"),
        ("corrupt tiff", ["corrupt.tif"], "corrupt or truncated"),
        ("corrupt dm3", ["corrupt.dm3"], "corrupt or truncated"),
        ("non-numeric", [npy("text.npy", np.array([["a", "b"]]))], "non-numeric"),
        ("complex", [npy("complex.npy", image.astype(complex))], "complex"),
        ("empty", [npy("empty.npy", np.zeros((0, 4), np.float32))], "empty"),
        ("1-D", [npy("line.npy", np.ones(16))], "expected a 2-D image"),
        ("4-D", [npy("4d.npy", np.ones((2, 2, 8, 8)))], "expected a 2-D image"),
        ("NaN", [npy("nan.npy", nan)], "contains NaN"),
        ("inf", [npy("inf.npy", inf)], "infinite"),
        ("all zero", [npy("zero.npy", 0 * image)], "all zero"),
        ("all negative", [npy("negative.npy", -image)], "all negative"),
        ("colour", [npy("colour.npy", colour)], "RGB"),
        ("no pixel size", ["image.npy", *model], "pass it with --pixel-size"),
        ("zero pixel size", ["image.npy", "--pixel-size", "0"], "--pixel-size must be finite and > 0"),
        ("negative pixel size", ["image.npy", "--pixel-size=-0.1"], "--pixel-size must be finite and > 0"),
        ("nan pixel size", ["image.npy", "--pixel-size", "nan"], "--pixel-size must be finite and > 0"),
        ("text pixel size", ["image.npy", "--pixel-size", "abc"], "--pixel-size must be a positive number"),
        ("bad lambda", ["image.npy", *px, "--lambda", "-2"], "--lambda must be finite and > 0"),
        ("bad tile", ["image.npy", *px, "--tile", "ten"], "invalid int value"),
        ("bad keep-confident", ["image.npy", *px, "--keep-confident", "1.5"],
         "--keep-confident must be a probability in (0, 1], got 1.5"),
        ("bad keep-connected", ["image.npy", *px, "--keep-connected", "often"],
         "--keep-connected must be a probability in (0, 1] or 'none', got often"),
        ("zero keep-connected", ["image.npy", *px, "--keep-connected", "0"],
         "--keep-connected must be a probability in (0, 1] or 'none', got 0"),
        ("bad reach", ["image.npy", *px, "--reach", "far"], "--reach must be a distance >= 0 [A] or 'none', got far"),
        ("negative reach", ["image.npy", *px, "--reach", "-2"],
         "--reach must be a distance >= 0 [A] or 'none', got -2"),
        ("zero refute radius", ["image.npy", *px, "--refute-radius", "0"],
         "--refute-radius must be a distance > 0 [A] or 'none', got 0"),
        ("bad beam energy", ["image.npy", *px, "--beam-energy", "300kV"], "--beam-energy must be a positive number"),
        ("missing model", ["image.npy", *px, "--model", "nowhere.safetensors"], "model file not found"),
        ("no lattice", [npy("noise.npy", image), *model, "--calibrate"], "noise.npy: calibration failed"),
        ("both calibrations", ["image.npy", *px, "--calibrate"], "exclude each other"),
        ("frame out of range", ["stack.npy", *px, "--frames", "5"], "frame 5 is out of range"),
        ("bad crop", ["image.npy", *px, "--crop", "0:10"], "crop must look like"),
        ("empty crop", ["image.npy", *px, "--crop", "50:,:"], "is empty"),
        ("4-D movie", [npy("4d_movie.npy", np.ones((2, 3, 16, 16))), *px], "expected a 2-D image"),
        ("unknown phase", ["image.npy", "--calibrate", "Au"], "unknown phase"),
        ("corrupt model", ["image.npy", *px, "--model", "corrupt.safetensors"], "could not read weights"),
        ("reference and model", ["image.npy", *px, "--reference", *model], "--reference and --model exclude"),
        ("rotated model without tta", ["image.npy", *px, *model, "--rotated-model", "tiny.safetensors", "--no-tta"],
         "--rotated-model needs the validity check's 180-degree pass"),
        ("rotated model without check", ["image.npy", *px, *model, "--rotated-model", "tiny.safetensors",
                                         "--no-check"], "--rotated-model needs the validity check's 180-degree pass"),
        ("missing rotated model", ["image.npy", *px, *model, "--rotated-model", "nowhere.safetensors"],
         "nowhere.safetensors: rotated model file not found"),
        ("rotated model on another grid", ["image.npy", *px, *model, "--rotated-model", "coarse.safetensors"],
         "predicts on another grid: sampling 0.2 in its card, 0.1 in the model's"),
    ]
    cases = [(name, ["predict", args[0], "--out", "out/OUT.nc", *args[1:]], message) for name, args, message in cases]
    (root / "out").mkdir(exist_ok=True)
    no_dir = ["predict", "image.npy", *px, "--out", "nodir/OUT.nc"]
    cases.append(("output directory missing", no_dir, "nodir: output directory does not exist"))
    cases.append(("no output", ["predict", "image.npy"], "required: --out"))
    ok = ["predict", "image.npy", *px, *model, "--out", "out/OUT.nc"]
    cases += [  # a preview that could not be written: found before any prediction, nothing written
        ("preview directory missing", [*ok, "--preview", "nodir/p.png"], "--preview nodir/p.png: directory nodir"),
        ("preview suffix", [*ok, "--preview", "out/p.xyz"], "matplotlib cannot write '.xyz' files; use one of"),
        ("preview without suffix", [*ok, "--preview", "out/p"], "matplotlib cannot write a file without a suffix"),
        ("preview is a directory", [*ok, "--preview", "out"], "--preview out: is a directory"),
        ("preview is a netCDF", [*ok, "--preview", "out/OUT.nc"], "matplotlib cannot write '.nc'"),
        ("preview is the output", [*ok[:-1], "out/same.png", "--preview", "out/same.png"], "name the same file"),
        ("preview frame", ["predict", "stack.npy", *ok[2:], "--preview", "out/p.png", "--preview-frame", "5"],
         "--preview-frame 5 is not among the predicted frames (0-1)"),
        ("preview frame alone", [*ok, "--preview-frame", "0"], "--preview-frame needs --preview"),
    ]
    return cases


def test_bad_inputs_exit_with_one_line(workdir):
    cases = _bad_cases(workdir)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: run_cli(*case[1], cwd=workdir), cases))
    for (name, _, message), result in zip(cases, results, strict=True):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (name, result.stderr)
        assert "Traceback" not in result.stderr, name
        assert len(lines) == 1 and lines[0].startswith("segdepth: error: "), (name, result.stderr)
        assert message in lines[0], (name, lines[0])
    assert not (workdir / "nodir").exists()
    assert [p.name for p in (workdir / "out").iterdir()] == []  # no OUT.nc, no preview, no temp file


def test_default_model_missing_is_a_clean_error(workdir, monkeypatch, capsys):
    import segdepth.learn.inference

    monkeypatch.setattr(segdepth.learn.inference, "DEFAULT_MODEL", Path("data/models/absent.safetensors"))
    out = workdir / "default.nc"
    assert main(["predict", str(workdir / "image.npy"), "--pixel-size", "0.1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segdepth: error: default model") and err.count("\n") == 1 and "--model" in err
    assert not out.exists()


def test_reference_path_is_the_paper_model_in_eager_float32(workdir, capsys):
    """--reference: the shipped paper-layout model, unoptimised; the default: the fast (binned-input) model."""
    import json

    from segdepth.data.io import read_image
    from segdepth.learn.inference import load_default_model, predict

    outs = {}
    for name, extra in (("reference", ["--reference"]), ("default", [])):
        outs[name] = workdir / f"{name}.nc"
        args = ["predict", str(workdir / "stack.npy"), "--pixel-size", "0.1", "--out", str(outs[name]), "--no-check",
                *extra]
        assert main(args) == 0, capsys.readouterr().err
    image = read_image(workdir / "stack.npy", pixel_size=0.1)
    model, card = load_default_model(reference=True)
    expected = predict(image, model, card, fast=False)
    with xr.open_dataset(outs["reference"]) as ref, xr.open_dataset(outs["default"]) as fast:
        assert ref.attrs["model"] == "reference" and json.loads(ref.attrs["arguments"])["fast"] is False
        assert json.loads(ref.attrs["model_card"])["label_factor"] == 4
        np.testing.assert_array_equal(ref["depth"].values, expected["depth"].values)
        assert json.loads(fast.attrs["model_card"])["input_binning"] == 4
        # the same label grid up to rounding of the resampled sizes (6.4 A at 0.212 A vs 4 x 0.053 A)
        assert abs(fast.sizes["y"] - ref.sizes["y"]) <= 1 and fast.sizes["x"] == ref.sizes["x"]
        assert fast.attrs["label_pixel_size"] == pytest.approx(ref.attrs["label_pixel_size"], rel=0.05)


MOVIE = ROOT / "data" / "raw" / "ptceo2_udvd_40frames.gif"


@pytest.mark.filterwarnings("default:the image dose:UserWarning")  # shown by the command line, as a user sees it
def test_predict_real_movie_streams_calibrated_frames(workdir, capsys):
    """The real GIF: left half, 3 frames read in chunks of 2, calibrated from the lattice, lambda estimated."""
    out = workdir / "movie.nc"
    args = ["predict", str(MOVIE), "--out", str(out), "--model", str(workdir / "tiny.safetensors"),
            "--crop", "0:180,:", "--frames", "0:3", "--chunk", "2", "--calibrate", "CeO2,Pt", "--lambda", "auto",
            "--probabilities", "--tile", "256", "--no-progress", "--no-check"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "calibrated pixel size" in err and "estimated dose" in err
    assert "segdepth: warning: the image dose is 1.1" in err  # the tiny model was trained at lambda 5: one line
    from segdepth.data.io import read_image
    from segdepth.learn.inference import predict
    from segdepth.learn.modelio import load_model

    with xr.open_dataset(out) as ds:
        assert ds["depth"].shape[0] == 3 and list(ds["frame"].values) == [0, 1, 2]
        assert ds.attrs["calibrated_pixel_size"] == pytest.approx(0.201, abs=0.006)
        assert 1 < ds.attrs["lambda_estimated"] < 20
        # the streamed file equals the in-memory prediction of the same frames
        image = read_image(MOVIE, frames="0:3", crop="0:180,:", pixel_size=ds.attrs["calibrated_pixel_size"])
        model, card = load_model(workdir / "tiny.safetensors")
        ref = predict(image, model, card, tile=256, return_probabilities=True)
        np.testing.assert_array_equal(ds["depth"].values, ref["depth"].values)
        np.testing.assert_allclose(ds["probability"].values, ref["probability"].values, atol=1e-6)
        np.testing.assert_allclose(ds["x"].values, ref["x"].values)
    assert not [p for p in workdir.iterdir() if p.name.startswith(".movie.nc")]  # no temporary file left


def test_predict_checks_where_the_estimate_applies_by_default(workdir, capsys):
    """Default --check on the real movie: vacuum at the top reads 0, valid/valid_reason written, one summary line;
    the preview of frame 1 hatches what was not vouched for; one 'wrote' line per file."""
    from PIL import Image

    out, preview = workdir / "checked.nc", workdir / "checked.png"
    args = ["predict", str(MOVIE), "--out", str(out), "--crop", "0:180,:", "--frames", "0:3", "--pixel-size",
            "0.2006", "--lambda", "4", "--no-progress", "--no-tta", "--lattice-average", "3",
            "--preview", str(preview), "--preview-frame", "1"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("segdepth: could not vouch for"), lines
    # the regime check scores the CeO2 support as underfocused (README, "The contrast regime"): one warning, no flag
    assert "segdepth: warning: 3 of 3 frames (0, 1, 2) look underfocused to the regime model" in captured.err
    assert lines[1] == (f"segdepth: wrote {out}: depth, confidence, depth_low, depth_high, crystal, valid, "
                        "valid_reason, lattice_score, ceo2_score, disagreement, underfocus_score, quasi_score for 3 "
                        "frames of 170 x 170 label pixels at 0.2124 A"), lines
    assert lines[2] == (f"segdepth: wrote {preview}: input, depth (pixels not vouched for hatched), confidence "
                        "of frame 1"), lines
    with Image.open(preview) as png:
        assert png.format == "PNG" and png.mode in ("RGB", "RGBA") and png.width > 1000 and png.height > 400
        assert np.asarray(png.convert("L")).std() > 10  # not a blank page
    assert not [p for p in workdir.iterdir() if p.name.startswith(".checked.png")]  # no temporary file left
    with xr.open_dataset(out) as ds:
        for name in ("valid", "valid_reason", "crystal", "lattice_score", "ceo2_score", "disagreement", "depth_low",
                     "depth_high"):
            assert ds[name].shape == ds["depth"].shape, name
        low, depth, high = (ds[name].values for name in ("depth_low", "depth", "depth_high"))
        assert ((low <= depth) & (depth <= high)).all()  # the 90 % set holds the most probable count
        one_pass = json.loads(ds.attrs["model_card"])["count_sets"]["mass"]["one_pass"]
        assert ds.attrs["count_set_mass"] == one_pass > 0.9  # --no-tta: the mass calibrated for one pass
        assert (high - low).max() >= 1  # and is wider than one count somewhere at this dose
        band = ds["y"] < float(ds["y"][0]) + 5  # the vacuum band at the top of the field
        vacuum = (ds["depth"].sel(y=band) == 0).mean(("y", "x"))
        assert float(vacuum.min()) >= 0.98, vacuum.values  # issue 12's target, in every frame
        assert float((ds["valid_reason"].sel(y=band) == 1).mean()) >= 0.9  # most of it: vacuum, beyond the margin
        assert float(ds["valid"].sel(y=band).mean()) >= 0.98
        assert int(ds["valid"].min()) == 0 and int(ds["valid"].max()) == 1  # the Pt particle is not valid
        assert np.isnan(ds["disagreement"]).all()  # --no-tta
        assert ds["underfocus_score"].dims == ("frame",) and (ds["underfocus_score"] > 0.5).all()
        assert not (ds["valid_reason"] == 6).any() and ds.attrs["validity_regime"] == "warn"
        assert ds.attrs["validity_keep_connected"] == 0.5 and ds.attrs["validity_bridge"] == 2.0  # the defaults
    plain = workdir / "plain.nc"
    args = ["predict", str(MOVIE), "--out", str(plain), "--crop", "0:180,:", "--frames", "0", "--pixel-size",
            "0.2006", "--no-progress", "--no-tta", "--lattice-average", "1", "--keep-connected", "none",
            "--reach", "1.5", "--refute-radius", "5"]
    assert main(args) == 0, capsys.readouterr().err
    with xr.open_dataset(plain) as ds:
        assert ds.attrs["validity_keep_connected"] == -1.0  # no growth
        assert ds.attrs["validity_reach"] == 1.5 and ds.attrs["validity_refute_radius"] == 5.0


def test_rotated_model_makes_the_180_degree_pass(workdir, capsys):
    """--rotated-model: the probabilities are the two models' mean (not the model's own two passes), recorded in the
    output; a finished chunk of a run with one second model is not reused for a run with another."""
    frame = np.load(workdir / "image.npy")
    np.save(workdir / "square.npy", np.tile(frame, (3, 4))[:160, :160])  # 16 A: larger than the lattice window
    base = ["predict", str(workdir / "square.npy"), "--pixel-size", str(MODEL_PIXEL), "--model",
            str(workdir / "tiny.safetensors"), "--probabilities", "--no-progress", "--tile", "64", "--overlap", "16",
            "--lattice-average", "1"]
    runs = {}
    for name, extra in (("same", []), ("twin", ["--rotated-model", str(workdir / "tiny.safetensors")]),
                        ("pair", ["--rotated-model", str(workdir / "other.safetensors")])):
        out = workdir / f"rotated_{name}.nc"
        assert main([*base, "--out", str(out), *extra]) == 0, capsys.readouterr().err
        runs[name] = xr.load_dataset(out)
    np.testing.assert_allclose(runs["twin"]["probability"], runs["same"]["probability"], atol=1e-6)
    assert not np.allclose(runs["pair"]["probability"], runs["same"]["probability"], atol=1e-4)
    assert runs["pair"].attrs["rotated_model"].endswith("other.safetensors")
    assert '"two_models": true' in runs["pair"].attrs["validity_arguments"]
    assert "rotated_model" not in runs["same"].attrs

    from segdepth.learn.inference import _parts_key
    from segdepth.learn.modelio import load_model

    first, second = (load_model(workdir / f"{n}.safetensors")[0] for n in ("tiny", "other"))
    card = {"sampling": MODEL_PIXEL}
    keys = {_parts_key(card, 1, None, {"tta": True, "rotated_model": m, "rotated_card": card}, {})
            for m in (first, second, first)}
    assert len(keys) == 2  # the same second model gives the same key, another one another


def test_default_model_checks_with_its_second_model(workdir, capsys):
    """Without --model the 180-degree pass is the default's second model (DEFAULT_ROTATED_MODEL); 'same' and
    --model use one model for both passes."""
    import json

    runs = {}
    for name, extra in (("default", []), ("same", ["--rotated-model", "same"])):
        out = workdir / f"second_{name}.nc"
        args = ["predict", str(MOVIE), "--out", str(out), "--crop", "0:180,:", "--frames", "0", "--pixel-size",
                "0.2006", "--lambda", "4", "--no-progress", "--lattice-average", "1", "--probabilities", *extra]
        assert main(args) == 0, capsys.readouterr().err
        runs[name] = xr.load_dataset(out)
    assert runs["default"].attrs["rotated_model"] == "default"
    assert json.loads(runs["default"].attrs["validity_arguments"])["two_models"] is True
    assert "rotated_model" not in runs["same"].attrs
    assert json.loads(runs["same"].attrs["validity_arguments"])["two_models"] is False
    # the count sets: the mass calibrated for the shipped pair; the probabilities at their word for 'same'
    mass = json.loads(runs["default"].attrs["model_card"])["count_sets"]["mass"]["with_second_model"]
    assert runs["default"].attrs["count_set_mass"] == mass > 0.9
    assert runs["default"]["depth_high"].attrs["set_mass"] == mass
    assert runs["same"].attrs["count_set_mass"] == 0.9
    # the plain pass is shared, so the two estimates differ only by the second pass: somewhere, not everywhere
    diff = np.abs(runs["default"]["probability"] - runs["same"]["probability"]).max("depth_class")
    assert 0.01 < float(diff.max()) and float((diff < 0.05).mean()) > 0.5


def test_preview_of_a_streamed_movie_comes_from_its_chunk(workdir, monkeypatch, capsys):
    """--chunk: the preview frame (in the last chunk) is taken from the chunk as it is read, not read again."""
    from PIL import Image

    import segdepth.apps.plotting as plotting
    import segdepth.data.io as io

    rng = np.random.default_rng(3)
    stack = (rng.poisson(5.0, (51, 32, 32)) / 5.0 + 0.05).astype(np.float32)
    np.save(workdir / "movie51.npy", stack)
    read_image, calls, shown = io.read_image, [], []
    plot_preview = plotting.plot_preview

    def recording_read_image(path, **kwargs):
        calls.append(kwargs["frames"])
        return read_image(path, **kwargs)

    def recording_plot_preview(image, result, **kwargs):
        shown.append((image, result, kwargs))
        return plot_preview(image, result, **kwargs)

    monkeypatch.setattr(io, "read_image", recording_read_image)
    monkeypatch.setattr(plotting, "plot_preview", recording_plot_preview)
    out, preview = workdir / "movie51.nc", workdir / "movie51.png"
    args = ["predict", str(workdir / "movie51.npy"), "--out", str(out), "--model", str(workdir / "tiny.safetensors"),
            "--pixel-size", str(MODEL_PIXEL), "--chunk", "20", "--no-check", "--preview", str(preview),
            "--preview-frame", "50"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert calls == [[0], list(range(50)), list(range(40, 51))]  # no extra read for the preview
    (image, result, kwargs), = shown
    assert kwargs["frame"] == 50 and image["frame"].values.tolist() == [50]
    np.testing.assert_array_equal(image.values[0], stack[50])
    with xr.open_dataset(out) as ds:
        np.testing.assert_array_equal(result["depth"].values[0], ds["depth"].sel(frame=50).values)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"segdepth: wrote {out}: depth, confidence for 51 frames of 8 x 8 label pixels at 0.4 A",
        f"segdepth: wrote {preview}: input, depth, confidence of frame 50",
    ]
    with Image.open(preview) as png:
        assert png.format == "PNG" and png.width > 500 and png.height > 200

    # a resumed run that skips every chunk reads the preview frame alone
    import segdepth.data.store as store

    atomic_write = store.atomic_write

    def failing_final_write(path, *a, **kw):  # the chunks are written, assembling the file fails
        if Path(path) == out:
            raise OSError("disk full")
        return atomic_write(path, *a, **kw)

    out.unlink()
    preview.unlink()
    monkeypatch.setattr(store, "atomic_write", failing_final_write)
    assert main(args) == 2 and "disk full" in capsys.readouterr().err
    assert not out.exists() and not preview.exists()
    monkeypatch.setattr(store, "atomic_write", atomic_write)
    calls.clear()
    shown.clear()
    assert main(args) == 0, capsys.readouterr().err
    assert calls == [[0], list(range(50)), [50]]  # the chunks are not read again, the preview frame is
    np.testing.assert_array_equal(shown[0][0].values[0], stack[50])
    assert preview.is_file() and len(capsys.readouterr().out.splitlines()) == 2


def test_check_needs_a_field_larger_than_the_lattice_window(workdir, capsys):
    out = workdir / "small.nc"
    args = ["predict", str(workdir / "image.npy"), "--pixel-size", "0.1", "--out", str(out),
            "--model", str(workdir / "tiny.safetensors")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("segdepth: error:") and "--no-check" in err and err.count("\n") == 1
    assert not out.exists()


def test_registry_streams_flag_decides_chunked_reading(workdir, monkeypatch):
    """A streaming format (.npy) is read a chunk at a time; the same file flagged non-streaming is read whole."""
    import dataclasses

    import segdepth.data.io as io
    import segdepth.learn.inference as inference

    rng = np.random.default_rng(2)
    stack = (rng.poisson(5.0, (51, 32, 32)) / 5.0 + 0.05).astype(np.float32)
    np.save(workdir / "long.npy", stack)
    read_image, calls, chunks = io.read_image, [], []

    def recording_read_image(path, **kwargs):
        calls.append(kwargs["frames"])
        return read_image(path, **kwargs)

    class Stop(Exception):
        pass

    def consume_chunks(chunk_readers, *args, n_frames, **kwargs):  # the chunks as predict_to_netcdf gets them
        assert n_frames == 51
        chunks.extend(read() for read in chunk_readers)
        raise Stop

    monkeypatch.setattr(io, "read_image", recording_read_image)
    monkeypatch.setattr(inference, "predict_to_netcdf", consume_chunks)
    args = ["predict", str(workdir / "long.npy"), "--out", str(workdir / "long.nc"), "--model",
            str(workdir / "tiny.safetensors"), "--pixel-size", str(MODEL_PIXEL), "--chunk", "20", "--no-check"]
    for streams, reads in ((True, [[0], list(range(50)), list(range(40, 51))]), (False, [None])):
        monkeypatch.setitem(io.READERS, ".npy", dataclasses.replace(io.READERS[".npy"], streams=streams))
        calls.clear()
        chunks.clear()
        with pytest.raises(Stop):
            main(args)
        assert calls == reads, streams  # streaming: a probe, 50 frames, then the last chunk
        assert [c.sizes["frame"] for c in chunks] == [20, 20, 11], streams
        np.testing.assert_array_equal(np.concatenate([c.values for c in chunks]), stack)
        assert np.concatenate([c["frame"].values for c in chunks]).tolist() == list(range(51))


def test_help_lists_every_supported_format():
    from segdepth.apps.cli import build_parser
    from segdepth.data.io import SUPPORTED_EXTENSIONS

    commands = next(a for a in build_parser()._actions if a.dest == "command")
    description = commands.choices["predict"].description
    for suffix in SUPPORTED_EXTENSIONS:
        assert suffix in description, suffix


def test_dose_matching_follows_the_card_and_the_flag(workdir, capsys, monkeypatch):
    """--lambda above the card's dose-matching target: frames read at the target (recorded); the flag turns it off."""
    monkeypatch.chdir(workdir)
    torch.manual_seed(0)
    model = UNet(n_scales=1, channels=(2, 4), head_channels=(4, 4), median_size=1)
    save_model(model, workdir / "matched.safetensors", {"sampling": MODEL_PIXEL, "label_factor": 4, "lam": 5.0,
                                                        "dose_matching": {"target": 4.0, "draws": 2}})
    used = {}
    for name, extra in (("on", ["--lambda", "8"]), ("off", ["--lambda", "8", "--no-dose-matching"]),
                        ("estimated", []), ("none", ["--lambda", "none"])):
        out = workdir / f"matched_{name}.nc"
        args = ["predict", "image.npy", "--out", str(out), "--model", "matched.safetensors", "--pixel-size",
                str(MODEL_PIXEL), "--no-check", "--no-progress", *extra]
        assert main(args) == 0, capsys.readouterr().err
        with xr.open_dataset(out) as ds:
            used[name] = json.loads(ds.attrs["arguments"])["dose_matched"]
            estimated = ds.attrs.get("lambda_estimated")
        if name == "estimated":  # without --lambda the dose is estimated quietly (Poisson(5) / 5 grey values)
            assert estimated == pytest.approx(5.0, rel=0.25) and used[name]["dose"] == pytest.approx(estimated)
            used[name] = used[name]["target"]
        else:
            assert estimated is None
    assert used == {"on": {"dose": 8.0, "target": 4.0, "draws": 2}, "off": None, "estimated": 4.0, "none": None}


def test_predict_turns_a_turned_lattice_and_says_so(workdir, capsys):
    """--orientation auto (the default) measures the lattice's [001] and turns the frame; a number is taken as
    given, 'none' reads as given; anything else is one line naming the option."""
    from test_calibration import fcc_110_image

    np.save(workdir / "turned.npy", fcc_110_image(0.2, shape=(96, 96), rotation=25.0).astype(np.float32))
    common = ["predict", str(workdir / "turned.npy"), "--model", str(workdir / "tiny.safetensors"),
              "--pixel-size", "0.2", "--no-check", "--no-progress", "--lambda", "none"]  # fmt: skip
    runs = {}
    for name, extra in (("auto", []), ("given", ["--orientation", "100"]), ("none", ["--orientation", "none"])):
        out = workdir / f"turned_{name}.nc"
        assert main([*common, "--out", str(out), *extra]) == 0, capsys.readouterr().err
        runs[name] = (capsys.readouterr().err, xr.open_dataset(out).load())
    err, ds = runs["auto"]
    turned = json.loads(ds.attrs["orientation"])
    assert "frames turned by -25" in err and "[001] at 115" in ds.attrs["lattice_orientation"]
    assert turned["rotation"] == pytest.approx(-25.0, abs=0.5) and ds["depth"].shape == runs["none"][1]["depth"].shape
    assert json.loads(runs["given"][1].attrs["orientation"])["rotation"] == pytest.approx(-10.0)
    assert json.loads(runs["none"][1].attrs["orientation"])["rotation"] == 0.0
    assert main([*common, "--out", str(workdir / "bad.nc"), "--orientation", "sideways"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--orientation sideways" in err[0]
