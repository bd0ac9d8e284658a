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
  flooded down to the noise floor; an object carrying several times the integrated signal and
  area of the frame's typical platelet is an aggregate of touching platelets and is split into
  that many (their fluorescence adds up, so no intensity dip separates them);
* each object is trimmed to the pixels above ``*_edge_fraction`` of its own peak contrast
  (about its half-maximum outline), then size-filtered.

Before platelets are detected, the leukocyte channel's bleed-through into the platelet
channel (linear crosstalk, estimated per frame over the leukocytes) is subtracted.
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
from skimage.measure import regionprops
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
    split_into_counts,
    split_touching,
)

FLUORESCENCE_REFERENCE_PIXEL_SIZE_UM = 0.75
"""Assumed pixel size (µm/px) of the flowcatchR frames, whose pixel size is undocumented:
a ~10 µm leukocyte spans ~13 px there."""

ROLE_CELL_TYPES: dict[str, str] = {"leukocyte": "wbc", "platelet": "platelet"}
"""Channel role → cell_type of the objects found in that channel (leukocytes first)."""

_MAD_TO_SIGMA = 1.4826
_PLATELET_FLOOD_SIGMAS = 3.0  # platelets are flooded from their peak down to this contrast (σ)
_MIN_PLATELETS_FOR_TYPICAL = 5  # fewer platelets in a frame: no aggregate splitting
_CLUSTER_MIN_AREA_RATIO = 1.8  # an aggregate also covers this many typical platelet areas
_PAIR_MIN_FLUX_RATIO = 1.5  # an elongated pair carries at least this many typical fluxes
_PAIR_MIN_AREA_RATIO = 1.3  # ... and covers at least this many typical areas
_MIN_PIXELS_FOR_BLEED_THROUGH = 50  # leukocyte pixels needed to estimate the crosstalk
_MAX_BLEED_THROUGH = 0.8  # a larger platelet/leukocyte signal ratio is no crosstalk


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
      ``leukocyte_min_roundness`` (minor / major axis; crawling neutrophils are elongated,
      hence 0.45) and ``leukocyte_min_solidity`` reject streaks and ragged background
      texture; ``leukocyte_mean_sigmas``: smallest mean contrast
      of a leukocyte, in σ.
    * ``platelet_min`` / ``platelet_max_diameter_um``: equivalent-diameter range of a platelet.
    * ``leukocyte_edge_fraction`` / ``platelet_edge_fraction``: each object keeps the pixels
      above this fraction of its peak contrast. A platelet on a leukocyte must be a compact
      spot: its region above ``platelet_edge_fraction`` × peak is at most
      ``platelet_max_diameter_um`` across (equivalent diameter).
    * ``platelet_cluster_ratio``: a platelet-channel object whose integrated contrast is at
      least this many times the frame's median platelet's (and whose area is at least 1.8
      median areas) is an aggregate of round(ratio) touching platelets and is split into that
      many (k-means on its pixels).
      Touching platelets add up with no intensity dip between them, so their summed signal,
      not a local maximum, tells how many there are.
    * ``platelet_pair_elongation``: two touching platelets carry only ~2× the signal and
      ~1.6× the area of one after trimming, too close to a bright single for the rule
      above, but they are elongated: an object with at least 1.5 × the typical signal and
      1.3 × the typical area whose contrast-weighted major / minor axis ratio is at least
      this is split in two. (Measured on synthetic medium stacks, tuning seeds: median
      axis ratio 1.22 for singles, 1.73 for pairs.)
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
    leukocyte_min_roundness: float = 0.45
    leukocyte_min_solidity: float = 0.8
    leukocyte_edge_fraction: float = 0.35
    platelet_diameter_um: float = field(default=_um(6.0), metadata=UM)
    platelet_min_diameter_um: float = field(default=1.5, metadata=UM)
    platelet_max_diameter_um: float = field(default=8.0, metadata=UM)
    platelet_threshold_sigmas: float = 5.0
    platelet_min_contrast: float = 0.05
    platelet_edge_fraction: float = 0.5
    platelet_cluster_ratio: float = 2.5
    platelet_pair_elongation: float = 1.6

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
    leukocyte_signal = np.zeros(shape, dtype=bool)
    platelets = np.zeros(shape, dtype=np.int32)
    if "leukocyte" in channels:
        leukocytes, leukocyte_signal = _leukocytes(frame[..., channels["leukocyte"]], params)
    if "platelet" in channels:
        platelet_image = frame[..., channels["platelet"]]
        if "leukocyte" in channels:
            platelet_image = _without_bleed_through(
                platelet_image, frame[..., channels["leukocyte"]], leukocyte_signal
            )
        platelets, contrast = _platelets(platelet_image, params)
        counts = _platelet_counts(
            leukocyte_signal,
            platelets,
            contrast,
            params.platelet_cluster_ratio,
            params.platelet_pair_elongation,
        )
        keep = _platelets_visible_on(leukocytes, platelets, contrast, counts, params)
        platelets = renumber_kept(platelets, keep)
        platelets = split_into_counts(platelets, contrast, np.r_[0, counts[keep]])
        platelets, _ = filter_labels_by_area(
            platelets, 0, disk_area(params.platelet_max_diameter_um)
        )
        leukocytes = np.where(platelets > 0, 0, leukocytes)
    layers = [
        LabelLayer(ROLE_CELL_TYPES["leukocyte"], leukocytes),
        LabelLayer(ROLE_CELL_TYPES["platelet"], platelets),
    ]
    return combine_layers(layers, shape, "fluorescence")


