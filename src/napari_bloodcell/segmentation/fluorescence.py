"""Segmentation of fluorescence frames (dark background), e.g. the flowcatchR mesentery
time-lapse: dim large green leukocytes and small bright red platelets.

Per mapped channel:

* background: white top-hat (disk radius ``background_radius_factor`` × the typical object
  diameter), then Gaussian smoothing;
* noise: robust σ (1.4826 × MAD) of the smoothed residual over the frame, so thresholds
  follow each frame's own noise and background texture (streaks, vessel wall) instead of a
  fixed intensity;
* leukocytes: hysteresis threshold of the residual (``leukocyte_threshold_sigmas`` σ seeds,
  grown down to ``leukocyte_low_sigmas`` σ), touching cells split by a distance watershed;
  kept when large enough (µm), roughly round and convex, and their mean contrast is at least
  ``leukocyte_mean_sigmas`` σ;
* platelets: local maxima at least ``platelet_threshold_sigmas`` σ above background, each
  flooded down to the noise floor;
* each object is trimmed to the pixels above ``*_edge_fraction`` of its own peak contrast
  (about its half-maximum outline), then size-filtered.

A platelet on a leukocyte is kept and cut out of the leukocyte when it is a compact spot
(platelets on leukocytes stay visible); a broad one is the leukocyte itself seen in the
platelet channel, and the leukocyte wins.

Frames are float (Y, X, C) in [0, 1]; labels are (Y, X).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import apply_hysteresis_threshold
from skimage.measure import regionprops_table
from skimage.morphology import disk, white_tophat
from skimage.segmentation import watershed

from ._regions import (
    UM,
    LabelLayer,
    Segmentation,
    combine_layers,
    disk_area,
    filter_labels_by_area,
    lengths_in_pixels,
    renumber_kept,
    split_touching,
)

FLUORESCENCE_REFERENCE_PIXEL_SIZE_UM = 0.75
"""Assumed pixel size (µm/px) of the flowcatchR frames, whose pixel size is undocumented:
a ~10 µm leukocyte spans ~13 px there."""

ROLE_CELL_TYPES: dict[str, str] = {"leukocyte": "wbc", "platelet": "platelet"}
"""Channel role → cell_type of the objects found in that channel (leukocytes first)."""

_MAD_TO_SIGMA = 1.4826
_PLATELET_FLOOD_SIGMAS = 3.0  # platelets are flooded from their peak down to this contrast (σ)


def default_channels(n_channels: int) -> dict[str, int]:
    """Default role → channel index: green leukocytes and red platelets for RGB, else channel 0
    as leukocytes."""
    if n_channels >= 2:
        return {"leukocyte": 1, "platelet": 0}
    return {"leukocyte": 0}


def _um(pixels_at_reference: float) -> float:
    """µm length of ``pixels_at_reference`` flowcatchR pixels (defaults were tuned in pixels)."""
    return pixels_at_reference * FLUORESCENCE_REFERENCE_PIXEL_SIZE_UM


@dataclass(frozen=True)
class FluorescenceParams:
    """Parameters of :func:`segment_fluorescence`.

    Lengths (``*_um``) are in µm; :meth:`in_pixels` converts them to pixels. Defaults were tuned
    at :data:`FLUORESCENCE_REFERENCE_PIXEL_SIZE_UM` on the flowcatchR frames and on synthetic
    time-lapses (``make_timelapse``).

    * ``smoothing_sigma_um`` / ``leukocyte_smoothing_sigma_um``: Gaussian σ of the platelet /
      leukocyte channel after background subtraction.
    * ``background_radius_factor``: top-hat disk radius as a multiple of the typical diameter
      (``leukocyte_diameter_um`` / ``platelet_diameter_um``).
    * ``*_threshold_sigmas``: detection threshold in robust noise σ of the smoothed residual;
      ``*_min_contrast`` (intensity units, frame values in [0, 1]) is the threshold's floor,
      which matters for noise-free frames. Leukocytes grow down to ``leukocyte_low_sigmas``
      (hysteresis).
    * ``leukocyte_min_diameter_um``: smallest equivalent diameter of a leukocyte;
      ``leukocyte_min_roundness`` (minor / major axis) and ``leukocyte_min_solidity`` reject
      streaks and ragged background texture; ``leukocyte_mean_sigmas``: smallest mean contrast
      of a leukocyte, in σ.
    * ``platelet_min`` / ``platelet_max_diameter_um``: equivalent-diameter range of a platelet.
    * ``leukocyte_edge_fraction`` / ``platelet_edge_fraction``: each object keeps the pixels
      above this fraction of its peak contrast. A platelet on a leukocyte must be a compact
      spot: its region above ``platelet_edge_fraction`` × peak is at most
      ``platelet_max_diameter_um`` across (equivalent diameter).
    """

    smoothing_sigma_um: float = field(default=_um(1.0), metadata=UM)
    leukocyte_smoothing_sigma_um: float = field(default=_um(2.0), metadata=UM)
    background_radius_factor: float = 1.7
    leukocyte_diameter_um: float = field(default=_um(13.0), metadata=UM)
    leukocyte_min_diameter_um: float = field(default=7.5, metadata=UM)
    leukocyte_threshold_sigmas: float = 4.0
    leukocyte_low_sigmas: float = 2.0
    leukocyte_min_contrast: float = 0.02
    leukocyte_mean_sigmas: float = 3.0
    leukocyte_min_roundness: float = 0.6
    leukocyte_min_solidity: float = 0.8
    leukocyte_edge_fraction: float = 0.35
    platelet_diameter_um: float = field(default=_um(6.0), metadata=UM)
    platelet_min_diameter_um: float = field(default=1.5, metadata=UM)
    platelet_max_diameter_um: float = field(default=8.0, metadata=UM)
    platelet_threshold_sigmas: float = 5.0
    platelet_min_contrast: float = 0.05
    platelet_edge_fraction: float = 0.5

    def in_pixels(self, pixel_size_um: float | None) -> FluorescenceParams:
        """These parameters with every ``*_um`` length converted to pixels.

        ``pixel_size_um`` is µm per pixel; ``None`` means
        :data:`FLUORESCENCE_REFERENCE_PIXEL_SIZE_UM`. Field names stay, values become pixels.
        """
        return lengths_in_pixels(self, pixel_size_um, FLUORESCENCE_REFERENCE_PIXEL_SIZE_UM)


def segment_fluorescence(
    frame: np.ndarray, channels: Mapping[str, int], params: FluorescenceParams
) -> Segmentation:
    """Segment each mapped channel of ``frame`` (float (Y, X, C) in [0, 1]).

    ``channels``: role ("leukocyte" / "platelet") → channel index, already validated.
    ``params``: already in pixels (``FluorescenceParams().in_pixels(...)``).
    """
    shape = frame.shape[:2]
    leukocytes = np.zeros(shape, dtype=np.int32)
    platelets = np.zeros(shape, dtype=np.int32)
    if "leukocyte" in channels:
        leukocytes = _leukocytes(frame[..., channels["leukocyte"]], params)
    if "platelet" in channels:
        platelets, contrast = _platelets(frame[..., channels["platelet"]], params)
        platelets = _platelets_visible_on(leukocytes, platelets, contrast, params)
        leukocytes = np.where(platelets > 0, 0, leukocytes)
    layers = [
        LabelLayer(ROLE_CELL_TYPES["leukocyte"], leukocytes),
        LabelLayer(ROLE_CELL_TYPES["platelet"], platelets),
    ]
    return combine_layers(layers, shape, "fluorescence")


def _contrast(
    image: np.ndarray, background_radius: float, sigma: float
) -> tuple[np.ndarray, float]:
    """Smoothed top-hat residual minus its median, and its robust noise σ (intensity units).

    ``background_radius`` (px) is the top-hat disk radius, ``sigma`` (px) the Gaussian σ.
    """
    radius = max(1, round(background_radius))
    residual = white_tophat(image, disk(radius, decomposition="crosses"))
    smoothed = ndi.gaussian_filter(residual, sigma)
    contrast = smoothed - np.median(smoothed)
    noise = _MAD_TO_SIGMA * float(np.median(np.abs(contrast)))
    return contrast, noise


def _trim_to_peak_fraction(labels: np.ndarray, contrast: np.ndarray, fraction: float) -> np.ndarray:
    """``labels`` keeping, per object, the pixels whose contrast ≥ ``fraction`` × its peak."""
    n_labels = int(labels.max(initial=0))
    if n_labels == 0:
        return labels
    peaks = ndi.maximum(contrast, labels, np.arange(1, n_labels + 1))
    level = np.concatenate([[np.inf], fraction * np.asarray(peaks)])
    return np.where(contrast >= level[labels], labels, 0)


def _leukocytes(image: np.ndarray, params: FluorescenceParams) -> np.ndarray:
    """Leukocyte labels of one (Y, X) channel: large, round, clearly-above-noise blobs."""
    contrast, noise = _contrast(
        image,
        params.background_radius_factor * params.leukocyte_diameter_um,
        params.leukocyte_smoothing_sigma_um,
    )
    high = max(params.leukocyte_threshold_sigmas * noise, params.leukocyte_min_contrast)
    low = min(params.leukocyte_low_sigmas * noise, high)
    candidates = apply_hysteresis_threshold(contrast, low, high)
    objects = split_touching(candidates, 0.5 * params.leukocyte_diameter_um)
    objects = _trim_to_peak_fraction(objects, contrast, params.leukocyte_edge_fraction)
    objects, _ = filter_labels_by_area(objects, disk_area(params.leukocyte_min_diameter_um))
    n_objects = int(objects.max(initial=0))
    if n_objects == 0:
        return objects
    props = regionprops_table(
        objects, properties=("axis_minor_length", "axis_major_length", "solidity")
    )
    roundness = props["axis_minor_length"] / np.maximum(props["axis_major_length"], 1e-9)
    mean_contrast = np.asarray(ndi.mean(contrast, objects, np.arange(1, n_objects + 1)))
    keep = (
        (roundness >= params.leukocyte_min_roundness)
        & (props["solidity"] >= params.leukocyte_min_solidity)
        & (mean_contrast >= params.leukocyte_mean_sigmas * noise)
    )
    return renumber_kept(objects, np.concatenate([[False], keep]))


def _platelets(image: np.ndarray, params: FluorescenceParams) -> tuple[np.ndarray, np.ndarray]:
    """Platelet labels of one (Y, X) channel (bright local maxima of platelet size) and the
    channel's background-subtracted contrast."""
    contrast, noise = _contrast(
        image,
        params.background_radius_factor * params.platelet_diameter_um,
        params.smoothing_sigma_um,
    )
    floor = max(_PLATELET_FLOOD_SIGMAS * noise, 0.5 * params.platelet_min_contrast)
    peaks = peak_local_max(
        contrast,
        min_distance=max(1, round(0.5 * params.platelet_min_diameter_um)),
        threshold_abs=max(params.platelet_threshold_sigmas * noise, params.platelet_min_contrast),
        exclude_border=False,
    )
    markers = np.zeros(contrast.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    objects = watershed(-contrast, markers, mask=contrast > floor)
    objects = _trim_to_peak_fraction(objects, contrast, params.platelet_edge_fraction)
    objects, _ = filter_labels_by_area(
        objects,
        disk_area(params.platelet_min_diameter_um),
        disk_area(params.platelet_max_diameter_um),
    )
    return objects, contrast


def _is_compact_peak(
    contrast: np.ndarray, peaks: np.ndarray, fraction: float, max_diameter: float
) -> np.ndarray:
    """(n,) bool: the region above ``fraction`` × the peak's contrast around each (y, x) peak
    is no larger than a disk of ``max_diameter`` px, so the peak is a spot, not the top of a
    broad blob such as a leukocyte seen in the platelet channel."""
    half = int(np.ceil(max_diameter))
    max_area = disk_area(max_diameter)
    compact = np.zeros(len(peaks), dtype=bool)
    for index, (y, x) in enumerate(peaks):
        y0, x0 = max(y - half, 0), max(x - half, 0)
        window = contrast[y0 : y + half + 1, x0 : x + half + 1]
        regions, _ = ndi.label(window >= fraction * contrast[y, x])
        compact[index] = np.count_nonzero(regions == regions[y - y0, x - x0]) <= max_area
    return compact


def _platelets_visible_on(
    leukocytes: np.ndarray,
    platelets: np.ndarray,
    contrast: np.ndarray,
    params: FluorescenceParams,
) -> np.ndarray:
    """``platelets`` without the ones on a leukocyte that are not compact spots.

    On a leukocyte, a platelet-channel object counts only when the region above
    ``platelet_edge_fraction`` × its peak ``contrast`` (platelet channel) is platelet-sized;
    a broad one is the leukocyte itself seen in the platelet channel (e.g. bleed-through).
    """
    n_platelets = int(platelets.max(initial=0))
    if n_platelets == 0 or not leukocytes.any():
        return platelets
    index = np.arange(1, n_platelets + 1)
    on_leukocyte = np.asarray(ndi.maximum(leukocytes > 0, platelets, index), dtype=bool)
    peaks = np.asarray(ndi.maximum_position(contrast, platelets, index[on_leukocyte]))
    keep = np.ones(n_platelets + 1, dtype=bool)
    keep[0] = False
    keep[index[on_leukocyte]] = _is_compact_peak(
        contrast,
        peaks.reshape(-1, 2).astype(int),
        params.platelet_edge_fraction,
        params.platelet_max_diameter_um,
    )
    return renumber_kept(platelets, keep)
