"""Reading microscope frames and stacks into one canonical layout.

Every image leaves this module as a float32 array with axes **(T, Y, X, C)** and
values in [0, 1]:

* 2-D grey frames get T = 1 and C = 1; RGB(A) frames get T = 1 and C = 3
  (a constant alpha channel is dropped).
* Axes are taken from the caller (``axes="TYXC"``), else from TIFF/OME metadata,
  else inferred from the shape; when the shape is ambiguous an
  :class:`~napari_bloodcell.errors.InputImageError` asks for ``axes``.
* Intensities are normalised by an explicit, documented rule
  (:func:`normalise_intensity`), never by accident of dtype.

Two entry points: :func:`read_image` loads the whole image (small inputs, napari
layers); :func:`open_lazy` opens TIFF/OME-TIFF stacks (and Zarr when ``zarr`` is
installed) as a Dask array read page by page, so a stack of any length is analysed
with memory bounded by the frames in flight (see :func:`lazy_image_from_array` for
how its intensity mapping is chosen from a bounded sample of frames).
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import re
import signal
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputImageError, one_line

if TYPE_CHECKING:
    import dask.array as da

CANONICAL_AXES = "TYXC"
MIN_FRAME_SIDE_PX = 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
ZARR_SUFFIX = ".zarr"
TIFF_READ_TASK = "read-tiff-page"
"""Name of the Dask tasks that read one TIFF page each."""
PICTURE_READ_TASK = "read-picture"
"""Name of the Dask tasks that decode one PNG/JPEG/BMP file each."""
INTENSITY_SAMPLE_FRAMES = 16
"""At most this many frames, evenly spaced over the stack, set a lazy stack's intensity range."""
INTENSITY_SAMPLE_VALUES = 2**24
"""…and at most this many values (64 MB as float32): every n-th pixel of each sampled frame
(in Y and in X) when they are big."""

MAX_FRAME_PIXELS_ENV = "NAPARI_BLOODCELL_MAX_FRAME_PIXELS"
DEFAULT_MAX_FRAME_PIXELS = 64 * 2**20
"""Pixel budget of one frame (Y × X) unless ``$NAPARI_BLOODCELL_MAX_FRAME_PIXELS`` says otherwise:
larger images are refused from their header, before any pixel is decoded."""

# Letters accepted in an axes string and what they mean for this 2-D + time pipeline.
_AXIS_SYNONYMS = {"T": "T", "Y": "Y", "X": "X", "C": "C", "S": "C", "I": "T", "Q": "T", "Z": "Z"}


@dataclass(frozen=True)
class LoadedImage:
    """An image in canonical layout.

    Attributes
    ----------
    data : float32 array (T, Y, X, C), values in [0, 1].
    source : the file it came from (or ``"<array>"``).
    original_axes : the axes of the input, e.g. ``"YXC"`` or ``"TCYX"``.
    original_dtype : dtype of the stored values before normalisation.
    pixel_size_um : µm per pixel from the file's metadata, or None if unknown.
    """

    data: np.ndarray
    source: str
    original_axes: str
    original_dtype: str
    pixel_size_um: float | None = None

    @property
    def n_frames(self) -> int:
        return self.data.shape[0]

    @property
    def n_channels(self) -> int:
        return self.data.shape[-1]


def read_image(path: str | Path, axes: str | None = None) -> LoadedImage:
    """Read a JPEG/PNG/BMP/TIFF/OME-TIFF file into (T, Y, X, C) float32 in [0, 1].

    ``axes`` overrides the inferred axis order (letters T, Y, X, C; e.g. ``"TCYX"``).
    Raises :class:`InputImageError` naming the file for anything unreadable or unusable.
    """
    return _image_from_file(
        path, axes, IMAGE_SUFFIXES, _read_tiff, _read_with_imageio, image_from_array
    )


def _decode(path: Path, read_tiff, read_picture) -> tuple:
    """``(array, axes or None, pixel size or None)`` by the reader for the file's type
    (``read_tiff`` for TIFFs, ``read_picture`` for PNG/JPEG/BMP); any decoder failure
    becomes an :class:`InputImageError`."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            return read_tiff(path)
        if suffix == ZARR_SUFFIX:
            return _open_zarr_lazily(path)
        return read_picture(path), None, None
    except InputImageError:
        raise
    except Exception as exc:  # any decoder failure means a corrupt or foreign file
        raise InputImageError(f"{path}: cannot be read as an image ({one_line(exc)})") from exc


def _naming_file(path: Path, error: InputImageError) -> InputImageError:
    """The error (of the same class) with the file's name in front, unless it names the
    file already."""
    message = str(error)
    return type(error)(message if str(path) in message else f"{path}: {message}")


def _checked_image_path(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    """The path, or an :class:`InputImageError` if it is missing, empty or of another type."""
    path = Path(path)
    if path.suffix.lower() == ZARR_SUFFIX and ZARR_SUFFIX in suffixes and path.is_dir():
        return path
    if path.is_dir():
        zarr = path.suffix.lower() == ZARR_SUFFIX
        hint = " (a Zarr store is read lazily: open_lazy, or the batch)" if zarr else ""
        raise InputImageError(f"{path}: is a folder, not an image file{hint}")
    if not path.is_file():
        raise InputImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path}: the file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise InputImageError(
            f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(suffixes)}"
        )
    return path


def image_from_array(
    array: np.ndarray,
    axes: str | None = None,
    *,
    source: str = "<array>",
    pixel_size_um: float | None = None,
    channels_named: bool | None = None,
    alpha_possible: bool = True,
    colour: bool | None = None,
) -> LoadedImage:
    """Bring an in-memory array to canonical (T, Y, X, C) float32 in [0, 1].

    ``channels_named``: the user named the axes, so a varying 4th channel is a channel,
    not an RGBA alpha (default: whether ``axes`` is given). ``alpha_possible=False``: the
    file's metadata names its channels (OME, ImageJ), so a constant 4th channel is an
    empty channel, kept, not an alpha to drop. ``colour``: an RGB picture, mapped by its
    bit depth (:func:`intensity_mapping`); default: 3 channels, none named by metadata.
    """
    array = np.asarray(array)
    tyxc, original_axes = _canonical_layout(array, axes)
    named = bool(axes) if channels_named is None else channels_named
    if alpha_possible:
        tyxc = _drop_constant_alpha(tyxc, tyxc, named)
    return LoadedImage(
        data=normalise_intensity(tyxc, _is_colour(colour, alpha_possible, tyxc.shape)),
        source=source,
        original_axes=original_axes,
        original_dtype=str(array.dtype),
        pixel_size_um=pixel_size_um,
    )


def _canonical_layout(array, axes: str | None):
    """Checked (T, Y, X, C) view of a numpy or dask array and the input's axes string."""
    if array.dtype.kind not in "biuf":
        raise InputImageError(f"unsupported pixel type {array.dtype}; expected integers or floats")
    if array.size == 0:
        raise InputImageError(f"the image has zero size (shape {array.shape})")
    original_axes = normalise_axes(axes, array.ndim) if axes else infer_axes(array.shape)
    tyxc = to_canonical_axes(array, original_axes)
    if tyxc.shape[1] < MIN_FRAME_SIDE_PX or tyxc.shape[2] < MIN_FRAME_SIDE_PX:
        hint = (
            ""
            if axes
            else f" (axes {original_axes!r} inferred from shape {array.shape}: if they are "
            f"wrong, give them explicitly, e.g. 'YXC')"
        )
        raise InputImageError(
            f"frames are {tyxc.shape[1]}×{tyxc.shape[2]} px; need at least "
            f"{MIN_FRAME_SIDE_PX}×{MIN_FRAME_SIDE_PX} px{hint}"
        )
    check_frame_pixels(tyxc.shape[1], tyxc.shape[2])
    return tyxc, original_axes