def _without_bleed_through(
    platelet_image: np.ndarray, leukocyte_image: np.ndarray, leukocyte_signal: np.ndarray
) -> np.ndarray:
    """The platelet channel minus the leukocyte channel's bleed-through (linear crosstalk).

    The coefficient is the median, over the pixels of ``leukocyte_signal`` (Y, X bool), of
    the platelet channel's signal above its background divided by the leukocyte
    channel's (backgrounds: medians outside the mask). Platelets cover few leukocyte
    pixels, so the median sees the crosstalk; without crosstalk it is ~0 and the channel
    is unchanged. A coefficient above :data:`_MAX_BLEED_THROUGH` is not taken for
    crosstalk (the platelet channel carries its own signal over the leukocytes, as in
    the flowcatchR frames) and nothing is subtracted. Uncorrected, a leukocyte seen in
    the platelet channel yields false platelets that are then cut out of the leukocyte.
    """
    if np.count_nonzero(leukocyte_signal) < _MIN_PIXELS_FOR_BLEED_THROUGH or leukocyte_signal.all():
        return platelet_image
    outside = ~leukocyte_signal
    leukocyte = leukocyte_image - np.median(leukocyte_image[outside])
    platelet = platelet_image - np.median(platelet_image[outside])
    inside = leukocyte_signal & (leukocyte > 0)
    if np.count_nonzero(inside) < _MIN_PIXELS_FOR_BLEED_THROUGH:
        return platelet_image
    coefficient = float(np.median(platelet[inside] / leukocyte[inside]))
    if not 0.0 < coefficient <= _MAX_BLEED_THROUGH:
        return platelet_image
    return platelet_image - coefficient * np.clip(leukocyte, 0, None)


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
    level = np.concatenate([[np.inf], fraction * _label_maxima(labels, contrast, n_labels)[1:]])
    return np.where(contrast >= level[labels], labels, 0)


def _label_maxima(labels: np.ndarray, values: np.ndarray, n_labels: int) -> np.ndarray:
    """(n_labels + 1,) maximum of ``values`` (Y, X) over each label of ``labels`` (Y, X),
    in ``values``' dtype; -inf for entry 0 and absent labels.

    As ``ndi.maximum`` but without sorting the whole frame: one pass over the labelled pixels.
    """
    pixels = np.flatnonzero(labels)
    maxima = np.full(n_labels + 1, -np.inf, dtype=values.dtype)
    np.maximum.at(maxima, labels.ravel()[pixels], values.ravel()[pixels])
    return maxima


