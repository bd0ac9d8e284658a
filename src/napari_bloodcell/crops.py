"""Cell crops normalised for scale and colour.

A crop is a square window centred on a cell whose side is ``scale`` times the
cell's stained diameter (for a WBC: its merged nucleus), resized to the model's
input size. Because the window follows the cell's own size, a 100× CellaVision
image and a 40× smear give comparable crops. Windows that run over the frame's edge
are filled by reflecting the frame at the edge (numpy's ``reflect`` padding).
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

from ._checks import is_real
from .errors import InputImageError

CROP_SCALE = 2.2
"""Crop side / stained diameter: 2.2× the nucleus always contained the whole WBC on BCCD."""

MIN_CROP_SIDE_PX = 8.0
COLOUR_PERCENTILES = (1.0, 99.0)
MIN_DIVISOR = 1e-6
"""Colour normalisation divides only by values above this (a black channel stays 0)."""


def crop_cells(
    frame: np.ndarray,
    centroids_yx: np.ndarray,
    diameters_px: np.ndarray,
    *,
    size: int,
    scale: float = CROP_SCALE,
) -> np.ndarray:
    """Cut one normalised crop per cell.

    Parameters
    ----------
    frame : (Y, X, C) float array in [0, 1].
    centroids_yx : (N, 2) cell centres in pixels (row, column).
    diameters_px : (N,) stained diameter of each cell in pixels.
    size : side of the output crops in pixels (the model input).
    scale : crop side as a multiple of the diameter.

    Returns
    -------
    (N, size, size, C) float32 crops, colour-normalised.
    """
    from .segmentation import checked_frame

    frame = checked_frame(frame)  # a NaN blanked its whole crop; bool failed in skimage
    _check_crop_shape(size, scale)
    centroids_yx = np.asarray(centroids_yx, dtype=float).reshape(-1, 2)
    diameters_px = np.asarray(diameters_px, dtype=float).reshape(-1)
    _check_cells(frame.shape[:2], centroids_yx, diameters_px)
    crops = np.empty((len(centroids_yx), size, size, frame.shape[-1]), dtype=np.float32)
    if len(crops) == 0:
        return crops
    sides = np.maximum(scale * diameters_px, MIN_CROP_SIDE_PX)
    height, width = frame.shape[:2]
    for i, ((cy, cx), side) in enumerate(zip(centroids_yx, sides, strict=True)):
        side_px = int(round(side))
        # the window's middle, (side_px - 1) / 2 past its first pixel, nearest the centre
        y0, x0 = int(round(cy - (side_px - 1) / 2)), int(round(cx - (side_px - 1) / 2))
        rows = reflected(np.arange(y0, y0 + side_px), height)
        columns = reflected(np.arange(x0, x0 + side_px), width)
        window = frame[np.ix_(rows, columns)]  # only the window is copied, not the frame
        crops[i] = resize(window, (size, size), order=1, anti_aliasing=side_px > size)
    return normalise_colour(crops)


def as_bytes(crops: np.ndarray) -> np.ndarray:
    """Crops in [0, 1] as the uint8 the classifier was trained, calibrated and evaluated
    on (rounded: float crops gave probabilities up to 0.009 apart, another class for 1
    of 237 BCCD crops), 4 times smaller to send to its worker process."""
    return np.round(np.clip(np.asarray(crops), 0.0, 1.0) * 255).astype(np.uint8)


def reflected(indices: np.ndarray, length: int) -> np.ndarray:
    """Indices into an axis of ``length`` as numpy's ``reflect`` padding maps them (the
    edge not repeated; repeatedly for windows larger than the axis)."""
    if length == 1:
        return np.zeros_like(indices)
    period = 2 * (length - 1)
    folded = np.mod(indices, period)
    return np.where(folded < length, folded, period - folded)


def _check_crop_shape(size, scale) -> None:
    """Refuse a crop ``size`` that is not a positive whole number of pixels or a ``scale``
    that is not a positive finite number."""
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InputImageError(f"crop size must be a positive whole number of pixels, got {size!r}")
    if not (is_real(scale) and np.isfinite(scale) and scale > 0):
        raise InputImageError(
            f"crop scale (crop side / cell diameter) must be a positive number, got {scale!r}"
        )


def _check_cells(frame_shape, centroids_yx: np.ndarray, diameters_px: np.ndarray) -> None:
    """Refuse cells that cannot come from this frame (outside it, NaN, negative sizes)."""
    if len(centroids_yx) != len(diameters_px):
        raise InputImageError(
            f"{len(centroids_yx)} centroids but {len(diameters_px)} diameters; expected one each"
        )
    height, width = frame_shape
    inside = (
        np.isfinite(centroids_yx).all(axis=1)
        & (centroids_yx[:, 0] >= 0)
        & (centroids_yx[:, 0] <= height - 1)
        & (centroids_yx[:, 1] >= 0)
        & (centroids_yx[:, 1] <= width - 1)
    )
    if not inside.all():
        bad = centroids_yx[~inside][0]
        raise InputImageError(
            f"cell centroid (y={bad[0]}, x={bad[1]}) is not inside the {height}×{width} frame"
        )
    if not (np.isfinite(diameters_px) & (diameters_px >= 0)).all():
        raise InputImageError("cell diameters must be finite and non-negative")


def crop_single_cell_image(
    image: np.ndarray, *, size: int, scale: float = CROP_SCALE
) -> np.ndarray:
    """Re-crop a single-cell image (a training crop of any magnification) the way ``analyze`` does.

    The largest stained object near the centre sets the window's centre and size, measured
    as in segmentation; if nothing stained is found, the largest square centred in the
    image is used.

    Parameters
    ----------
    image : (Y, X, 3) float RGB in [0, 1].

    Returns
    -------
    (size, size, 3) float32 crop, colour-normalised.
    """
    from .segmentation import central_stained_object

    found = central_stained_object(image)
    if found is None:
        height, width = image.shape[:2]
        centre, diameter = ((height - 1) / 2, (width - 1) / 2), min(height, width) / scale
    else:
        centre, diameter = found[:2], found[2]
    return crop_cells(image, np.array([centre]), np.array([diameter]), size=size, scale=scale)[0]


def normalise_colour(crops: np.ndarray) -> np.ndarray:
    """White-balance and contrast-stretch each crop (float32, (N, Y, X, C) in [0, 1]).

    Each channel is divided by its 99th percentile (the bright background becomes
    white, removing illumination colour and camera gain), then all channels share
    one linear stretch from the crop's 1st percentile to 1. Sharing the stretch
    keeps the stain's hue, which separates e.g. eosinophil granules from neutrophil
    ones; differences of stain strength between microscopes are reduced.
    """
    crops = np.asarray(crops, dtype=np.float32)
    low_pct, high_pct = COLOUR_PERCENTILES
    white = np.percentile(crops, high_pct, axis=(1, 2), keepdims=True)
    balanced = np.divide(crops, white, out=np.zeros_like(crops), where=white > MIN_DIVISOR)
    balanced = np.clip(balanced, 0.0, 1.0)
    low = np.percentile(balanced, low_pct, axis=(1, 2, 3), keepdims=True)
    span = 1.0 - low
    stretched = np.divide(balanced - low, span, out=np.zeros_like(crops), where=span > MIN_DIVISOR)
    return np.clip(stretched, 0.0, 1.0)