def max_frame_pixels() -> int:
    """The pixel budget of one frame: ``$NAPARI_BLOODCELL_MAX_FRAME_PIXELS`` or 64 Mpx."""
    value = os.environ.get(MAX_FRAME_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_FRAME_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise InputImageError(
            f"${MAX_FRAME_PIXELS_ENV}={value!r}: expected a positive whole number of pixels"
        )
    return int(value)


def check_frame_pixels(height: int, width: int) -> None:
    """Refuse frames of more than :func:`max_frame_pixels` pixels (before reading them)."""
    budget = max_frame_pixels()
    if height * width > budget:
        raise InputImageError(
            f"frames of {height}×{width} px ({height * width / 1e6:.1f} Mpx) exceed the "
            f"pixel budget of {budget / 1e6:.1f} Mpx per frame; crop or downsample the "
            f"image, or raise ${MAX_FRAME_PIXELS_ENV}"
        )


@dataclass(frozen=True, kw_only=True)
class LazyImage(LoadedImage):
    """A stack in canonical layout whose frames are read only when computed.

    Attributes
    ----------
    data : dask float32 array (T, Y, X, C), values in [0, 1], one frame per chunk.
    source, original_axes, original_dtype, pixel_size_um : as in :class:`LoadedImage`.
    intensity : the mapping of stored values to [0, 1] shared by every frame.
    sampled_frames : the frame indices the mapping was chosen from.
    """

    data: da.Array
    intensity: IntensityMapping
    sampled_frames: tuple[int, ...]


def open_lazy(path: str | Path, axes: str | None = None) -> LazyImage:
    """Open an image file as a lazy (T, Y, X, C) float32 stack in [0, 1].

    TIFF and OME-TIFF stacks are read page by page when frames are computed; a
    ``.zarr`` folder (needs the ``zarr`` package) chunk by chunk; a JPEG/PNG/BMP frame
    is decoded here (to check it and sample its intensities; milliseconds) and again when
    computed, so that a batch of thousands holds none in memory. The intensity rule is
    :func:`lazy_image_from_array`'s.
    Raises :class:`InputImageError` naming the file for anything unreadable or unusable;
    a page that turns out unreadable later raises it when that frame is computed.
    """
    suffixes = (*IMAGE_SUFFIXES, ZARR_SUFFIX)
    return _image_from_file(
        path, axes, suffixes, _open_tiff_lazily, _open_picture_lazily, lazy_image_from_array
    )


def _open_picture_lazily(path: Path) -> da.Array:
    """A PNG/JPEG/BMP file as a dask array decoded when computed (decoded once here to
    learn its shape and refuse a damaged file now; that copy serves the first compute,
    the intensity sample of :func:`lazy_image_from_array`)."""
    import dask.array as da
    from dask.base import tokenize

    picture = _Picture(path, _read_with_imageio(path))
    name = f"{PICTURE_READ_TASK}-{tokenize(str(path), path.stat().st_mtime_ns)}"
    return da.from_array(
        picture, chunks=-1, name=name, asarray=False, meta=np.empty((0,), picture.dtype)
    )


class _Picture:
    """Array-like PNG/JPEG/BMP file for Dask, decoded at each ``[...]`` — but the first,
    which hands over the copy decoded when the file was opened (so that opening a file
    decodes it once, and a batch of thousands holds none of them in memory)."""

    def __init__(self, path: Path, decoded: np.ndarray):
        self.path = path
        self.shape, self.dtype, self.ndim = decoded.shape, decoded.dtype, decoded.ndim
        self._decoded: np.ndarray | None = decoded

    def __getitem__(self, index) -> np.ndarray:
        decoded, self._decoded = self._decoded, None
        return (_read_with_imageio(self.path) if decoded is None else decoded)[index]

    def __getstate__(self) -> dict:  # a Dask worker decodes the file itself
        return {**self.__dict__, "_decoded": None}


def _image_from_file(path, axes: str | None, suffixes, read_tiff, read_picture, from_array):
    """Check ``path``, decode it (TIFFs with ``read_tiff``, PNG/JPEG/BMP with
    ``read_picture``) and bring it to the canonical layout with ``from_array``; any
    :class:`InputImageError` names the file."""
    path = _checked_image_path(path, suffixes)
    array, metadata_axes, pixel_size = _decode(path, read_tiff, read_picture)
    # a C of the metadata (OME, ImageJ, Zarr) names channels, none of them an alpha;
    # samples (an RGBA TIFF's YXS) do not: their 4th may be an alpha
    channels_in_metadata = "C" in (metadata_axes or "")
    try:
        return from_array(
            array,
            axes=axes or metadata_axes,
            source=str(path),
            pixel_size_um=pixel_size,
            channels_named=bool(axes),
            alpha_possible=not channels_in_metadata,
        )
    except InputImageError as exc:
        raise _naming_file(path, exc) from None


def lazy_image_from_array(
    array,
    axes: str | None = None,
    *,
    source: str = "<array>",
    pixel_size_um: float | None = None,
    channels_named: bool | None = None,
    alpha_possible: bool = True,
    colour: bool | None = None,
) -> LazyImage:
    """Bring a numpy or dask array to a lazy canonical (T, Y, X, C) float32 stack in [0, 1].

    ``channels_named``, ``alpha_possible`` and ``colour`` as in :func:`image_from_array`.

    Memory rule: nothing but a bounded sample is computed here. The intensity mapping
    (:func:`intensity_mapping`) is chosen from up to :data:`INTENSITY_SAMPLE_FRAMES`
    frames evenly spaced over the stack (first and last included), of which every n-th
    pixel in Y and X when all of them would hold more than :data:`INTENSITY_SAMPLE_VALUES`
    values; for stacks that short and small it is exactly the whole-stack rule of
    :func:`read_image`. Consequences for other stacks: a 16-bit stack's percentiles come
    from the sample; a float stack within [0, 1] in the sample is passed through clipped
    to [0, 1]; a constant sample is refused; NaN or infinite values are refused when the
    frame holding them is computed.
    """
    import dask.array as da

    array = da.asarray(array)
    tyxc, original_axes = _canonical_layout(array, axes)
    tyxc = tyxc.rechunk({0: 1, 1: -1, 2: -1, 3: -1})
    sampled_frames, step = _intensity_sample(tyxc.shape)
    sample = tyxc[list(sampled_frames), ::step, ::step].compute(scheduler="sync")
    named = bool(axes) if channels_named is None else channels_named
    for t, frame in zip(sampled_frames, sample, strict=True):
        refuse_non_finite(frame, where=f"{source}: frame {t}")
    if alpha_possible:
        tyxc = _drop_constant_alpha(tyxc, sample, named)
    try:
        colour = _is_colour(colour, alpha_possible, tyxc.shape)
        mapping = intensity_mapping(sample[..., : tyxc.shape[-1]], colour)
    except InputImageError as exc:  # a constant sample
        whole = len(sampled_frames) == tyxc.shape[0] and step == 1
        where = "" if whole else f" (frames {_listed(sampled_frames)} sampled, every {step} px)"
        raise InputImageError(f"{source}{where}: {exc}") from None
    data = tyxc.map_blocks(
        _normalise_frames, mapping, source, dtype=np.float32, meta=np.empty((0,) * 4, np.float32)
    )
    return LazyImage(
        data=data,
        source=source,
        original_axes=original_axes,
        original_dtype=str(array.dtype),
        intensity=mapping,
        sampled_frames=sampled_frames,
        pixel_size_um=pixel_size_um,
    )


def _intensity_sample(tyxc_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """The frames that set a stack's intensity range, evenly spaced (first and last
    included), and the pixel step in Y and X that keeps them within the sample budget."""
    n_frames, values_per_frame = tyxc_shape[0], int(np.prod(tyxc_shape[1:]))
    n_sampled = min(n_frames, INTENSITY_SAMPLE_FRAMES)
    frames = tuple(int(t) for t in np.unique(np.linspace(0, n_frames - 1, n_sampled).round()))
    if len(frames) == 1:  # a single frame whole, as read_image maps it
        return frames, 1
    step = math.ceil(math.sqrt(len(frames) * values_per_frame / INTENSITY_SAMPLE_VALUES))
    return frames, max(1, step)


def _listed(numbers: tuple[int, ...]) -> str:
    """``0, 10, 19`` (the first and last three beyond six numbers)."""
    shown = numbers if len(numbers) <= 6 else (*numbers[:3], "…", *numbers[-3:])
    return ", ".join(map(str, shown))


def _normalise_frames(
    frames: np.ndarray, mapping: IntensityMapping, source: str, block_id=None
) -> np.ndarray:
    """One (1, Y, X, C) block of stored values → float32 in [0, 1] (block i is frame i)."""
    refuse_non_finite(frames, where=f"{source}: frame {block_id[0]}")
    return mapping.apply(frames)


def normalise_axes(axes: str, ndim: int) -> str:
    """Validate a user axes string (e.g. ``"tyxc"``) against ``ndim`` and return it upper-case."""
    axes = axes.upper()
    unknown = sorted(set(axes) - set(_AXIS_SYNONYMS))
    if unknown:
        raise InputImageError(
            f"unknown axis letter(s) {''.join(unknown)!r} in axes {axes!r}; use T, Y, X and C"
        )
    if len(axes) != ndim:
        raise InputImageError(f"axes {axes!r} name {len(axes)} axes but the image has {ndim}")
    if len(set(axes)) != len(axes):
        raise InputImageError(f"axes {axes!r} repeat a letter")
    if "Y" not in axes or "X" not in axes:
        raise InputImageError(f"axes {axes!r} must contain Y and X")
    return axes


MAX_GUESSED_CHANNELS = 4
"""An axis this short may be channels (RGB(A), or a few fluorescence channels)."""


def infer_axes(shape: tuple[int, ...]) -> str:
    """Guess the axes of an array from its shape, or raise asking for explicit axes.

    Rules: 2-D → YX; 3-D with a last axis of 3 or 4 → YXC (RGB/RGBA), with a first axis
    of 2–4 → refused (frames, or channels first?), else TYX; 4-D with a last axis of 1–4
    → TYXC, with a second axis of 1–4 → TCYX.
    """
    ndim = len(shape)
    if ndim == 2:
        return "YX"
    if ndim == 3:
        if shape[-1] in (3, 4) and shape[0] > 4:
            return "YXC"
        if shape[0] in (3, 4) and shape[-1] in (3, 4):
            raise InputImageError(
                f"cannot tell the axes of shape {shape}; give them explicitly "
                f"(e.g. axes 'TYX' or 'YXC')"
            )
        if 2 <= shape[0] <= MAX_GUESSED_CHANNELS:  # (1, Y, X): one plane either way
            raise InputImageError(
                f"cannot tell whether the {shape[0]} planes of shape {shape} are frames or "
                f"channels; give the axes explicitly ('TYX' or 'CYX')"
            )
        return "TYX"
    if ndim == 4:
        if shape[-1] <= 4 < shape[1]:
            return "TYXC"
        if shape[1] <= 4 < shape[-1]:
            return "TCYX"
        raise InputImageError(
            f"cannot tell the axes of shape {shape}; give them explicitly (e.g. axes 'TYXC')"
        )
    raise InputImageError(
        f"cannot tell the axes of a {ndim}-D image of shape {shape}; give them explicitly "
        f"(letters T, Y, X, C, and Z for an axis of size 1)"
    )


def to_canonical_axes(array: np.ndarray, axes: str) -> np.ndarray:
    """Reorder ``array`` with the given axes to (T, Y, X, C), adding missing T and C axes.

    Singleton axes other than Y and X are dropped first; a depth axis (Z) of size > 1 is
    refused: this pipeline is 2-D + time.
    """
    singletons = [i for i, a in enumerate(axes) if array.shape[i] == 1 and a not in "YX"]
    array = np.squeeze(array, axis=tuple(singletons))
    canonical = "".join(_AXIS_SYNONYMS[a] for i, a in enumerate(axes) if i not in singletons)
    for axis_letter in "TC":
        if canonical.count(axis_letter) > 1:
            raise InputImageError(f"axes {axes!r} name more than one {axis_letter} axis")
    if "Z" in canonical:
        z = canonical.index("Z")
        if array.shape[z] != 1:
            raise InputImageError(
                f"the image has a depth (Z) axis of size {array.shape[z]}; napari-bloodcell "
                f"analyses 2-D frames over time: pass axes naming that axis T if it is time"
            )
        array = np.take(array, 0, axis=z)
        canonical = canonical.replace("Z", "")
    for letter in "TC":
        if letter not in canonical:
            array = array[..., np.newaxis]
            canonical += letter
    return np.transpose(array, [canonical.index(letter) for letter in CANONICAL_AXES])


@dataclass(frozen=True)
class IntensityMapping:
    """value → clip((value − low) / (high − low), 0, 1) as float32."""

    low: float
    high: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Map stored values (any shape) to float32 in [0, 1]."""
        if values.dtype == bool:
            return values.astype(np.float32)
        magnitude = max(abs(self.low), abs(self.high))
        if magnitude > _FLOAT32_SAFE:  # scale first: differences could overflow even float64
            values = values.astype(np.float64) / magnitude
            low, high = self.low / magnitude, self.high / magnitude
        else:
            values = values.astype(np.float64 if _needs_float64(values.dtype) else np.float32)
            low, high = self.low, self.high
        return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


_FLOAT32_SAFE = 1e30
"""Beyond this magnitude differences of float32 values can overflow: compute in float64."""


def _needs_float64(dtype: np.dtype) -> bool:
    """64-bit floats and 32/64-bit integers lose range or precision in float32."""
    return (dtype.kind == "f" and dtype.itemsize > 4) or (
        dtype.kind in "iu" and dtype.itemsize >= 4
    )


def intensity_mapping(values: np.ndarray, colour: bool = False) -> IntensityMapping:
    """Choose the mapping of stored values to [0, 1] from ``values`` by an explicit rule.

    * ``bool`` → 0 / 1.
    * ``uint8`` → value / 255 (the file's own scale: brightfield colours stay comparable).
    * ``colour`` (an RGB picture; ``values`` (…, C)) that is bright-field (most of it bright
      background: :func:`_bright_field`) and not negative, in other integers or floats
      above 2 → value / the largest value of the bit depth that holds the maximum (even
      bits, at least 8: 255, 1023, 4095, 16383, 65535 …), so that a 16-bit or 12-bit
      export of a smear has the colours of its 8-bit version (a stretch shifts hues, and
      the smear detector reads colours); such floats up to 2 → clipped to [0, 1]. A dark
      colour picture (fluorescence saved as RGB, with a camera's dark level) is stretched.
    * other integers (e.g. 12/16-bit fluorescence cameras) and floats outside [0, 1] →
      linear stretch of the 0.1–99.9 percentile range of ``values`` to [0, 1], clipped.
    * floats already within [0, 1] → unchanged.

    Raises :class:`InputImageError` for NaN/inf values or constant values.
    """
    if values.dtype == bool:
        return IntensityMapping(0.0, 1.0)
    if values.dtype == np.uint8:
        if values.min() == values.max():
            raise _constant_image_error(values)
        return IntensityMapping(0.0, 255.0)
    refuse_non_finite(values)
    as_float = values.astype(np.float64 if _needs_float64(values.dtype) else np.float32, copy=False)
    low, high = float(as_float.min()), float(as_float.max())
    if low == high:
        raise _constant_image_error(values)
    if values.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        return IntensityMapping(0.0, 1.0)
    if colour and low >= 0.0 and _bright_field(as_float):
        return IntensityMapping(0.0, _bit_depth_maximum(high))
    percentiles = (float(v) for v in np.percentile(as_float, [0.1, 99.9]))
    low_percentile, high_percentile = percentiles
    if high_percentile <= low_percentile:  # nearly constant with rare outliers: full range
        return IntensityMapping(low, high)
    return IntensityMapping(low_percentile, high_percentile)


BRIGHT_FIELD_MEDIAN = 0.35
"""Where the median of a bright-field picture's mean channel lies, at least, in its
0.1–99.9 percentile range: 0.46–0.95 on every BCCD, Zheng 2018 and sampled PBC image;
at most 0.22 on flowcatchR's fluorescence frames (16-bit, with a dark level)."""


def _bright_field(values: np.ndarray) -> bool:
    """Whether a colour picture (…, C) is mostly bright background (a stained smear under
    transmitted light), judged on the mean of its channels (:data:`BRIGHT_FIELD_MEDIAN`)."""
    low, median, high = np.percentile(values.mean(axis=-1), [0.1, 50, 99.9])
    return bool(high > low and (median - low) / (high - low) >= BRIGHT_FIELD_MEDIAN)


COLOUR_FLOAT_TOLERANCE = 2.0
"""Colour floats up to this are on the [0, 1] scale (overshoot of processing, clipped)."""


def _bit_depth_maximum(high: float) -> float:
    """The largest value of the smallest even bit depth (at least 8) that holds ``high``
    (1 for colour floats up to :data:`COLOUR_FLOAT_TOLERANCE`)."""
    if high <= COLOUR_FLOAT_TOLERANCE:
        return 1.0
    bits = max(8, math.ceil(math.log2(high + 1)))
    return float(2 ** (bits + bits % 2) - 1)


def normalise_intensity(array: np.ndarray, colour: bool = False) -> np.ndarray:
    """Map stored values to float32 in [0, 1] by the rule of :func:`intensity_mapping`.

    The range comes from the whole array, so that all frames of a stack share one mapping.
    """
    return intensity_mapping(array, colour).apply(array)


def refuse_non_finite(values: np.ndarray, where: str = "the image") -> None:
    """Raise :class:`InputImageError` if float ``values`` hold NaN or infinite numbers."""
    if values.dtype.kind != "f":
        return
    n_bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if n_bad:
        raise InputImageError(
            f"{where} contains {n_bad} NaN or infinite value(s); expected finite numbers"
        )


def _constant_image_error(array: np.ndarray) -> InputImageError:
    value = array.flat[0]
    return InputImageError(
        f"the image is constant (every pixel is {value}); there is nothing to segment"
    )


def _drop_constant_alpha(tyxc, sample: np.ndarray, channels_named: bool):
    """RGBA → RGB when alpha is uniform in ``sample`` (frames of ``tyxc``). A varying 4th
    channel is a 4th channel when the user named the axes, else an error (an RGBA image
    with a varying alpha: what would it mean?)."""
    if tyxc.shape[-1] != 4:
        return tyxc
    alpha = sample[..., 3]
    if alpha.min() != alpha.max():
        if channels_named:
            return tyxc
        raise VaryingAlphaError(
            "the image has 4 channels with a varying 4th channel: an RGBA picture with a "
            "varying transparency, which cannot be analysed (save it without transparency, "
            "e.g. flattened on a white background), or 4 fluorescence channels (then give "
            "the axes explicitly, e.g. YXC, and a channel mapping)"
        )
    return tyxc[..., :3]


def _is_colour(colour: bool | None, alpha_possible: bool, tyxc_shape: tuple) -> bool:
    """``colour`` if given, else whether a (T, Y, X, C) image is an RGB picture: 3
    channels that no metadata named as channels (``alpha_possible``)."""
    return colour if colour is not None else alpha_possible and tyxc_shape[-1] == 3


class VaryingAlphaError(InputImageError):
    """An image with a 4th channel that varies, read without named axes: RGBA with a
    transparent part, or 4 channels?"""


def _read_with_imageio(path: Path) -> np.ndarray:
    """Decode a PNG/JPEG/BMP file after checking its header's size against the budget."""
    import imageio.v3 as iio
    from PIL import Image

    try:
        with Image.open(path) as header:
            width, height = header.size
            mode, file_format = header.mode, header.format
    except Image.DecompressionBombError as exc:  # before our own budget can be checked
        raise InputImageError(
            f"{path}: over the pixel budget of Pillow, which decodes PNG/JPEG/BMP "
            f"({one_line(exc)}), whatever ${MAX_FRAME_PIXELS_ENV} says; save the frame as "
            f"TIFF, or raise PIL.Image.MAX_IMAGE_PIXELS in Python"
        ) from None
    try:
        check_frame_pixels(height, width)
    except InputImageError as exc:
        raise InputImageError(f"{path}: {exc}") from None
    channels = PNG_16_BIT_SAMPLES.get(_png_header(path)) if file_format == "PNG" else None
    if channels is not None:
        import imagecodecs  # Pillow decodes 16-bit colour and grey + alpha PNGs to 8 bits

        array = imagecodecs.png_decode(path.read_bytes())[..., :channels]  # (tRNS: an alpha)
    elif mode in PILLOW_COLOUR_SPACES:  # ink or other colour spaces: decoded as their numbers
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    else:
        with warnings.catch_warnings(), _interrupts_deferred():
            warnings.simplefilter("ignore")
            array = np.asarray(iio.imread(path))
    if mode == GREY_ALPHA_MODE or channels == 2:  # (Y, X, 2): not 2 channels, nor Y frames
        return _grey_without_alpha(path, array, sample_axis=2, alpha=array[..., 1])
    return array


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block ends, then act on them as their
    handlers would: imageio's reader interrupted while it is built prints a traceback when
    collected (a batch stopped by Ctrl-C ended with one). Decoding a picture takes
    milliseconds. Only the main thread receives signals; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in handlers:
        signal.signal(signum, lambda number, _frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if received:
            handler = handlers[received[0]]
            if callable(handler):
                handler(received[0], None)  # raises KeyboardInterrupt (or the CLI's Terminated)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), received[0])


PNG_16_BIT_SAMPLES = {(16, 2): 3, (16, 6): 4, (16, 4): 2}
"""(bit depth, colour type) of 16-bit RGB, RGBA and grey + alpha PNGs → their samples."""


def _png_header(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) of a PNG file (its IHDR chunk, the first, holds them at
    bytes 24 and 25)."""
    with open(path, "rb") as file:
        header = file.read(26)
    return (header[24], header[25]) if len(header) == 26 else (0, 0)


def _grey_without_alpha(path: Path, array, sample_axis: int, alpha: np.ndarray):
    """The grey plane of a grey + alpha ``array`` (the two samples on ``sample_axis``, grey
    first; numpy or dask), refused when ``alpha`` (all of it, or a page) varies."""
    if alpha.min() != alpha.max():
        raise VaryingAlphaError(
            f"{path}: a grey image with a varying transparency (alpha); save it "
            f"without transparency"
        )
    return array[(slice(None),) * sample_axis + (0,)]


PILLOW_COLOUR_SPACES = ("CMYK", "YCbCr", "LAB", "HSV")
"""Pillow modes whose channels are not red, green, blue: converted to RGB when read."""
GREY_ALPHA_MODE = "LA"
"""Pillow's mode of grey + alpha pictures: read as grey when the alpha is constant."""


def _read_tiff(path: Path) -> tuple[np.ndarray, str | None, float | None]:
    """Read a (multi-page, OME) TIFF with its axes and pixel size when stated."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise InputImageError(
                f"{path}: cannot be read as an image (the TIFF holds no image series)"
            )
        series = _single_series(path, tif)
        with _reopening_other_files():
            array = series.asarray()
        series_axes = series.axes
        if (alpha_axis := _tiff_alpha_sample_axis(series)) is not None:
            alpha = array.take(1, axis=alpha_axis)  # all pages' alpha: the array is read
            array = _grey_without_alpha(path, array, alpha_axis, alpha)
            series_axes = series_axes.replace("S", "")
        axes = _tiff_axes(series_axes, array.shape)
        pixel_size = _tiff_pixel_size_um(tif)
    return array, axes, pixel_size


def _tiff_alpha_sample_axis(series) -> int | None:
    """The axis of the samples of a grey + alpha TIFF series (photometric min-is-black, one
    extra sample that is an alpha; its axes contain S), else None."""
    import tifffile

    page = series.keyframe
    alphas = (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)
    is_grey_alpha = (
        page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
        and page.samplesperpixel == 2
        and len(page.extrasamples) == 1
        and page.extrasamples[0] in alphas
    )
    return series.axes.index("S") if is_grey_alpha and "S" in series.axes else None


def _open_tiff_lazily(path: Path):
    """The image series of a TIFF (:func:`_single_series`) as a dask array of pages, its
    axes and pixel size."""
    import dask.array as da
    import tifffile
    from dask.base import tokenize

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise InputImageError(
                f"{path}: cannot be read as an image (the TIFF holds no image series)"
            )
        series = _single_series(path, tif)
        pages = _TiffPages.of(path, series, tif.byteorder)
        series_axes, shape = series.axes, pages.shape
        if (alpha_axis := _tiff_alpha_sample_axis(series)) is not None:
            # the first page's alpha decides, as a stack's sampled frames do for RGBA
            page_axis = alpha_axis - (len(shape) - len(pages.page_shape))
            first_alpha = series.keyframe.asarray().take(1, axis=page_axis)
            series_axes = series_axes.replace("S", "")
            shape = shape[:alpha_axis] + shape[alpha_axis + 1 :]
        axes = _tiff_axes(series_axes, shape)
        pixel_size = _tiff_pixel_size_um(tif)
    page_dims = len(pages.page_shape)
    chunks = (1,) * (len(pages.shape) - page_dims) + pages.page_shape
    name = f"{TIFF_READ_TASK}-{tokenize(pages)}"
    array = da.from_array(
        pages, chunks=chunks, name=name, asarray=False, meta=np.empty((0,), pages.dtype)
    )
    if alpha_axis is not None:
        array = _grey_without_alpha(path, array, alpha_axis, first_alpha)
    return array, axes, pixel_size


def _single_series(path: Path, tif):
    """The TIFF's one image series, its frames checked against the pixel budget.

    A file with several series (pages of different shapes, or separately written
    images) is refused: analysing only the first would silently drop the others.
    """
    series = [s for s in tif.series if not s.keyframe.is_reduced]
    if not series:
        raise InputImageError(
            f"{path}: the TIFF holds only reduced-resolution images (thumbnails or pyramid "
            f"levels), no full-resolution one"
        )
    if len(series) > 1:
        shapes = ", ".join("×".join(map(str, s.shape)) for s in series[:4])
        raise InputImageError(
            f"{path}: the TIFF holds {len(series)} image series of shapes {shapes}"
            f"{' …' if len(series) > 4 else ''} (the second starts at page "
            f"{series[1].pages[0].index}); save one stack of same-shape pages per file"
        )
    _check_whole_ome_set(path, tif, series[0])
    keyframe = series[0].keyframe
    _check_imagej_planes(path, tif, series[0])
    try:
        check_frame_pixels(keyframe.imagelength, keyframe.imagewidth)
    except InputImageError as exc:
        raise InputImageError(f"{path}: {exc}") from None
    return series[0]


def _check_imagej_planes(path: Path, tif, series) -> None:
    """Refuse an ImageJ file holding fewer planes than its metadata lists: cut short (an
    incomplete copy or download), its later pages are lost and tifffile falls back to the
    first page alone, which was analysed as the whole movie."""
    listed = int((tif.imagej_metadata or {}).get("images", 1)) if tif.is_imagej else 1
    planes = int(np.prod(series.shape)) // max(1, int(np.prod(series.keyframe.shape)))
    if 0 < planes < listed:  # (a zero-size image is refused as such)
        raise InputImageError(
            f"{path}: its ImageJ metadata lists {listed} images but only {planes} can be "
            f"read: a file cut short (an incomplete copy or download)? Copy it again"
        )


@contextlib.contextmanager
def _reopening_other_files() -> Iterator[None]:
    """Silence tifffile's warning that it reopens a closed file: it does so reading a
    multi-file OME-TIFF's series at once (correctly: the same frames as page by page)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*reading array from closed file")
        yield


class PartOfAnotherFileError(InputImageError):
    """The file is a later part of a multi-file OME-TIFF (e.g. Micro-Manager's
    ``…_MMStack_1.ome.tif``): its frames are read, with the others, from ``first_file``."""

    def __init__(self, path: Path, first_file: Path):
        super().__init__(
            f"{path}: part of the multi-file OME-TIFF {first_file.name}, which holds its "
            f"metadata and reads all its files: analyse {first_file.name} (analysing this "
            f"part too would count its frames twice)"
        )
        self.first_file = first_file


def _check_whole_ome_set(path: Path, tif, series) -> None:
    """Refuse a later file of a multi-file OME-TIFF (:class:`PartOfAnotherFileError`)
    and a series whose files lack some of its pages (an acquisition stopped early, or
    a file of the set missing): its frames would be zeros, or fail one by one."""
    ome = tif.ome_metadata or ""
    if "<BinaryOnly" in ome:
        found = re.search(r'MetadataFile="([^"]+)"', ome)
        first = path.with_name(found.group(1)) if found else Path("(not named)")
        raise PartOfAnotherFileError(path, first)
    pages = series.pages
    first = next((page for page in pages if page is not None), None)
    if series.kind == "ome" and first is not None and first.parent is not tif:
        raise PartOfAnotherFileError(path, path.with_name(Path(first.parent.filename).name))
    missing = [i for i, page in enumerate(pages) if page is None]
    if missing:
        raise InputImageError(
            f"{path}: its metadata lists {len(pages)} pages but {len(missing)} of them "
            f"(from page {missing[0]}) are in none of its files: an acquisition that "
            f"stopped early, or a file of a multi-file OME-TIFF missing? Save the frames "
            f"it holds as a new TIFF (e.g. in Fiji) to analyse them"
        )


@dataclass(frozen=True)
class _TiffPages:
    """Array-like view of one TIFF series that reads one page per ``[...]`` (for Dask).

    Pages are read with tifffile when the series lists them all, at their header's
    offset in their file (this one, or another file of a multi-file OME-TIFF; building
    the series again for every page costs ~0.1 s in a 10,000-page OME-TIFF, and finding
    page i by its index walks the headers of the i pages before it: 31 s to read 8,000
    pages one by one, 1 s at their offsets); a contiguous series whose pages are not all
    listed (ImageJ files over 4 GB) is read at its byte offsets.
    """

    path: str
    shape: tuple[int, ...]
    page_shape: tuple[int, ...]
    dtype: np.dtype
    stored_dtype: np.dtype  # with the file's byte order
    data_offset: int | None
    page_offsets: tuple[int, ...] | None = None  # of the listed pages' headers (IFDs)
    other_files: tuple[str, ...] = ()  # a multi-file OME-TIFF's other files, holding …
    page_file: np.ndarray | None = field(default=None, compare=False)  # … page i when > 0

    @classmethod
    def of(cls, path: Path, series, byteorder: str) -> _TiffPages:
        shape, page_shape = tuple(series.shape), tuple(series.keyframe.shape)
        if 0 in shape:
            raise InputImageError(f"{path}: the image has zero size (shape {shape})")
        n_pages = int(np.prod(shape)) // max(1, int(np.prod(page_shape)))
        if shape[len(shape) - len(page_shape) :] != page_shape:
            raise InputImageError(
                f"{path}: TIFF pages of shape {page_shape} do not tile the series {shape}"
            )
        listed = len(series.pages) == n_pages
        if not listed and series.dataoffset is None:
            raise InputImageError(
                f"{path}: the TIFF lists {len(series.pages)} of {n_pages} pages and is "
                f"not contiguous; cannot read its frames"
            )
        dtype = np.dtype(series.dtype)
        return cls(
            path=str(path),
            shape=shape,
            page_shape=page_shape,
            dtype=dtype.newbyteorder("="),
            stored_dtype=dtype.newbyteorder(byteorder),
            data_offset=series.dataoffset,
            page_offsets=tuple(int(page.offset) for page in series.pages) if listed else None,
            **(_other_files(path, series.pages) if listed else {}),
        )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __dask_tokenize__(self):
        stat = Path(self.path).stat()
        return (self.path, stat.st_size, stat.st_mtime_ns, self.shape)

    def __getitem__(self, index: tuple) -> np.ndarray:
        """The part of one page that ``index`` selects (one position on every non-page axis)."""
        import tifffile

        n_outer = self.ndim - len(self.page_shape)
        outer, inner = index[:n_outer], tuple(index[n_outer:])
        position = [i if isinstance(i, (int, np.integer)) else (i.start or 0) for i in outer]
        page = int(np.ravel_multi_index(position, self.shape[:n_outer])) if n_outer else 0
        try:
            if self.page_offsets is not None:
                in_file = 0 if self.page_file is None else int(self.page_file[page])
                with tifffile.TiffFile(([self.path, *self.other_files])[in_file]) as tif:
                    tif.filehandle.seek(self.page_offsets[page])
                    data = tifffile.TiffPage(tif, index=page).asarray()
            else:
                count = int(np.prod(self.page_shape))
                offset = self.data_offset + page * count * self.stored_dtype.itemsize
                data = np.fromfile(self.path, self.stored_dtype, count, offset=offset)
                if data.size < count:
                    raise InputImageError("the file ends inside this page: cut short?")
        except Exception as exc:  # a corrupt page: name the file and the page
            raise InputImageError(f"{self.path}: page {page} cannot be read ({exc})") from exc
        block = data.astype(self.dtype, copy=False).reshape((1,) * n_outer + self.page_shape)
        local = tuple(0 if isinstance(i, (int, np.integer)) else slice(0, 1) for i in outer)
        return block[local + inner]


def _other_files(path: Path, pages) -> dict:
    """``other_files`` and ``page_file`` of :class:`_TiffPages` for pages of which some are
    in other files than ``path`` (a multi-file OME-TIFF), else nothing: one small entry
    per page, sent with every unit of work (a path per page made units 15 times larger)."""
    files = [page.parent.filehandle.path for page in pages]
    here = str(Path(path).absolute())
    others = tuple(dict.fromkeys(f for f in files if os.path.abspath(f) != here))
    if not others:
        return {}
    index = {f: i for i, f in enumerate(others, start=1)}
    page_file = np.array([index.get(f, 0) for f in files], dtype=np.uint16)
    return {"other_files": others, "page_file": page_file}


def _open_zarr_lazily(path: Path):
    """A Zarr array, or the full-resolution level of an OME-Zarr image (the store's root,
    or its one image in bioformats2raw's layout), with its axes and pixel size."""
    try:
        import zarr
    except ImportError:
        raise InputImageError(
            f"{path}: reading Zarr needs the zarr package (pip install zarr)"
        ) from None
    import dask.array as da

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return da.from_zarr(node), None, None
    image = _ome_zarr_image(path, node)
    level = _multiscales(image)[0]
    array = da.from_zarr(image[level["datasets"][0]["path"]])
    axes = "".join(_ome_zarr_axis(axis) for axis in level.get("axes", []))  # none before 0.4
    if len(axes) != array.ndim or "?" in axes:
        return array, None, None
    return array, axes, _ome_zarr_pixel_size_um(path, level, axes)


def _multiscales(group) -> list:
    """A group's OME-Zarr ``multiscales`` (under ``ome`` since OME-Zarr 0.5), or []."""
    attributes = group.attrs.asdict()
    return attributes.get("ome", attributes).get("multiscales") or []


def _ome_zarr_image(path: Path, group):
    """The OME-Zarr image of a store: its root, or (bioformats2raw's layout: the root
    marked ``bioformats2raw.layout``, one image group per series ``0``, ``1`` …) its
    only series; a store of several series is refused (one image per input)."""
    if _multiscales(group):
        return group
    attributes = group.attrs.asdict()
    if "bioformats2raw.layout" not in attributes.get("ome", attributes):
        raise InputImageError(f"{path}: a Zarr group without OME multiscales metadata")
    series = sorted(
        (key for key in group.group_keys() if key.isdigit() and _multiscales(group[key])),
        key=int,
    )
    if len(series) != 1:
        raise InputImageError(
            f"{path}: a bioformats2raw store of {len(series)} images (series "
            f"{', '.join(series) or 'none'}); one image per input can be analysed: convert "
            f"each series to a store of its own (bioformats2raw --series <n>)"
        )
    return group[series[0]]


def _ome_zarr_pixel_size_um(path: Path, level: dict, axes: str) -> float | None:
    """The pixel size (µm) of an OME-Zarr image's full-resolution level: the Y and X scale
    of its ``scale`` transformations (the dataset's, then the whole image's) in the axes'
    length ``unit``; None without a known unit (OME-Zarr scales without one are not
    lengths)."""
    scale = np.ones(len(axes))
    for transformations in (
        level["datasets"][0].get("coordinateTransformations", []),
        level.get("coordinateTransformations", []),
    ):
        for transformation in transformations:
            given = transformation.get("scale")  # (None: given by a "path" instead)
            if transformation.get("type") == "scale" and given and len(given) == len(axes):
                scale *= np.asarray(given, dtype=float)
    sizes = []
    for letter in "XY":
        axis = level["axes"][axes.index(letter)]
        unit = str(axis.get("unit", "")).lower() if isinstance(axis, dict) else ""
        sizes.append(_positive(scale[axes.index(letter)], LENGTH_UNITS_UM.get(unit)))
    return _square_pixel_size(path, *sizes)


_OME_ZARR_AXIS_TYPES = {"time": "T", "channel": "C"}


def _ome_zarr_axis(axis) -> str:
    """One letter for an OME-Zarr axis (a name, or a dict with ``name`` and ``type``):
    its name when one letter (t, c, z, y, x), else by its type (time → T, channel → C),
    else ``"?"`` (the axes are then inferred from the shape)."""
    name, kind = (
        (axis.get("name", ""), axis.get("type")) if isinstance(axis, dict) else (axis, None)
    )
    if len(str(name)) == 1:
        return str(name).upper()
    return _OME_ZARR_AXIS_TYPES.get(kind, "?")


def _tiff_axes(tiff_axes: str, shape: tuple[int, ...]) -> str | None:
    """tifffile's axes (e.g. 'TCYX', 'QYX', 'YXS') when they are informative, else None."""
    if len(tiff_axes) != len(shape) or not set(tiff_axes) <= set(_AXIS_SYNONYMS):
        return None
    if "Q" in tiff_axes or "I" in tiff_axes:  # generic page axis: infer from the shape
        return None
    return tiff_axes


LENGTH_UNITS_UM = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "\\u00b5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3,
    "cm": 1e4, "centimeter": 1e4,
}  # fmt: skip
"""Length units of OME, OME-Zarr and ImageJ metadata, in µm (ImageJ may write µ as an
escape)."""


RESOLUTION_UNITS_UM = {2: 25_400.0, 3: 10_000.0, 4: 1_000.0, 5: 1.0}
"""TIFF ``ResolutionUnit`` values (inch, cm, and tifffile's mm and µm) in µm."""
PLAUSIBLE_PIXEL_UM = (0.01, 5.0)
"""Pixel sizes (µm) a plain TIFF's resolution tags are trusted for: a microscope's, not a
document's 72–4,800 dpi (5.3–350 µm per pixel)."""


def _tiff_pixel_size_um(tif) -> float | None:
    """The pixel size in µm from OME metadata (``PhysicalSizeX``/``Y`` and their units, µm
    when none is given), from an ImageJ calibration (``X``/``YResolution`` pixels per
    ``unit``) in a known length unit, else from a plain TIFF's resolution tags (pixels
    per ``ResolutionUnit``) when the size is a microscope's (:data:`PLAUSIBLE_PIXEL_UM`).
    Pixels that are not square are refused (:class:`InputImageError`): every length and
    area in µm assumes square pixels."""
    ome, calibration = tif.ome_metadata, tif.imagej_metadata or {}
    tags = tif.pages[0].tags
    sizes = [None, None]
    if ome:
        sizes = [_ome_quantity(ome, f"PhysicalSize{axis}", LENGTH_UNITS_UM, "µm") for axis in "XY"]
    elif "unit" in calibration:
        factor = LENGTH_UNITS_UM.get(str(calibration["unit"]).lower())
        sizes = [_calibrated_size(tags.get(f"{axis}Resolution"), factor) for axis in "XY"]
    if sizes == [None, None]:  # none stated there (e.g. an OME-TIFF without PhysicalSize)
        unit = tags.get("ResolutionUnit")
        factor = RESOLUTION_UNITS_UM.get(int(unit.value)) if unit is not None else None
        sizes = [_calibrated_size(tags.get(f"{axis}Resolution"), factor) for axis in "XY"]
        low, high = PLAUSIBLE_PIXEL_UM
        if not all(size is not None and low <= size <= high for size in sizes):
            return None
    return _square_pixel_size(tif.filehandle.path, *sizes)


def _square_pixel_size(path, x: float | None, y: float | None) -> float | None:
    """The pixel size ``x`` (µm), refused (:class:`InputImageError`) when ``y`` differs by
    more than 1 %: every length and area in µm assumes square pixels. A size outside the
    range frames are segmented at (:data:`~.segmentation.PIXEL_SIZE_RANGE_UM`) is not a
    microscope's (e.g. an ImageJ calibration in cm at a document's 72 dpi): None."""
    from .segmentation import PIXEL_SIZE_RANGE_UM

    if x is not None and y is not None and abs(x - y) > 0.01 * x:
        raise InputImageError(
            f"{path}: its pixels are {x:g} µm wide and {y:g} µm high; lengths "
            f"and areas in µm need square pixels: resample the image to square pixels "
            f"(e.g. Fiji: Image › Scale)"
        )
    low, high = PIXEL_SIZE_RANGE_UM
    return x if x is None or low <= x <= high else None


TIME_UNITS_S = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "msec": 1e-3,
    "millisecond": 1e-3, "milliseconds": 1e-3, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0, "d": 86400.0, "day": 86400.0,
    "days": 86400.0, "µs": 1e-6, "μs": 1e-6, "us": 1e-6, "\\u00b5s": 1e-6,
}  # fmt: skip
"""Time units of OME (``TimeIncrementUnit``) and ImageJ (``tunit``) metadata, in seconds
(ImageJ may write µ as an escape)."""


def recorded_frame_interval_s(path: str | Path) -> float | None:
    """The time between frames (s) a TIFF records: OME ``TimeIncrement`` (in its
    ``TimeIncrementUnit``, s when none is given), else the median step of the OME planes'
    ``DeltaT`` over ``TheT`` (Micro-Manager records only these), or ImageJ's ``finterval``
    (in its ``tunit``, s when none is given); None for other files, unreadable ones and
    none recorded."""
    import tifffile

    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            ome, calibration = tif.ome_metadata, tif.imagej_metadata or {}
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
    if ome:
        return _ome_quantity(ome, "TimeIncrement", TIME_UNITS_S, "s") or _ome_plane_step_s(ome)
    if "finterval" in calibration:
        factor = TIME_UNITS_S.get(str(calibration.get("tunit", "s")).strip().lower())
        return _positive(calibration["finterval"], factor)
    return None


def _ome_plane_step_s(ome: str) -> float | None:
    """The median step (s) between the time points of the first OME image's planes: each
    ``TheT``'s earliest ``DeltaT`` (in its ``DeltaTUnit``, s when none is given)."""
    from xml.etree import ElementTree

    try:
        pixels = ElementTree.fromstring(ome).find(".//{*}Image/{*}Pixels")
    except ElementTree.ParseError:
        return None
    starts: dict[int, float] = {}
    for plane in pixels.iterfind("{*}Plane") if pixels is not None else ():
        factor = TIME_UNITS_S.get(html.unescape(plane.get("DeltaTUnit", "s")).lower())
        try:
            seconds, t = float(plane.get("DeltaT")) * factor, int(plane.get("TheT"))
        except (TypeError, ValueError):  # no DeltaT or TheT, or a unit not known here
            continue
        if math.isfinite(seconds):
            starts[t] = min(seconds, starts.get(t, math.inf))
    times = [starts[t] for t in sorted(starts)]
    return _positive(float(np.median(np.diff(times))), 1.0) if len(times) > 1 else None


def _ome_quantity(ome: str, name: str, units: dict[str, float], default_unit: str) -> float | None:
    """OME-XML attribute ``name`` (a positive number) times the factor of its ``<name>Unit``
    (``default_unit`` when none is given) in ``units``; None when absent or unknown."""
    value = re.search(rf"""\b{name}\s*=\s*["']([0-9.eE+-]+)["']""", ome)
    unit = re.search(rf"""\b{name}Unit\s*=\s*["']([^"']+)["']""", ome)
    unit_name = html.unescape(unit.group(1)).lower() if unit else default_unit
    return _positive(value.group(1), units.get(unit_name)) if value else None


def _positive(value, factor: float | None) -> float | None:
    """``value × factor`` when that is a positive finite number, else None."""
    try:
        product = float(value) * factor if factor is not None else math.nan
    except (TypeError, ValueError):
        return None
    return product if math.isfinite(product) and product > 0 else None


def _calibrated_size(resolution_tag, factor: float | None) -> float | None:
    """µm per pixel from a TIFF resolution tag (pixels per unit) and the unit in µm."""
    if factor is None or resolution_tag is None:
        return None
    pixels, per_units = resolution_tag.value  # a fraction: pixels per unit
    return per_units / pixels * factor if pixels > 0 and per_units > 0 else None