def _labels_touching(labels: np.ndarray, mask: np.ndarray, n_labels: int) -> np.ndarray:
    """(n_labels,) bool: which labels 1..n_labels of ``labels`` (Y, X) have a pixel in
    ``mask`` (Y, X bool)."""
    touching = np.zeros(n_labels + 1, dtype=bool)
    touching[labels[mask]] = True
    return touching[1:]


def _leukocytes(image: np.ndarray, params: FluorescenceParams) -> tuple[np.ndarray, np.ndarray]:
    """Leukocyte labels of one (Y, X) channel (large, round, clearly-above-noise blobs) and
    the (Y, X) bool mask of all leukocyte-channel signal (hysteresis mask, before the shape
    and size tests)."""
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
        return objects, candidates
    index = np.arange(1, n_objects + 1)
    roundness = _roundness(objects, index)
    mean_contrast = np.asarray(ndi.mean(contrast, objects, index))
    keep = (roundness >= params.leukocyte_min_roundness) & (
        mean_contrast >= params.leukocyte_mean_sigmas * noise
    )
    # The convex hull is the costly test: only for objects that pass the others.
    regions = regionprops(objects)
    keep[keep] = [
        regions[label - 1].solidity >= params.leukocyte_min_solidity for label in index[keep]
    ]
    return renumber_kept(objects, np.concatenate([[False], keep])), candidates


def _platelets(image: np.ndarray, params: FluorescenceParams) -> tuple[np.ndarray, np.ndarray]:
    """Platelet-channel objects of one (Y, X) channel (bright local maxima at least platelet
    size; aggregates not split yet) and the channel's background-subtracted contrast."""
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
    objects, _ = filter_labels_by_area(objects, disk_area(params.platelet_min_diameter_um))
    return objects, contrast


def _platelet_counts(
    leukocyte_signal: np.ndarray,
    platelets: np.ndarray,
    contrast: np.ndarray,
    cluster_ratio: float,
    pair_elongation: float,
) -> np.ndarray:
    """Estimated platelets per object of ``platelets`` (indexed by label, entry 0 unused).

    An object's integrated ``contrast`` over the frame's median one (the typical single
    platelet; objects on ``leukocyte_signal`` (Y, X) bool are left out of the median, since
    bleed-through of a leukocyte is no platelet) gives its count when at least
    ``cluster_ratio`` and its area at least 1.8 median areas (so a large, bright single
    platelet stays whole); 2 for an object with at least 1.5 typical fluxes and 1.3 typical
    areas whose axis ratio is at least ``pair_elongation`` (two touching platelets); else 1.
    Frames with fewer than a handful of platelets are not split.
    """
    n_platelets = int(platelets.max(initial=0))
    counts = np.ones(n_platelets + 1, dtype=np.int64)
    if n_platelets < _MIN_PLATELETS_FOR_TYPICAL:
        return counts
    index = np.arange(1, n_platelets + 1)
    signal = np.clip(contrast, 0, None)
    reference = ~_labels_touching(platelets, leukocyte_signal, n_platelets)
    if np.count_nonzero(reference) < _MIN_PLATELETS_FOR_TYPICAL:
        reference[:] = True
    flux = np.asarray(ndi.sum(signal, platelets, index))
    area = np.bincount(platelets.ravel(), minlength=n_platelets + 1)[1:]
    flux_ratio = flux / max(float(np.median(flux[reference])), 1e-12)
    area_ratio = area / float(np.median(area[reference]))
    several = (flux_ratio >= cluster_ratio) & (area_ratio >= _CLUSTER_MIN_AREA_RATIO)
    pair = (
        (flux_ratio >= _PAIR_MIN_FLUX_RATIO)
        & (area_ratio >= _PAIR_MIN_AREA_RATIO)
        & (_axis_ratios(platelets, signal, index) >= pair_elongation)
    )
    counts[1:] = np.where(several, np.maximum(np.rint(flux_ratio), 2), np.where(pair, 2, 1))
    return counts


