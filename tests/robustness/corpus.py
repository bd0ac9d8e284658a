"""A corpus of bad (and awkward but valid) input files, generated into a folder.

Nothing binary is committed: :func:`write_corpus` writes every case as a small file.
Each :class:`Case` says what ``napari-bloodcell analyze`` must do with it: analyse it
(``expect is None``) or refuse it with a message containing ``expect``.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from napari_bloodcell.synthetic import make_smear

SMEAR_SHAPE = (240, 320)
HUGE_SIDE = 100_000
"""Side (px) that the 'huge header' files claim: 10 Gpx, never allocated."""


@dataclass(frozen=True)
class Case:
    """One corpus file: its name, how to write it and the expected outcome.

    expect : None when the file must be analysed, else a part of the error message.
    axes : the ``--axes`` to analyse it with (None: inferred).
    """

    name: str
    filename: str
    write: Callable[[Path], None]
    expect: str | None
    axes: str | None = None


@functools.lru_cache(maxsize=1)
def smear_rgb() -> np.ndarray:
    """A small synthetic smear frame (uint8 RGB, 240 × 320 px) with a few cells."""
    image = make_smear(shape=SMEAR_SHAPE, n_rbc=6, n_wbc=1, n_platelets=3, seed=4).image
    image.flags.writeable = False
    return image


def _grey(dtype, scale: float = 1.0, offset: float = 0.0, dark: bool = True) -> np.ndarray:
    """The smear in grey, in ``dtype`` as ``grey × scale + offset``; ``dark``: inverted, a
    dark background with bright cells, as fluorescence (a bright grey frame is refused)."""
    grey = smear_rgb().mean(axis=-1) / 255.0
    return ((1.0 - grey if dark else grey) * scale + offset).astype(dtype)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    iio.imwrite(buffer, smear_rgb(), extension=".jpg")
    return buffer.getvalue()


def _tiff_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def _stack_cut_short(path: Path, imagej: bool) -> None:
    """A 4-frame grey stack copied incompletely: an ImageJ file cut after its third frame's
    data (the later page headers, written after the data, are lost), or a plain one cut
    inside its last page."""
    stack = np.stack([_grey(np.uint16, 4000, 100 + 50 * t) for t in range(4)])
    axes = {"axes": "TYX"} if imagej else {}
    tifffile.imwrite(path, stack, imagej=imagej, photometric="minisblack", metadata=axes)
    with tifffile.TiffFile(path) as tif:
        end = tif.pages[0].dataoffsets[0] + 3 * stack[0].nbytes if imagej else -1000
    path.write_bytes(path.read_bytes()[:end])


def _write_bytes(data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data() if callable(data) else data)


def _write_tiff(make: Callable[[], np.ndarray], **kwargs) -> Callable[[Path], None]:
    kwargs.setdefault("photometric", "minisblack")
    return lambda path: tifffile.imwrite(path, make(), **kwargs)


def _write_image(make: Callable[[], np.ndarray]) -> Callable[[Path], None]:
    return lambda path: iio.imwrite(path, make())


def _with_bad(value: float) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        array = smear_rgb().astype(np.float32) / 255
        array[5, 7, 1] = value
        return array

    return make


def _varying_alpha() -> np.ndarray:
    rgba = np.dstack([smear_rgb(), np.zeros(SMEAR_SHAPE, np.uint8)])
    rgba[:, : SMEAR_SHAPE[1] // 2, 3] = 255
    return rgba


def _channels(n: int) -> Callable[[], np.ndarray]:
    return lambda: np.stack([_grey(np.uint8, 255)] * n, axis=-1)


def _write_zero_size(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile: "writing zero-size array"
        tifffile.imwrite(path, np.zeros((0, 16), np.uint8))


def _write_ragged_stack(path: Path) -> None:
    """Three pages, the middle one of another shape."""
    with tifffile.TiffWriter(path) as tif:
        for page in (smear_rgb(), smear_rgb()[:64, :64], smear_rgb()):
            tif.write(page[..., 1], photometric="minisblack")


def huge_tiff_bytes(side: int = HUGE_SIDE) -> bytes:
    """A valid little-endian TIFF header whose one strip claims ``side`` × ``side`` uint8."""
    entries = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 4, side),  # ImageWidth
        (257, 4, side),  # ImageLength
        (258, 3, 8),  # BitsPerSample
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # Photometric: min-is-black
        (273, 4, 8),  # StripOffsets
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, side),  # RowsPerStrip
        (279, 4, side * side % 2**32),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack("<HHI", tag, kind, 1) + struct.pack("<I", value)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 16) + b"\x00" * 8 + ifd


def huge_png_bytes(side: int = HUGE_SIDE) -> bytes:
    """A PNG whose header (IHDR) claims ``side`` × ``side`` RGB, with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


