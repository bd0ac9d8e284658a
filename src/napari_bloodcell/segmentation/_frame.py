"""Entry point of the segmentation stage: input checks, modality choice and dispatch."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from .._checks import is_real
from ..errors import InputImageError
from ._regions import UM, Segmentation, empty_segmentation
from .fluorescence import (
    ROLE_CELL_TYPES,
    FluorescenceParams,
    default_channels,
    segment_fluorescence,
)
from .smear import SmearParams, segment_smear

MODALITIES = ("smear", "fluorescence")
_SMEAR_MIN_MEDIAN_BRIGHTNESS = 0.5
_DIM_SMEAR_MIN_MEDIAN_BRIGHTNESS = 0.3
_DIM_SMEAR_MIN_BACKGROUND_POSITION = 0.4
"""An underexposed smear (median 0.3–0.5) still has its background, the median, high in
its range (median − 1st) / (99th − 1st percentile): ≥ 0.46 on 120 BCCD frames, ≤ 0.29 on
flowcatchR's fluorescence frames (whose medians are < 0.1, as DSB 2018's fluorescence)."""


def detect_modality(frame: np.ndarray) -> str:
    """``"smear"`` for a bright-background RGB frame, else ``"fluorescence"``.

    ``frame``: float (Y, X, C) in [0, 1]. A frame is a smear when it has 3 channels and its
    median brightness (mean over channels) is at least 0.5, or (RGB only) at least 0.3 with
    the median high in the frame's range (an underexposed smear: its background is the
    median).
    A grey frame (one channel) that bright is a smear too (a bright-field image without its
    colours, which :func:`segment_frame` refuses: as fluorescence its bright background
    would be taken for cells).
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] not in (1, 3) or frame.size == 0:
        return "fluorescence"
    grey = frame.mean(axis=2)
    low, brightness, high = (float(v) for v in np.percentile(grey, [1, 50, 99]))
    if brightness >= _SMEAR_MIN_MEDIAN_BRIGHTNESS:
        return "smear"
    background_position = (brightness - low) / max(high - low, 1e-6)
    if (
        frame.shape[2] == 3  # a grey frame stretched from 16 bits often has such a median
        and brightness >= _DIM_SMEAR_MIN_MEDIAN_BRIGHTNESS
        and background_position >= _DIM_SMEAR_MIN_BACKGROUND_POSITION
    ):
        return "smear"
    return "fluorescence"


def segment_frame(
    frame: np.ndarray,
    modality: str = "auto",
    *,
    channels: Mapping[str, int] | None = None,
    pixel_size_um: float | None = None,
    params: SmearParams | FluorescenceParams | None = None,
) -> Segmentation:
    """Segment one frame into labelled WBCs, RBCs and platelets.

    ``frame``: float (Y, X, C) in [0, 1] (grey as (Y, X, 1)).
    ``modality``: ``"auto"`` (see :func:`detect_modality`), ``"smear"`` or ``"fluorescence"``.
    ``channels`` (fluorescence only): role (``"leukocyte"``, ``"platelet"``) → channel index;
    default channel 1 (green) leukocytes and channel 0 (red) platelets, or channel 0
    leukocytes for one channel or for channels that all hold the same image (a grey image
    saved as RGB, whose one signal would otherwise be taken for both roles).
    ``pixel_size_um``: µm per pixel, or ``None`` for the modality's reference pixel size.
    ``params``: :class:`SmearParams` / :class:`FluorescenceParams` in µm, default ones if None.

    Raises :class:`~napari_bloodcell.errors.InputImageError` for an unusable frame or request.
    Empty, constant or 1×1 frames give an empty Segmentation.
    """
    frame = checked_frame(frame)
    if channels is None:
        frame = _without_constant_alpha(frame)
    detected = modality == "auto"
    if detected:
        modality = detect_modality(frame)
    if modality not in MODALITIES:
        raise InputImageError(
            f"unknown modality {modality!r}; expected 'auto', 'smear' or 'fluorescence'"
        )
    check_pixel_size(pixel_size_um)
    n_channels = frame.shape[2]
    if modality == "smear":
        featureless = _is_featureless(frame)
        grey = (
            " (a grey frame with a bright background: a bright-field smear without its "
            "colours? To analyse it as fluorescence anyway, choose the fluorescence "
            "modality: --modality fluorescence on the command line)"
            if detected
            else ""
        )
        if n_channels != 3 and not (detected and featureless):
            raise InputImageError(
                f"a smear frame must be RGB (Y, X, 3), got {n_channels} channel(s){grey}"
            )
        if not featureless and _is_grey(frame):
            raise InputImageError(
                f"a smear frame must hold the stain's colours; its red, green and blue are "
                f"the same (a grey image saved as RGB){grey}"
            )
        smear_params = _checked_params(params, SmearParams)
        if featureless:
            return empty_segmentation(frame.shape[:2], modality)
        return segment_smear(frame, smear_params.in_pixels(pixel_size_um))

    if channels is None and _has_one_image_in_every_channel(frame):
        channels = default_channels(1)  # a grey image saved as RGB: no platelet channel
    roles = _checked_channels(channels, n_channels)
    fluorescence_params = _checked_params(params, FluorescenceParams)
    if _is_featureless(frame):
        return empty_segmentation(frame.shape[:2], modality)
    return segment_fluorescence(frame, roles, fluorescence_params.in_pixels(pixel_size_um))