def _roundness(labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Minor / major axis length of each object ``index`` of ``labels`` (Y, X), from its
    unweighted second moments (as regionprops' axis lengths; 0 for an object without
    extent, a single pixel, whose ratio below comes out below 1)."""
    ratios = _axis_ratios(labels, labels > 0, index)
    return np.divide(1.0, ratios, out=np.zeros_like(ratios), where=ratios >= 1)


def _axis_ratios(labels: np.ndarray, weights: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Major / minor axis ratio of each object ``index`` of ``labels`` (Y, X), from its
    ``weights``-weighted second moments (1 for a disk; √5 ≈ 2.2 for two touching disks).
    Only the labelled pixels are visited (coordinate grids of the whole frame cost 40 B/px);
    moments are taken about each object's centroid (no cancellation at large coordinates)."""
    pixels = np.flatnonzero(labels)
    owner = labels.ravel()[pixels]
    y, x = (coordinate.astype(np.float64) for coordinate in np.divmod(pixels, labels.shape[1]))
    w = weights.ravel()[pixels].astype(np.float64)
    n_labels = int(labels.max(initial=0)) + 1
    mass = np.bincount(owner, weights=w, minlength=n_labels) + 1e-12

    def moment(values: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=w * values, minlength=n_labels) / mass

    dy, dx = y - moment(y)[owner], x - moment(x)[owner]
    index = np.asarray(index)
    var_y, var_x, cov = (moment(product)[index] for product in (dy * dy, dx * dx, dy * dx))
    half_trace, half_gap = (var_y + var_x) / 2, np.hypot((var_y - var_x) / 2, cov)
    major, minor = half_trace + half_gap, np.maximum(half_trace - half_gap, 1e-12)
    return np.sqrt(major / minor)


def _is_compact_peak(
    contrast: np.ndarray, peaks: np.ndarray, fraction: float, max_diameters: np.ndarray
) -> np.ndarray:
    """(n,) bool: the region above ``fraction`` × the peak's contrast around each (y, x) peak
    is no larger than a disk of its ``max_diameters`` px, so the peak is a spot (or a small
    aggregate), not the top of a broad blob such as a leukocyte seen in the platelet channel."""
    compact = np.zeros(len(peaks), dtype=bool)
    for index, ((y, x), max_diameter) in enumerate(zip(peaks, max_diameters, strict=True)):
        half = int(np.ceil(max_diameter))
        max_area = disk_area(max_diameter)
        y0, x0 = max(y - half, 0), max(x - half, 0)
        window = contrast[y0 : y + half + 1, x0 : x + half + 1]
        regions, _ = ndi.label(window >= fraction * contrast[y, x])
        compact[index] = np.count_nonzero(regions == regions[y - y0, x - x0]) <= max_area
    return compact


def _platelets_visible_on(
    leukocytes: np.ndarray,
    platelets: np.ndarray,
    contrast: np.ndarray,
    counts: np.ndarray,
    params: FluorescenceParams,
) -> np.ndarray:
    """(n + 1,) bool, indexed by label: which ``platelets`` to keep (entry 0 False).

    On a leukocyte, a platelet-channel object counts only when the region above
    ``platelet_edge_fraction`` × its peak ``contrast`` (platelet channel) is as small as
    ``counts[label]`` platelets of ``platelet_max_diameter_um``; a broad one is the leukocyte
    itself seen in the platelet channel (e.g. bleed-through).
    """
    n_platelets = int(platelets.max(initial=0))
    keep = np.ones(n_platelets + 1, dtype=bool)
    keep[0] = False
    if n_platelets == 0 or not leukocytes.any():
        return keep
    index = np.arange(1, n_platelets + 1)
    on_leukocyte = index[_labels_touching(platelets, leukocytes > 0, n_platelets)]
    peaks = np.asarray(ndi.maximum_position(contrast, platelets, on_leukocyte))
    keep[on_leukocyte] = _is_compact_peak(
        contrast,
        peaks.reshape(-1, 2).astype(int),
        params.platelet_edge_fraction,
        params.platelet_max_diameter_um * np.sqrt(counts[on_leukocyte]),
    )
    return keep