CASES: tuple[Case, ...] = (
    Case("empty file", "empty.png", _write_bytes(b""), "the file is empty"),
    Case(
        "truncated JPEG",
        "truncated.jpg",
        _write_bytes(lambda: _jpeg_bytes()[:400]),
        "cannot be read as an image (Truncated File Read)",
    ),
    Case(
        "truncated TIFF",
        "truncated.tif",
        _write_bytes(lambda: _tiff_bytes(smear_rgb())[:5000]),
        "cannot be read",
    ),
    Case(
        "ImageJ stack cut short",
        "imagej_cut_short.tif",
        functools.partial(_stack_cut_short, imagej=True),
        "its ImageJ metadata lists 4 images but only 1 can be read: a file cut short",
    ),
    Case(
        "stack cut inside its last page",
        "stack_cut_short.tif",
        functools.partial(_stack_cut_short, imagej=False),
        "cannot be read",
        axes="TYX",
    ),
    Case("zero-size image", "zero.tif", _write_zero_size, "the image has zero size"),
    Case(
        "1×1 image",
        "one_pixel.png",
        _write_image(lambda: np.full((1, 1, 3), 9, np.uint8)),
        "need at least 8×8 px",
    ),
    Case(
        "constant frame",
        "constant.png",
        _write_image(lambda: np.full((64, 64, 3), 200, np.uint8)),
        "the image is constant",
    ),
    Case(
        "NaN values",
        "nan.tif",
        _write_tiff(_with_bad(np.nan), photometric="rgb"),
        "NaN or infinite value(s)",
    ),
    Case(
        "infinite values",
        "inf.tif",
        _write_tiff(_with_bad(np.inf), photometric="rgb"),
        "NaN or infinite value(s)",
    ),
    Case(
        "negative floats", "negative.tif", _write_tiff(lambda: _grey(np.float32, 2.0, -1.0)), None
    ),
    Case("16-bit integers", "uint16.tif", _write_tiff(lambda: _grey(np.uint16, 4000, 100)), None),
    Case("32-bit integers", "int32.tif", _write_tiff(lambda: _grey(np.int32, 1e6, -5e5)), None),
    Case("bool frame", "bool.tif", _write_tiff(lambda: _grey(np.float32) > 0.4), None),
    Case(
        "5-D array",
        "five_d.tif",
        _write_tiff(lambda: np.random.default_rng(0).integers(0, 255, (2, 3, 4, 16, 16), np.uint8)),
        "cannot tell the axes of a 5-D image",
    ),
    Case(
        "2 channels, axes inferred",
        "two_channels.tif",
        _write_tiff(_channels(2)),
        "give them explicitly, e.g. 'YXC'",
    ),
    Case("2 channels, --axes YXC", "two_channels_yxc.tif", _write_tiff(_channels(2)), None, "YXC"),
    Case(
        "4 channels, varying 4th",
        "rgba_varying.png",
        _write_image(_varying_alpha),
        "4 channels with a varying 4th channel",
    ),
    Case(
        "RGBA TIFF, varying alpha (axes YXS in its metadata, not the user's)",
        "rgba_varying.tif",
        _write_tiff(_varying_alpha, photometric="rgb", extrasamples=["unassalpha"]),
        "4 channels with a varying 4th channel",
    ),
    Case(
        "4 channels, --axes YXC",
        "four_channels_yxc.tif",
        _write_tiff(_channels(4)),
        None,
        "YXC",
    ),
    Case(
        "7 channels, axes inferred",
        "seven_channels.tif",
        _write_tiff(_channels(7)),
        "give them explicitly, e.g. 'YXC'",
    ),
    Case(
        "7 channels, --axes YXC", "seven_channels_yxc.tif", _write_tiff(_channels(7)), None, "YXC"
    ),
    Case(
        "axes CYX in TIFF metadata",
        "cyx.tif",
        _write_tiff(lambda: np.moveaxis(smear_rgb(), -1, 0), metadata={"axes": "CYX"}),
        None,
    ),
    Case(
        "axes given as XYC",
        "xyc.tif",
        _write_tiff(lambda: smear_rgb().transpose(1, 0, 2)),
        None,
        "XYC",
    ),
    Case(
        "one page of another shape",
        "ragged.tif",
        _write_ragged_stack,
        "(the second starts at page 1)",
    ),
    Case(
        "text file named .png",
        "text.png",
        _write_bytes(b"hello, not an image\n" * 20),
        "cannot be read as an image",
    ),
    Case(
        "HTML named .tif",
        "page.tif",
        _write_bytes(b"<html><body>404</body></html>"),
        "cannot be read as an image",
    ),
    Case("huge TIFF header", "huge.tif", _write_bytes(huge_tiff_bytes), "exceed the pixel budget"),
    Case("huge PNG header", "huge.png", _write_bytes(huge_png_bytes), "over the pixel budget"),
    Case("unicode and spaces in the path", "smear ü 血 x.png", _write_image(smear_rgb), None),
)


def write_corpus(folder: Path, cases: tuple[Case, ...] = CASES) -> dict[str, Path]:
    """Write every case into ``folder``; returns case name → file path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in cases:
        path = folder / case.filename
        case.write(path)
        paths[case.name] = path
    return paths