GREY_SPREAD = 0.02
"""Channels of a pixel that differ by less than this are grey (JPEG chroma noise stays well
below it; stained cells differ by tenths)."""


def _has_one_image_in_every_channel(frame: np.ndarray) -> bool:
    """Whether a frame of several channels (Y, X, C) holds the same image in each (every
    pixel's channels differ by less than :data:`GREY_SPREAD`)."""
    if frame.shape[2] < 2:
        return False
    return float(np.ptp(frame, axis=2).max(initial=0.0)) < GREY_SPREAD


MIN_COLOURED_SAMPLES = 64
"""A frame with fewer coloured pixels than this among every 4th row and column (~1,000 px,
a platelet at BCCD scale) is grey: a grey image saved as RGB has none (its channels differ
by rounding at most), a smear tile with a single cell on a wide background has hundreds."""


def _is_grey(frame: np.ndarray) -> bool:
    """Whether an RGB frame (Y, X, 3) is a grey image: fewer pixels whose channels differ
    by :data:`GREY_SPREAD` or more than :data:`MIN_COLOURED_SAMPLES` or 1 % of them,
    whichever is fewer, judged on every 4th row and column. (A share alone refused a wide
    smear tile holding one cell; a count alone, a small frame.)"""
    sample = frame[::4, ::4]
    spread = sample.max(axis=2) - sample.min(axis=2)
    needed = min(MIN_COLOURED_SAMPLES, np.ceil(0.01 * spread.size))
    return int(np.count_nonzero(spread >= GREY_SPREAD)) < needed


RANGE_TOLERANCE = 1e-3
"""Float frames may stray this far outside [0, 1] (rounding); beyond it they are refused."""
MAX_CHANNELS = 16
"""An array (Y, X, C) with more channels than this but no more rows is taken for channels
first (C, Y, X) and refused; a real frame of many channels has more rows than that."""


