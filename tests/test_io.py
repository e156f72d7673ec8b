from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr

import segdepth.data.io as io
from segdepth.data.io import (
    READERS,
    SUPPORTED_EXTENSIONS,
    RawImage,
    Reader,
    check_pixel_size,
    frame_indices,
    read_image,
)


def write_mrc(path, data, pixel_size):
    """Minimal MRC file (mode 2, float32), cell lengths in Angstrom, no extended header."""
    data = np.asarray(data, np.float32)
    nz, ny, nx = data.shape if data.ndim == 3 else (1, *data.shape)
    words = np.zeros(256, np.int32)  # 1024-byte header
    words[[0, 1, 2, 3, 7, 8, 9]] = [nx, ny, nz, 2, nx, ny, nz]
    words[16:19] = [1, 2, 3]
    words.view(np.float32)[10:13] = [nx * pixel_size, ny * pixel_size, nz * pixel_size]
    with open(path, "wb") as f:
        f.write(words.tobytes() + data.tobytes())


@pytest.fixture
def image(rng):
    return (rng.random((40, 32)) + 0.1).astype(np.float32)


def test_npy_image_and_stack(tmp_path, image):
    np.save(tmp_path / "a.npy", image)
    da = read_image(tmp_path / "a.npy", pixel_size=0.2)
    assert da.dims == ("frame", "y", "x") and da.shape == (1, 40, 32) and da.dtype == np.float32
    np.testing.assert_array_equal(da.values[0], image)
    assert da.attrs["pixel_size"] == 0.2
    np.testing.assert_allclose(da["x"].values, (np.arange(32) + 0.5) * 0.2)
    np.testing.assert_allclose(da["y"].values, (np.arange(40) + 0.5) * 0.2)

    np.save(tmp_path / "stack.npy", np.stack([image, 2 * image, 3 * image]).astype(np.uint16))
    stack = read_image(tmp_path / "stack.npy")
    assert stack.shape == (3, 40, 32) and stack.dtype == np.float32
    assert stack.attrs["pixel_size"] is None and "x" not in stack.coords


def test_tiff_calibrations(tmp_path, image):
    # resolution tags in cm: 1 pixel = 0.5e-7 cm = 5 A
    tifffile.imwrite(tmp_path / "cm.tif", image, resolution=(2e7, 2e7), resolutionunit="CENTIMETER")
    assert read_image(tmp_path / "cm.tif").attrs["pixel_size"] == pytest.approx(5.0)
    # ImageJ: 50 pixels per nm -> 0.2 A
    tifffile.imwrite(tmp_path / "ij.tif", image, imagej=True, resolution=(50, 50), metadata={"unit": "nm"})
    assert read_image(tmp_path / "ij.tif").attrs["pixel_size"] == pytest.approx(0.2)
    # no calibration, and dots per inch are not a calibration
    tifffile.imwrite(tmp_path / "plain.tiff", image)
    assert read_image(tmp_path / "plain.tiff").attrs["pixel_size"] is None
    tifffile.imwrite(tmp_path / "dpi.tif", image, resolution=(72, 72), resolutionunit="INCH")
    assert read_image(tmp_path / "dpi.tif").attrs["pixel_size"] is None
    # the argument overrides the file, even a calibration we cannot use
    assert read_image(tmp_path / "cm.tif", pixel_size=0.1).attrs["pixel_size"] == 0.1
    tifffile.imwrite(tmp_path / "rect.tif", image, resolution=(2e7, 1e7), resolutionunit="CENTIMETER")
    with pytest.raises(ValueError, match="rect.tif: pixels are not square"):
        read_image(tmp_path / "rect.tif")
    assert read_image(tmp_path / "rect.tif", pixel_size=0.1).attrs["pixel_size"] == 0.1


