"""read_image on DigitalMicrograph (.dm3, .dm4) and TIA (.ser, .emi) files written by tests/fileformats.py."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from fileformats import write_dm3, write_dm4, write_emi, write_ser

from segdepth.data.io import read_image

NY, NX = 48, 64  # not square: a transposed read changes the shape
PIXEL_NM = 0.5  # -> 5 A

# name, writer, its pixel size argument (DM: nm per pixel; TIA: metres per pixel)
FORMATS = [
    pytest.param(".dm3", write_dm3, PIXEL_NM, id="dm3"),
    pytest.param(".dm4", write_dm4, PIXEL_NM, id="dm4"),
    pytest.param(".ser", write_ser, PIXEL_NM * 1e-9, id="ser"),
]


def pattern(k: int = 0) -> np.ndarray:
    """1 + x + 100 y (+ 10000 k): every pixel different, exact in float32, no flip or transpose goes unseen."""
    y, x = np.mgrid[0:NY, 0:NX]
    return (1 + x + 100 * y + 10000 * k).astype(np.float32)


@pytest.mark.parametrize(("suffix", "write", "pixel"), FORMATS)
def test_image_values_dims_and_pixel_size(tmp_path, suffix, write, pixel):
    path = tmp_path / f"image{suffix}"
    write(path, pattern(), pixel)  # DM files also hold an RGBA thumbnail as image 0, which must be skipped
    da = read_image(path)
    assert da.dims == ("frame", "y", "x") and da.shape == (1, NY, NX) and da.dtype == np.float32
    np.testing.assert_array_equal(da.values[0], pattern())
    assert da.values[0, 0, 1] == 2 and da.values[0, 1, 0] == 101  # x along the rows, top row first
    assert da.attrs["pixel_size"] == pytest.approx(5.0, rel=1e-9)
    np.testing.assert_allclose(da["x"].values, (np.arange(NX) + 0.5) * 5.0)
    np.testing.assert_allclose(da["y"].values, (np.arange(NY) + 0.5) * 5.0)
    assert da.attrs["source"] == path.name and da.attrs["frames_in_file"] == 1
    assert read_image(path, pixel_size=0.3).attrs["pixel_size"] == 0.3  # the argument overrides the file


@pytest.mark.parametrize(("suffix", "write", "pixel"), FORMATS)
def test_stack_frames_and_crop(tmp_path, suffix, write, pixel):
    path = tmp_path / f"stack{suffix}"
    stack = np.stack([pattern(k) for k in range(3)])
    write(path, stack, pixel)
    da = read_image(path)
    assert da.shape == (3, NY, NX) and da.frame.values.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(da.values, stack)
    assert da.attrs["pixel_size"] == pytest.approx(5.0, rel=1e-9) and da.attrs["frames_in_file"] == 3
    part = read_image(path, frames="1:", crop="10:30,5:20")
    assert part.frame.values.tolist() == [1, 2] and part.shape == (2, 15, 20)
    np.testing.assert_array_equal(part.values, stack[1:, 5:20, 10:30])


@pytest.mark.parametrize(("suffix", "write", "pixel"), FORMATS)
def test_truncated_file_is_a_one_line_error(tmp_path, suffix, write, pixel, capsys, caplog):
    full = tmp_path / f"full{suffix}"
    write(full, pattern(), pixel)
    content = full.read_bytes()
    # in the header, in the first tags (DM) or the image header (SER), in the pixels, near the end
    for cut in (10, 40, len(content) // 2, len(content) - 40):
        path = tmp_path / f"cut{cut}{suffix}"
        path.write_bytes(content[:cut])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning either
            with pytest.raises(ValueError) as err:
                read_image(path)
        text = str(err.value)
        assert text.startswith(f"{path}: could not read the file as {suffix} (corrupt or truncated?)"), text
        assert "\n" not in text
    assert capsys.readouterr() == ("", "") and not caplog.records  # the readers print and log nothing


def test_ser_read_through_its_emi_file(tmp_path):
    """``name.emi`` carries the acquisition mode of ``name_1.ser``: real space in TEM, reciprocal in diffraction."""
    write_ser(tmp_path / "series_1.ser", pattern(), 2e-10)
    write_emi(tmp_path / "series.emi", mode="TEM Image")
    da = read_image(tmp_path / "series.emi")
    np.testing.assert_array_equal(da.values[0], pattern())
    assert da.attrs["pixel_size"] == pytest.approx(2.0, rel=1e-9) and da.attrs["source"] == "series.emi"

    write_emi(tmp_path / "series.emi", mode="Diffraction")
    message = f"{tmp_path / 'series.emi'}: axes are in reciprocal units"
    with pytest.raises(ValueError, match=re.escape(message)):
        read_image(tmp_path / "series.emi")
