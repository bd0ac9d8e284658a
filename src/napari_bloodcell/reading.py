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
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputImageError

CANONICAL_AXES = "TYXC"
MIN_FRAME_SIDE_PX = 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

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
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path}: the file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputImageError(
            f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(IMAGE_SUFFIXES)}"
        )
    try:
        if suffix in (".tif", ".tiff"):
            array, metadata_axes, pixel_size = _read_tiff(path)
        else:
            array, metadata_axes, pixel_size = _read_with_imageio(path), None, None
    except InputImageError:
        raise
    except Exception as exc:  # any decoder failure means a corrupt or foreign file
        raise InputImageError(f"{path}: cannot be read as an image ({exc})") from exc
    try:
        return image_from_array(
            array, axes=axes or metadata_axes, source=str(path), pixel_size_um=pixel_size
        )
    except InputImageError as exc:
        raise InputImageError(f"{path}: {exc}") from None


def image_from_array(
    array: np.ndarray,
    axes: str | None = None,
    *,
    source: str = "<array>",
    pixel_size_um: float | None = None,
) -> LoadedImage:
    """Bring an in-memory array to canonical (T, Y, X, C) float32 in [0, 1]."""
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise InputImageError(f"unsupported pixel type {array.dtype}; expected integers or floats")
    if array.size == 0:
        raise InputImageError(f"the image has zero size (shape {array.shape})")
    original_axes = normalise_axes(axes, array.ndim) if axes else infer_axes(array.shape)
    tyxc = to_canonical_axes(array, original_axes)
    if tyxc.shape[1] < MIN_FRAME_SIDE_PX or tyxc.shape[2] < MIN_FRAME_SIDE_PX:
        raise InputImageError(
            f"frames are {tyxc.shape[1]}×{tyxc.shape[2]} px; need at least "
            f"{MIN_FRAME_SIDE_PX}×{MIN_FRAME_SIDE_PX} px"
        )
    tyxc = _drop_constant_alpha(tyxc)
    data = normalise_intensity(tyxc)
    return LoadedImage(
        data=data,
        source=source,
        original_axes=original_axes,
        original_dtype=str(array.dtype),
        pixel_size_um=pixel_size_um,
    )


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


def infer_axes(shape: tuple[int, ...]) -> str:
    """Guess the axes of an array from its shape, or raise asking for explicit axes.

    Rules: 2-D → YX; 3-D with a last axis of 3 or 4 → YXC (RGB/RGBA), else TYX;
    4-D with a last axis of 1–4 → TYXC, with a second axis of 1–4 → TCYX.
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
        f"(letters T, Y, X, C; singleton axes may be named with any unused letter such as Z)"
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


def normalise_intensity(array: np.ndarray) -> np.ndarray:
    """Map stored values to float32 in [0, 1] by an explicit rule per dtype.

    * ``bool`` → 0 / 1.
    * ``uint8`` → value / 255 (the file's own scale: brightfield colours stay comparable).
    * other integers (e.g. 12/16-bit cameras) and floats outside [0, 1] → linear stretch
      of the whole stack's 0.1–99.9 percentile range to [0, 1], clipped, so that all
      frames of a stack share one mapping.
    * floats already within [0, 1] → unchanged.

    Raises :class:`InputImageError` for NaN/inf values or a constant image.
    """
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        if array.min() == array.max():
            raise _constant_image_error(array)
        return array.astype(np.float32) / np.float32(255)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        n_bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise InputImageError(
            f"the image contains {n_bad} NaN or infinite value(s); expected finite numbers"
        )
    values = array.astype(np.float32, copy=False)
    low, high = float(values.min()), float(values.max())
    if low == high:
        raise _constant_image_error(array)
    if array.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        return values.astype(np.float32, copy=True)
    low, high = (float(v) for v in np.percentile(values, [0.1, 99.9]))
    if high <= low:  # nearly constant with rare outliers: fall back to the full range
        low, high = float(values.min()), float(values.max())
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _constant_image_error(array: np.ndarray) -> InputImageError:
    value = array.flat[0]
    return InputImageError(
        f"the image is constant (every pixel is {value}); there is nothing to segment"
    )


def _drop_constant_alpha(tyxc: np.ndarray) -> np.ndarray:
    """RGBA → RGB when alpha is uniform; a varying alpha is an error (what would it mean?)."""
    if tyxc.shape[-1] != 4:
        return tyxc
    alpha = tyxc[..., 3]
    if alpha.min() != alpha.max():
        raise InputImageError(
            "the image has 4 channels with a varying 4th channel; if these are 4 fluorescence "
            "channels give axes explicitly and a channel mapping"
        )
    return tyxc[..., :3]


def _read_with_imageio(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(iio.imread(path))


def _read_tiff(path: Path) -> tuple[np.ndarray, str | None, float | None]:
    """Read a (multi-page, OME) TIFF with its axes and pixel size when stated."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise InputImageError(
                f"{path}: cannot be read as an image (the TIFF holds no image series)"
            )
        series = tif.series[0]
        array = series.asarray()
        axes = _tiff_axes(series.axes, array.shape)
        pixel_size = _tiff_pixel_size_um(tif)
    return array, axes, pixel_size


def _tiff_axes(tiff_axes: str, shape: tuple[int, ...]) -> str | None:
    """tifffile's axes (e.g. 'TCYX', 'QYX', 'YXS') when they are informative, else None."""
    if len(tiff_axes) != len(shape) or not set(tiff_axes) <= set(_AXIS_SYNONYMS):
        return None
    if "Q" in tiff_axes or "I" in tiff_axes:  # generic page axis: infer from the shape
        return None
    return tiff_axes


def _tiff_pixel_size_um(tif) -> float | None:
    """PhysicalSizeX from OME metadata (µm), if present."""
    ome = tif.ome_metadata
    if not ome:
        return None
    match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome)
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
    if not match or (unit and unit.group(1) not in ("µm", "um", "micron")):
        return None
    return float(match.group(1))