def test_tiff_stack_and_rgb(tmp_path, image):
    stack = np.stack([image, image + 1])
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    assert read_image(tmp_path / "stack.tif").shape == (2, 40, 32)

    grey = (image * 200).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", np.repeat(grey[..., None], 3, axis=-1), photometric="rgb")
    da = read_image(tmp_path / "rgb.tif")
    np.testing.assert_array_equal(da.values[0], grey)

    colour = np.repeat(grey[..., None], 3, axis=-1)
    colour[..., 1] //= 2
    tifffile.imwrite(tmp_path / "colour.tif", colour, photometric="rgb")
    with pytest.raises(ValueError, match="colour.tif: colour \\(RGB\\) image"):
        read_image(tmp_path / "colour.tif")


def test_netcdf(tmp_path, image):
    nm = xr.Variable("x", (np.arange(32) + 0.5) * 0.02, {"units": "nm"})
    ds = xr.Dataset(
        {"image": (("y", "x"), image), "other": ("x", np.zeros(32))},
        coords={"x": nm, "y": xr.Variable("y", (np.arange(40) + 0.5) * 0.02, {"units": "nm"})},
    )
    ds.to_netcdf(tmp_path / "a.nc")
    da = read_image(tmp_path / "a.nc")
    assert da.shape == (1, 40, 32) and da.attrs["pixel_size"] == pytest.approx(0.2)

    # a simulated data set: (sample, y, x) with coordinates in A
    sim = xr.DataArray(np.stack([image, image]), dims=("sample", "y", "x"), coords={"x": (np.arange(32) + 0.5) * 0.05})
    sim.to_dataset(name="intensity").to_netcdf(tmp_path / "sim.nc")
    da = read_image(tmp_path / "sim.nc")
    assert da.shape == (2, 40, 32) and da.attrs["pixel_size"] == pytest.approx(0.05)

    xr.Dataset({"a": ("x", np.ones(3)), "b": ("x", np.ones(3))}).to_netcdf(tmp_path / "two.nc")
    with pytest.raises(ValueError, match="two.nc: expected a data variable named 'image'"):
        read_image(tmp_path / "two.nc")


def test_mrc_through_rosettasciio(tmp_path, image):
    write_mrc(tmp_path / "s.mrc", np.stack([image, image + 1, image + 2]), 0.25)
    da = read_image(tmp_path / "s.mrc")
    assert da.shape == (3, 40, 32) and da.attrs["pixel_size"] == pytest.approx(0.25)
    np.testing.assert_array_equal(da.values[2], image + 2)
    write_mrc(tmp_path / "one.mrc", image, 0.25)
    assert read_image(tmp_path / "one.mrc").shape == (1, 40, 32)


@pytest.mark.parametrize("suffix", [".dm3", ".dm4", ".ser", ".mrc", ".emd"])
def test_corrupt_rosettasciio_formats_give_clean_errors(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"not a microscope file" * 5)
    with pytest.raises(ValueError, match=f"bad\\{suffix}: (could not read|reading)") as err:
        read_image(path)
    assert "\n" not in str(err.value)


