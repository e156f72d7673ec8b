"""Minimal writers of microscope file formats, for tests only.

Written from the public descriptions of the formats (not from any reader's code):

* Gatan DigitalMicrograph ``.dm3`` / ``.dm4``: the tag-file layout publicly described
  by Chris Boothroyd ("DM3 file format") and Bernd Schaffer, and its DM4 variant (the
  same tags with 8-byte lengths and counts, and each tag's byte length after its name).
* FEI / ThermoFisher TIA ``.ser``: the "TIA Series Data File" specification
  (header, dimension array, offset arrays, then data elements and their tags).

Each writer produces the smallest file that carries an image and its spatial
calibration, as the microscope software lays it out; nothing else is written.
"""

from __future__ import annotations

import struct
import time

import numpy as np

__all__ = ["write_dm3", "write_dm4", "write_emi", "write_ser"]


# ------------------------------------------------------------------ DigitalMicrograph
#
# File:   version (int32), root length, byte order (int32, 1 = little endian: the
#         byte order of the tag *values*), the root tag group, end marker (zeros).
# Group:  sorted (1 byte), open (1 byte), number of tags, then the tags.
# Tag:    kind (1 byte: 20 group, 21 data), name length (int16), name (bytes),
#         [DM4 only: byte length of the rest of the tag (int64)], then either a
#         group, or "%%%%", the length of the type description, the type
#         description (codes below), the value(s).
# The header, lengths, counts and type descriptions are big endian; they are
# 4 bytes long in DM3 and 8 bytes in DM4.
#
# Type codes: 2 int16, 3 int32, 4 uint16, 5 uint32, 6 float32, 7 float64,
# 8 bool, 9 int8, 10 uint8, 11 int64, 12 uint64, 15 struct, 18 string, 20 array.
# An array is described as (20, element type, length); a text value is an array
# of uint16 (UTF-16) characters.

_DM_ARRAY_TYPES = {np.dtype("int16"): 2, np.dtype("int32"): 3, np.dtype("uint16"): 4,
                   np.dtype("uint32"): 5, np.dtype("float32"): 6, np.dtype("float64"): 7}  # fmt: skip
_DM_IMAGE_TYPES = {np.dtype("float32"): 2, np.dtype("uint32"): 23}  # ImageData.DataType: float32, RGBA (8 bits each)


def _dm_value(value) -> tuple[list[int], bytes]:
    """Type description and little-endian bytes of one tag value."""
    if isinstance(value, str):
        return [20, 4, len(value)], value.encode("utf-16-le")
    if isinstance(value, int):
        return [3], struct.pack("<i", value)
    if isinstance(value, float):
        return [6], struct.pack("<f", value)
    array = np.ascontiguousarray(value)
    return [20, _DM_ARRAY_TYPES[array.dtype], array.size], array.astype(array.dtype.newbyteorder("<")).tobytes()


def _dm_group(entries, version: int) -> bytes:
    """A tag group: ``entries`` is a dict (named tags) or a list (unnamed tags)."""
    count = ">l" if version == 3 else ">q"
    items = entries.items() if isinstance(entries, dict) else [("", value) for value in entries]
    out = struct.pack(">BB", 0, 1) + struct.pack(count, len(items))  # not sorted, open, number of tags
    for name, value in items:
        if isinstance(value, dict | list):
            kind, body = 20, _dm_group(value, version)
        else:
            info, data = _dm_value(value)
            kind = 21
            body = b"%%%%" + struct.pack(count, len(info)) + b"".join(struct.pack(count, i) for i in info) + data
        if version == 4:
            body = struct.pack(">q", len(body)) + body  # DM4: byte length of the tag's remainder
        out += struct.pack(">Bh", kind, len(name)) + name.encode("latin-1") + body
    return out


def _dm_image(data: np.ndarray, scale: float, units: str, name: str) -> dict:
    """One entry of the ImageList: the data (x fastest), its dimensions (x first) and calibrations."""
    spatial = [{"Origin": 0.0, "Scale": float(scale), "Units": units}] * 2  # x, y
    frames = [{"Origin": 0.0, "Scale": 1.0, "Units": ""}] if data.ndim == 3 else []
    return {
        "ImageData": {
            "Calibrations": {
                "Brightness": {"Origin": 0.0, "Scale": 1.0, "Units": "Counts"},
                "Dimension": spatial + frames,
            },
            "Data": data.ravel(),  # C order of (frame,) y, x: x varies fastest
            "DataType": _DM_IMAGE_TYPES[data.dtype],
            "Dimensions": list(data.shape[::-1]),  # x, y(, frame) sizes
            "PixelDepth": data.dtype.itemsize,
        },
        "ImageTags": {},
        "Name": name,
    }


def _write_dm(path, data, pixel_size_nm: float, version: int, thumbnail: bool, voltage: float | None) -> None:
    data = np.asarray(data, np.float32)
    if data.ndim not in (2, 3):
        raise ValueError(f"expected a (y, x) image or a (frame, y, x) stack, got shape {data.shape}")
    images = [_dm_image(data, pixel_size_nm, "nm", "synthetic")]
    if voltage is not None:  # as the microscope plug-in records it: the high tension in volts
        images[0]["ImageTags"] = {"Microscope Info": {"Voltage": float(voltage)}}
    root = {"ImageList": images}
    if thumbnail:  # as DigitalMicrograph saves: image 0 is an RGBA preview, listed under Thumbnails
        preview = np.full((8, 6), 0xFF808080, np.uint32)  # opaque grey
        images.insert(0, _dm_image(preview, 1.0, "", "thumbnail"))
        root["Thumbnails"] = [{"ImageIndex": 0}]
    tags = _dm_group(root, version)
    length = ">l" if version == 3 else ">q"
    header = struct.pack(">l", version) + struct.pack(length, len(tags)) + struct.pack(">l", 1)  # 1: little endian
    with open(path, "wb") as f:
        f.write(header + tags + bytes(struct.calcsize(length)))  # end marker: zeros