def checked_frame(frame) -> np.ndarray:
    """``frame`` (array-like) as float32 (Y, X, C) in [0, 1], or InputImageError."""
    array = np.asarray(frame)
    if array.ndim != 3:
        raise InputImageError(
            f"expected a (Y, X, C) image array, got {array.ndim} dimension(s) "
            f"with shape {array.shape}"
        )
    if array.shape[2] > MAX_CHANNELS >= array.shape[0]:
        raise InputImageError(
            f"expected a (Y, X, C) image array with at most {MAX_CHANNELS} channels, got shape "
            f"{array.shape}; channels first? Move them last, e.g. np.moveaxis(frame, 0, -1)"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputImageError(f"expected a numeric image array, got dtype {array.dtype}")
    if array.dtype.kind == "c":
        raise InputImageError("expected a real-valued image array, got complex values")
    if array.dtype.kind in "iu":
        raise InputImageError(
            f"expected float intensities in [0, 1], got {array.dtype} values; read files with "
            f"napari_bloodcell.reading.read_image, or scale arrays with image_from_array"
        )
    if array.dtype.kind == "f" and array.size:
        if not np.isfinite(array).all():
            raise InputImageError("the image contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise InputImageError(
                f"image values from {low:.3g} to {high:.3g}; expected intensities in [0, 1] "
                f"(scale them with napari_bloodcell.reading.image_from_array)"
            )
    return array.astype(np.float32, copy=False)


PIXEL_SIZE_RANGE_UM = (0.01, 100.0)
"""The pixel sizes (µm) frames are segmented at: below, a cell is thousands of pixels
across (0.001, a size in mm given as µm, asked for 8 GiB per structuring element); above,
smaller than a pixel."""


def check_pixel_size(pixel_size_um: float | None, name: str = "pixel_size_um") -> None:
    """Refuse (:class:`InputImageError`, naming ``name``) a pixel size that is neither None
    nor a number of µm per pixel within :data:`PIXEL_SIZE_RANGE_UM`."""
    if pixel_size_um is None:
        return
    low, high = PIXEL_SIZE_RANGE_UM
    usable = is_real(pixel_size_um) and np.isfinite(pixel_size_um)
    if not usable or not low <= pixel_size_um <= high:
        raise InputImageError(
            f"{name} must be a positive number of µm per pixel from {low:g} to {high:g}, "
            f"got {pixel_size_um!r}"
        )


def _checked_params(params, expected_type: type):
    """``params`` if it is of ``expected_type`` with usable values, the defaults if None,
    else InputImageError: every value a finite number, no length (µm) negative, and no
    ``…_low`` / ``…_min_…`` value above its ``…_high`` / ``…_max_…`` (such settings failed
    deep in a library, or silently found nothing)."""
    if params is None:
        return expected_type()
    if not isinstance(params, expected_type):
        raise InputImageError(
            f"params must be {expected_type.__name__} for this modality, "
            f"got {type(params).__name__}"
        )
    name = expected_type.__name__
    values = {field.name: getattr(params, field.name) for field in dataclasses.fields(params)}
    for field in dataclasses.fields(params):
        value = values[field.name]
        if not is_real(value) or not np.isfinite(value):
            raise InputImageError(f"{name}.{field.name} must be a finite number, got {value!r}")
        if field.metadata == UM and value < 0:
            raise InputImageError(f"{name}.{field.name} is a length (µm): got {value!r} < 0")
    for low, value in values.items():
        high = low.replace("_low", "_high").replace("_min_", "_max_")
        if high != low and high in values and value > values[high]:
            raise InputImageError(
                f"{name}.{low} ({value!r}) must not be above {high} ({values[high]!r})"
            )
    return params


def _checked_channels(channels: Mapping[str, int] | None, n_channels: int) -> dict[str, int]:
    """Validated role → channel index mapping for a frame with ``n_channels`` channels."""
    roles = default_channels(n_channels) if channels is None else dict(channels)
    if not roles:
        raise InputImageError(
            f"channels map no cell role to a channel; expected at least one of "
            f"{sorted(ROLE_CELL_TYPES)}, e.g. {{'leukocyte': 1, 'platelet': 0}}"
        )
    for role, index in roles.items():
        if role not in ROLE_CELL_TYPES:
            raise InputImageError(
                f"unknown channel role {role!r}; expected one of {sorted(ROLE_CELL_TYPES)}"
            )
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise InputImageError(
                f"channel index {index!r} for role {role!r} is not a channel index; "
                f"expected an integer from 0 to {n_channels - 1}"
            )
        if not 0 <= index < n_channels:
            raise InputImageError(
                f"channel index {index!r} for role {role!r} is out of range for a frame "
                f"with {n_channels} channel(s)"
            )
    check_one_role_per_channel(roles)
    return roles


def check_one_role_per_channel(roles: Mapping[str, int]) -> None:
    """Refuse (:class:`InputImageError`) two cell roles mapped to one channel: its one
    signal would be detected as both kinds of cell."""
    by_channel: dict[int, list[str]] = {}
    for role, index in roles.items():
        by_channel.setdefault(int(index), []).append(role)
    for index, names in by_channel.items():
        if len(names) > 1:
            raise InputImageError(
                f"roles {' and '.join(map(repr, names))} both map to channel {index}; each "
                f"cell role needs its own channel (one signal would be detected as both)"
            )


def _without_constant_alpha(frame: np.ndarray) -> np.ndarray:
    """An RGBA frame (Y, X, 4) whose 4th channel is constant as RGB (an opaque picture's
    alpha, as the readers drop it); any other frame unchanged."""
    if frame.shape[2] == 4 and frame[..., 3].size and np.ptp(frame[..., 3]) == 0:
        return frame[..., :3]
    return frame


def _is_featureless(frame: np.ndarray) -> bool:
    """True for frames with nothing to segment: no pixels, a single pixel, or each channel
    constant (one colour everywhere)."""
    return frame.shape[0] * frame.shape[1] <= 1 or not np.ptp(frame, axis=(0, 1)).any()