def _bad_inputs(tmp_path, image):
    cases = {}

    def npy(name, array, **kw):
        np.save(tmp_path / name, array, **kw)
        return tmp_path / name

    cases["truncated"] = (tmp_path / "t.npy", "corrupt or truncated")
    np.save(cases["truncated"][0], image)
    cases["truncated"][0].write_bytes(cases["truncated"][0].read_bytes()[:200])
    cases["text"] = (npy("s.npy", np.array([["a", "b"], ["c", "d"]])), "non-numeric")
    cases["object"] = (npy("o.npy", np.array([[1, None]], dtype=object), allow_pickle=True), "non-numeric")
    cases["complex"] = (npy("c.npy", image.astype(np.complex64)), "complex")
    cases["empty"] = (npy("e.npy", np.zeros((0, 5), np.float32)), "empty")
    cases["1-D"] = (npy("v.npy", np.ones(10)), "expected a 2-D image")
    cases["4-D"] = (npy("h.npy", np.ones((2, 2, 8, 8))), "expected a 2-D image")
    nan = image.copy()
    nan[3, 4] = np.nan
    cases["nan"] = (npy("nan.npy", nan), "NaN")
    inf = image.copy()
    inf[0, 0] = np.inf
    cases["inf"] = (npy("inf.npy", inf), "infinite")
    cases["zero"] = (npy("z.npy", np.zeros_like(image)), "all zero")
    cases["negative"] = (npy("n.npy", -image), "all negative")
    cases["zero frame"] = (npy("zf.npy", np.stack([image, 0 * image])), "frame 1 .*all zero")
    cases["rgb"] = (npy("rgb.npy", np.stack([image, image, 2 * image], axis=-1)), "RGB")
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff")
    cases["extension"] = (tmp_path / "x.jpg", "unsupported file type '.jpg'")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    cases["truncated png"] = (tmp_path / "x.png", "corrupt or truncated")
    gif = tmp_path / "t.gif"
    from PIL import Image

    Image.fromarray((image * 200).astype(np.uint8)).save(gif)
    gif.write_bytes(gif.read_bytes()[:40])
    cases["truncated gif"] = (gif, "corrupt or truncated")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    cases["corrupt tiff"] = (tmp_path / "bad.tif", "could not read")
    (tmp_path / "bad.nc").write_bytes(b"CDF\x01garbage")
    cases["corrupt nc"] = (tmp_path / "bad.nc", "could not read|corrupt")
    xr.Dataset({"image": (("y", "x"), image)}).to_netcdf(tmp_path / "t.nc")
    (tmp_path / "t.nc").write_bytes((tmp_path / "t.nc").read_bytes()[:300])
    cases["truncated nc"] = (tmp_path / "t.nc", "could not read|corrupt")
    (tmp_path / "dir.npy").mkdir()
    cases["directory"] = (tmp_path / "dir.npy", "is a directory")
    return cases


def test_bad_inputs_raise_one_line_value_errors(tmp_path, image):
    for name, (path, message) in _bad_inputs(tmp_path, image).items():
        with pytest.raises(ValueError) as err:
            read_image(path)
        text = str(err.value)
        assert str(path) in text and "\n" not in text, name
        assert re.search(message, text), (name, text)
    with pytest.raises(FileNotFoundError, match="missing.npy: no such file"):
        read_image(tmp_path / "missing.npy")


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "abc", True, None, [1.0]])
def test_bad_pixel_sizes(tmp_path, image, value):
    np.save(tmp_path / "a.npy", image)
    if value is None:
        assert read_image(tmp_path / "a.npy", pixel_size=value).attrs["pixel_size"] is None
        return
    with pytest.raises(ValueError, match="pixel size"):
        read_image(tmp_path / "a.npy", pixel_size=value)
    with pytest.raises(ValueError, match="pixel size"):
        check_pixel_size(value)
    assert check_pixel_size("0.5") == 0.5


def test_write_netcdf_atomic(tmp_path):
    from segdepth.data.store import write_netcdf_atomic as write

    def write_netcdf_atomic(ds, path):  # how the command line writes: no compression, no new directories
        return write(ds, path, compress=False, make_parents=False)

    ds = xr.Dataset({"depth": (("y", "x"), np.ones((2, 3), np.uint8))}, attrs={"card": "{}"})
    out = write_netcdf_atomic(ds, tmp_path / "out.nc")
    with xr.open_dataset(out) as back:
        assert back["depth"].dtype == np.uint8
    assert sorted(os.listdir(tmp_path)) == ["out.nc"]

    bad = ds.assign_attrs(card={"not": "serialisable"})  # netCDF rejects dict attributes
    with pytest.raises((TypeError, ValueError)):
        write_netcdf_atomic(bad, tmp_path / "bad.nc")
    assert sorted(os.listdir(tmp_path)) == ["out.nc"]  # no partial output, no temp file

    with pytest.raises(FileNotFoundError, match="output directory does not exist"):
        write_netcdf_atomic(ds, tmp_path / "missing" / "out.nc")
    with pytest.raises(ValueError, match="is a directory"):
        write_netcdf_atomic(ds, tmp_path)