def write_dm3(path, data, pixel_size_nm: float, *, thumbnail: bool = True, voltage: float | None = None) -> None:
    """DM3 file of a float32 (y, x) image or (frame, y, x) stack calibrated in nm per pixel (high tension [V])."""
    _write_dm(path, data, pixel_size_nm, 3, thumbnail, voltage)


def write_dm4(path, data, pixel_size_nm: float, *, thumbnail: bool = True, voltage: float | None = None) -> None:
    """DM4 file of a float32 (y, x) image or (frame, y, x) stack calibrated in nm per pixel (high tension [V])."""
    _write_dm(path, data, pixel_size_nm, 4, thumbnail, voltage)


# ------------------------------------------------------------------ TIA series (.ser)
#
# Header (little endian): ByteOrder 0x4949, SeriesID 0x0197, SeriesVersion 0x0220
# (offsets are 8 bytes long), DataTypeID (0x4122: 2-D image elements), TagTypeID
# (0x4152: time only), TotalNumberElements, ValidNumberElements,
# OffsetArrayOffset (uint64), NumberDimensions; then per dimension of the series:
# DimensionSize, CalibrationOffset, CalibrationDelta, CalibrationElement,
# DescriptionLength, Description, UnitsLength, Units. At OffsetArrayOffset: the
# data offset array and the tag offset array (TotalNumberElements uint64 each).
#
# Image element: CalibrationOffsetX (float64), CalibrationDeltaX (float64, metres
# per pixel), CalibrationElementX (int32), the same three for Y, DataType (int16,
# 7 = float32), ArraySizeX, ArraySizeY (int32), then the pixels, x fastest, the
# first row being the *bottom* row of the image.
# Tag (time only): TagTypeID (int16), two zero bytes (as in the files TIA writes),
# Time (int32, seconds since 1970).

_SER_HEADER = struct.Struct("<HHHIIIIQI")
_SER_DIMENSION = struct.Struct("<IddII")  # followed by the description, UnitsLength and the units
_SER_IMAGE = struct.Struct("<ddiddihii")
_SER_TAG = struct.Struct("<HHi")


def write_ser(path, data, pixel_size_m: float) -> None:
    """TIA ``.ser`` file of a float32 (y, x) image, or a (frame, y, x) series of images, in metres per pixel."""
    data = np.asarray(data, np.float32)
    if data.ndim not in (2, 3):
        raise ValueError(f"expected a (y, x) image or a (frame, y, x) stack, got shape {data.shape}")
    frames = data[np.newaxis] if data.ndim == 2 else data
    n, ny, nx = frames.shape
    description = b"Number"
    # one series dimension: the frame number (size 1 for a single image), no units
    dimension = _SER_DIMENSION.pack(n, 0.0, 1.0, 0, len(description)) + description + struct.pack("<I", 0)
    offset_arrays = _SER_HEADER.size + len(dimension)
    element_size = _SER_IMAGE.size + frames[0].nbytes
    first = offset_arrays + 2 * 8 * n
    data_offsets = [first + i * (element_size + _SER_TAG.size) for i in range(n)]  # each tag follows its image
    tag_offsets = [offset + element_size for offset in data_offsets]
    out = _SER_HEADER.pack(0x4949, 0x0197, 0x0220, 0x4122, 0x4152, n, n, offset_arrays, 1) + dimension
    out += struct.pack(f"<{2 * n}Q", *data_offsets, *tag_offsets)
    for frame in frames:
        out += _SER_IMAGE.pack(0.0, pixel_size_m, 0, 0.0, pixel_size_m, 0, 7, nx, ny)
        out += np.ascontiguousarray(frame[::-1], "<f4").tobytes()  # bottom row first
        out += _SER_TAG.pack(0x4152, 0, int(time.time()))
    with open(path, "wb") as f:
        f.write(out)


def write_emi(path, mode: str = "TEM Image", high_tension_kv: float = 300.0) -> None:
    """Stand-in for the TIA ``.emi`` file that accompanies ``<name>_1.ser``.

    The ``.emi`` format itself is not published; the only part of it that readers
    use is the XML ``<ObjectInfo>`` block TIA embeds for each series, with the
    acquisition date, the microscope ``Mode`` (TEM / STEM / Diffraction: it tells
    real-space from reciprocal-space calibrations) and the camera. That block is
    all this file holds, after a few bytes of binary padding.
    """
    xml = (
        "<ObjectInfo><AcquireDate>Mon Jan 08 10:30:00 2024</AcquireDate>"
        "<ExperimentalDescription><Root>"
        f"<Data><Label>Mode</Label><Value>{mode}</Value><Unit></Unit></Data>"
        f"<Data><Label>High tension</Label><Value>{high_tension_kv:g}</Value><Unit>kV</Unit></Data>"
        "</Root></ExperimentalDescription>"
        "<AcquireInfo><CameraNamePath>BM-Ceta</CameraNamePath></AcquireInfo></ObjectInfo>"
    )
    with open(path, "wb") as f:
        f.write(bytes(16) + xml.encode("utf-8") + bytes(16))