def test_gif_and_png_movies(tmp_path, image):
    from PIL import Image

    grey = [(image * 200 + k).astype(np.uint8) for k in range(3)]
    frames = [Image.fromarray(g).convert("RGB").quantize(256) for g in grey]  # palette frames, R = G = B
    frames[0].save(tmp_path / "m.gif", save_all=True, append_images=frames[1:], duration=40)
    movie = read_image(tmp_path / "m.gif")
    assert movie.dims == ("frame", "y", "x") and movie.shape == (3, 40, 32)
    # palette quantisation may merge close grey levels, so compare loosely
    assert np.abs(movie.values[1] - grey[1]).max() <= 2
    part = read_image(tmp_path / "m.gif", frames="1:", crop="4:20,0:10", pixel_size=0.5)
    assert part.shape == (2, 10, 16) and list(part.frame.values) == [1, 2]
    np.testing.assert_array_equal(part.values, movie.values[1:, 0:10, 4:20])
    assert part["x"].values[0] == pytest.approx(4.5 * 0.5) and part.attrs["crop"] == [4, 20, 0, 10]

    Image.fromarray(grey[0]).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png").values[0], grey[0])
    colour = np.stack([grey[0], grey[0] // 2, grey[0]], axis=-1)
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="c.png: colour \\(RGB\\) image with different channels"):
        read_image(tmp_path / "c.png")


def test_real_movie_shape():
    movie = Path(__file__).resolve().parents[1] / "data" / "raw" / "ptceo2_udvd_40frames.gif"
    da = read_image(movie, frames=[0, 40], crop="0:180,:")
    assert da.shape == (2, 180, 180) and list(da.frame.values) == [0, 40] and da.attrs["pixel_size"] is None


def test_frame_and_crop_selection(tmp_path, image):
    stack = np.stack([image + k for k in range(5)])
    np.save(tmp_path / "s.npy", stack)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    for name in ("s.npy", "s.tif"):
        da = read_image(tmp_path / name, frames="1:5:2", crop=(None, 8, 30, None))
        assert da.shape == (2, 10, 8) and list(da.frame.values) == [1, 3], name
        np.testing.assert_array_equal(da.values, stack[1:5:2, 30:, :8])
        assert read_image(tmp_path / name, frames=[-1]).frame.values.tolist() == [4]
    with pytest.raises(ValueError, match="s.npy: frame 7 is out of range \\(the file has 5"):
        read_image(tmp_path / "s.npy", frames=7)
    with pytest.raises(ValueError, match="selects none"):
        read_image(tmp_path / "s.npy", frames="9:")
    with pytest.raises(ValueError, match="crop .* is empty"):
        read_image(tmp_path / "s.npy", crop="10:10,:")
    with pytest.raises(ValueError, match="crop must look like"):
        read_image(tmp_path / "s.npy", crop="0-10")
    with pytest.raises(ValueError, match="frames must look like"):
        read_image(tmp_path / "s.npy", frames="a:b")


def test_frames_of_different_sizes(tmp_path, image):
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        tif.write(image)
        tif.write(image[:20, :20])
    with pytest.raises(ValueError, match="mixed.tif: frames of different sizes"):
        read_image(tmp_path / "mixed.tif")


def test_emd_through_rosettasciio(tmp_path, image):
    pytest.importorskip("h5py")
    from rsciio.emd import file_writer

    data = np.stack([image, image + 1, image + 2])
    axes = [
        {"name": "frame", "size": 3, "offset": 0, "scale": 1, "units": "<undefined>", "navigate": True},
        {"name": "y", "size": 40, "offset": 0, "scale": 0.02, "units": "nm", "navigate": False},
        {"name": "x", "size": 32, "offset": 0, "scale": 0.02, "units": "nm", "navigate": False},
    ]
    for i, ax in enumerate(axes):
        ax["index_in_array"] = i
    signal = {"data": data, "axes": axes, "metadata": {"General": {"title": "t"}, "Signal": {"signal_type": ""}},
              "original_metadata": {}, "attributes": {}}
    file_writer(str(tmp_path / "s.emd"), signal)
    da = read_image(tmp_path / "s.emd", frames="1:", crop="0:16,:")
    assert da.shape == (2, 40, 16) and da.attrs["pixel_size"] == pytest.approx(0.2)
    np.testing.assert_array_equal(da.values[1], (image + 2)[:, :16])


def test_every_supported_extension_has_a_reader():
    assert SUPPORTED_EXTENSIONS == tuple(READERS) and len(set(SUPPORTED_EXTENSIONS)) == len(SUPPORTED_EXTENSIONS)
    for suffix in SUPPORTED_EXTENSIONS:
        reader = READERS[suffix]
        assert isinstance(reader, Reader) and suffix in reader.suffixes and callable(reader.read), suffix
        assert suffix == suffix.lower() and suffix.startswith("."), suffix
        assert f"``{suffix}``" in io.__doc__, f"{suffix} missing from the format table"
    for reader in set(READERS.values()):
        assert all(READERS[suffix] is reader for suffix in reader.suffixes), reader.name
    assert {s for s, r in READERS.items() if r.streams} == {".npy", ".tif", ".tiff", ".gif", ".png"}


def test_unknown_suffix_lists_the_registry(tmp_path):
    (tmp_path / "x.JPG").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(ValueError) as err:
        read_image(tmp_path / "x.JPG")
    supported = ", ".join(READERS)
    assert str(err.value) == f"{tmp_path / 'x.JPG'}: unsupported file type '.JPG' (supported: {supported})"
    tifffile.imwrite(tmp_path / "upper.TIF", np.ones((8, 8), np.float32))
    assert read_image(tmp_path / "upper.TIF").shape == (1, 8, 8)  # suffixes are looked up in lower case


def test_streaming_readers_read_only_the_selected_frames(tmp_path, image):
    """A streaming reader returns only the selected frames (or a memory map); the others return the whole data."""
    from PIL import Image

    stack = np.stack([image + k for k in range(5)])
    tifffile.imwrite(tmp_path / "s.tif", stack)
    grey = [Image.fromarray((image * 200 + 10 * k).astype(np.uint8)) for k in range(5)]
    grey[0].save(tmp_path / "s.gif", save_all=True, append_images=grey[1:], duration=40)
    for name in ("s.tif", "s.gif"):
        raw = READERS[Path(name).suffix].read(tmp_path / name, calibrate=False, frames="1:5:2")
        assert isinstance(raw, RawImage) and raw.data.shape[:3] == (2, 40, 32), name  # GIF: palette as RGB
        assert raw.selected_frames == (1, 3) and raw.frames_in_file == 5, name
        whole = READERS[Path(name).suffix].read(tmp_path / name, calibrate=False, frames=None)
        assert whole.data.shape[:3] == (5, 40, 32) and whole.selected_frames is None and whole.frames_in_file is None
    np.testing.assert_array_equal(read_image(tmp_path / "s.tif", frames="1:5:2").values, stack[1:5:2])
    assert read_image(tmp_path / "s.gif", frames="1:5:2").attrs["frames_in_file"] == 5

    np.save(tmp_path / "s.npy", stack)
    raw = READERS[".npy"].read(tmp_path / "s.npy", calibrate=True, frames=[1])
    assert isinstance(raw.data, np.memmap) and raw.selected_frames is None  # read_image indexes the map

    xr.Dataset({"image": (("frame", "y", "x"), stack)}).to_netcdf(tmp_path / "s.nc")
    raw = READERS[".nc"].read(tmp_path / "s.nc", calibrate=True, frames=[1])
    assert not READERS[".nc"].streams and raw.data.shape == stack.shape and raw.selected_frames is None
    assert read_image(tmp_path / "s.nc", frames=[1]).frame.values.tolist() == [1]


def test_frame_indices_is_the_selection_of_read_image():
    assert frame_indices(None, 3, "f") == [0, 1, 2]
    assert frame_indices("0:40:2", 7, "f") == [0, 2, 4, 6]
    assert frame_indices([-1, 0], 4, "f") == [3, 0]
    with pytest.raises(ValueError, match="f: frame 4 is out of range \\(the file has 4"):
        frame_indices(4, 4, "f")
    with pytest.raises(TypeError, match="selected_frames and frames_in_file"):
        RawImage(np.ones((2, 2)), selected_frames=(0,))
