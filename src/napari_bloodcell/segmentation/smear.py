"""Segmentation of stained (Giemsa / Wright) RGB blood smears, e.g. the BCCD frames.

Recipe (all plain scikit-image / scipy):

* nucleus stain score = blue − green, Gaussian-smoothed; hysteresis threshold;
* WBC: closing merges the 3–5 lobes of a nucleus, large components are WBC nuclei, and each
  nucleus grows into the surrounding pale or granular cytoplasm, at most
  ``cytoplasm_width_um`` away;
* platelet: small stained components that are also bluer than red (pink RBC rims are not);
* RBC: Otsu threshold of red − green (cell foreground, central pallors filled) minus WBCs and
  platelets, split by a distance-transform watershed (on a 2× coarser grid for speed) seeded
  at each pallor, plus distance peaks far from every pallor for cells without a visible one.

Images are float (Y, X, 3) RGB in [0, 1]; labels are (Y, X).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import apply_hysteresis_threshold, threshold_otsu
from skimage.morphology import closing, disk
from skimage.segmentation import expand_labels, watershed

from ..errors import InputImageError
from ._regions import (
    UM,
    LabelLayer,
    Segmentation,
    combine_layers,
    disk_area,
    equivalent_diameter,
    fill_small_holes,
    filter_labels_by_area,
    label_by_area,
    lengths_in_pixels,
    split_touching,
)

REFERENCE_PIXEL_SIZE_UM = 7.5 / 104
"""Effective pixel size (µm/px) of the BCCD frames: a 7.5 µm RBC spans ~104 px (median box)."""

_RBC_WATERSHED_DOWNSAMPLE = 2
_TYPICAL_NUCLEUS_DIAMETER_PX = 140.0  # median WBC crop_diameter_px on BCCD


def _um(pixels_at_reference: float) -> float:
    """µm length of ``pixels_at_reference`` BCCD pixels (defaults were tuned in BCCD pixels)."""
    return pixels_at_reference * REFERENCE_PIXEL_SIZE_UM


@dataclass(frozen=True)
class SmearParams:
    """Parameters of :func:`segment_smear`.

    Lengths (``*_um``) are in µm; :meth:`in_pixels` converts them to pixels. The defaults were
    tuned in pixels on BCCD frames and stored as µm at :data:`REFERENCE_PIXEL_SIZE_UM`, so they
    are physical sizes when the pixel size is known and BCCD pixel sizes when it is not.
    Scores (blue − green, blue − red, red − green of RGB in [0, 1]) are dimensionless.

    * ``smoothing_sigma_um``: Gaussian σ applied to every colour score.
    * ``nucleus_score_low`` / ``_high``: hysteresis thresholds of the stain score for nuclei.
    * ``nucleus_closing_radius_um``: disk closing that merges the lobes of one nucleus.
    * ``wbc_min`` / ``wbc_max_nucleus_diameter_um``: equivalent-diameter range of a merged
      nucleus that makes a WBC (smaller ones are platelet clumps or cut-off cells).
    * ``cytoplasm_width_um``: how far a WBC may extend beyond its nucleus; cytoplasm pixels need
      stain score > ``cytoplasm_score_min`` and either blue − red > ``cytoplasm_blue_red_min``
      (pale bluish cytoplasm) or stain score > ``cytoplasm_granule_score_min`` (orange
      eosinophil granules).
    * ``platelet_score_low`` / ``_high``: hysteresis thresholds for platelet candidates, kept
      when their peak blue − red ≥ ``platelet_blue_red_min`` and their equivalent diameter is
      within ``platelet_min`` / ``platelet_max_diameter_um``.
    * ``rbc_diameter_um``: typical RBC diameter; RBC foreground needs red − green above Otsu
      and ≥ ``rbc_red_green_min``; RBCs smaller than ``rbc_min_area_fraction`` of a typical
      RBC's area are dropped; touching RBC centres are at least
      ``rbc_min_centre_distance_fraction`` × diameter apart; a central pallor (hole of the
      foreground) of at least ``rbc_min_pallor_area_fraction`` of a typical RBC's area seeds
      one RBC.
    """

    smoothing_sigma_um: float = field(default=_um(1.5), metadata=UM)
    nucleus_score_low: float = 0.15
    nucleus_score_high: float = 0.25
    nucleus_closing_radius_um: float = field(default=_um(9.0), metadata=UM)
    wbc_min_nucleus_diameter_um: float = field(default=_um(70.0), metadata=UM)
    wbc_max_nucleus_diameter_um: float = field(default=_um(300.0), metadata=UM)
    cytoplasm_width_um: float = field(default=_um(40.0), metadata=UM)
    cytoplasm_score_min: float = 0.03
    cytoplasm_blue_red_min: float = 0.0
    cytoplasm_granule_score_min: float = 0.04
    platelet_score_low: float = 0.06
    platelet_score_high: float = 0.12
    platelet_blue_red_min: float = 0.13
    platelet_min_diameter_um: float = field(default=_um(12.0), metadata=UM)
    platelet_max_diameter_um: float = field(default=_um(55.0), metadata=UM)
    rbc_diameter_um: float = field(default=7.5, metadata=UM)
    rbc_red_green_min: float = 0.04
    rbc_min_area_fraction: float = 0.3
    rbc_min_centre_distance_fraction: float = 0.45
    rbc_min_pallor_area_fraction: float = 0.02

    def in_pixels(self, pixel_size_um: float | None) -> SmearParams:
        """These parameters with every ``*_um`` length converted to pixels.

        ``pixel_size_um`` is µm per pixel; ``None`` means :data:`REFERENCE_PIXEL_SIZE_UM`
        (BCCD scale). The returned object keeps the field names but holds pixel values.
        """
        return lengths_in_pixels(self, pixel_size_um, REFERENCE_PIXEL_SIZE_UM)


LOWEST_BACKGROUND_SCORE = -0.12
"""The lowest stain score of the background among the training images (PBC, CellaVision:
−0.118 to −0.093; BCCD −0.05 to +0.01). Images under a more yellow light are lifted to it."""


def stain_score(rgb: np.ndarray, sigma_px: float) -> np.ndarray:
    """Nucleus / platelet stain score (Y, X): blue − green, Gaussian-smoothed (σ in px).

    Purple-blue nuclei and platelets score ~0.3–0.5, background and pink RBCs ~0. Under a
    more yellow light than any training microscope's (background below
    :data:`LOWEST_BACKGROUND_SCORE`) the score is raised by the difference, so that pale
    nuclei still clear the fixed thresholds; other images are left as they are.
    """
    score = ndi.gaussian_filter(rgb[..., 2] - rgb[..., 1], sigma_px)
    return score - min(0.0, background_score(rgb, score) - LOWEST_BACKGROUND_SCORE)


def background_score(rgb: np.ndarray, score: np.ndarray) -> float:
    """Median stain score of the brightest 10 % of pixels (the background); 0 if empty."""
    brightness = rgb[::2, ::2].sum(axis=-1)
    if brightness.size == 0:
        return 0.0
    bright = brightness >= np.percentile(brightness, 90)
    return float(np.median(score[::2, ::2][bright]))


def merge_lobes(stained: np.ndarray, closing_radius_px: float) -> np.ndarray:
    """Stained mask (Y, X) with nearby lobes joined by a disk closing and holes filled."""
    radius = max(1, round(closing_radius_px))
    merged = closing(stained, disk(radius, decomposition="crosses"))
    return ndi.binary_fill_holes(merged)


def segment_smear(rgb: np.ndarray, params: SmearParams) -> Segmentation:
    """Segment WBCs, platelets and RBCs in a stained smear.

    ``rgb``: float (Y, X, 3) in [0, 1]. ``params``: already in pixels
    (``SmearParams().in_pixels(...)``). Returns labels ordered WBC, platelet, RBC.
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    sigma = params.smoothing_sigma_um
    score = stain_score(rgb, sigma)
    blue_red = ndi.gaussian_filter(rgb[..., 2] - rgb[..., 0], sigma)

    nucleus_stained, nuclei, nucleus_diameters = _wbc_nuclei(score, params)
    wbcs = _grow_into_cytoplasm(nuclei, score, blue_red, params)
    platelets = _platelets(score, blue_red, wbcs > 0, params)
    # nucleus-stained pixels are never red cell (e.g. a WBC cut by the frame edge, too
    # small for a WBC nucleus)
    rbcs = _rbcs(rgb, (wbcs > 0) | (platelets > 0) | nucleus_stained, params)
    layers = [
        LabelLayer("wbc", wbcs, crop_diameters_px=nucleus_diameters),
        LabelLayer("platelet", platelets),
        LabelLayer("rbc", rbcs),
    ]
    return combine_layers(layers, score.shape, "smear")


def _wbc_nuclei(
    score: np.ndarray, params: SmearParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nucleus-stained mask (hysteresis), WBC nucleus labels (lobes merged, of a WBC
    nucleus's size) and their equivalent diameters (px)."""
    stained = apply_hysteresis_threshold(score, params.nucleus_score_low, params.nucleus_score_high)
    merged = merge_lobes(stained, params.nucleus_closing_radius_um)
    nuclei, areas = label_by_area(
        merged,
        disk_area(params.wbc_min_nucleus_diameter_um),
        disk_area(params.wbc_max_nucleus_diameter_um),
    )
    return stained, nuclei, equivalent_diameter(areas)


def _grow_into_cytoplasm(
    nuclei: np.ndarray, score: np.ndarray, blue_red: np.ndarray, params: SmearParams
) -> np.ndarray:
    """WBC labels: each nucleus flooded into the bluish cytoplasm around it (holes filled)."""
    if not nuclei.any():
        return nuclei
    window = _padded_bbox(nuclei > 0, params.cytoplasm_width_um)
    nuclei_in, score_in = nuclei[window], score[window]
    reach = expand_labels(nuclei_in, params.cytoplasm_width_um) > 0
    # pale bluish cytoplasm, or granular cytoplasm clearly bluer than green (eosinophil
    # granules are orange: redder than blue, yet bluer than green, unlike pink RBCs)
    cytoplasm = (score_in > params.cytoplasm_score_min) & (
        (blue_red[window] > params.cytoplasm_blue_red_min)
        | (score_in > params.cytoplasm_granule_score_min)
    )
    cells = watershed(-score_in, markers=nuclei_in, mask=reach & (cytoplasm | (nuclei_in > 0)))
    filled = ndi.binary_fill_holes(cells > 0)
    wbcs = np.zeros_like(nuclei)
    wbcs[window] = watershed(np.zeros(cells.shape, dtype=np.float32), markers=cells, mask=filled)
    return wbcs


def _padded_bbox(mask: np.ndarray, padding: float) -> tuple[slice, slice]:
    """(Y, X) slices of the bounding box of ``mask`` grown by ``padding`` px, clipped."""
    pad = int(np.ceil(padding))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (
        slice(max(rows[0] - pad, 0), rows[-1] + pad + 1),
        slice(max(cols[0] - pad, 0), cols[-1] + pad + 1),
    )


def _platelets(
    score: np.ndarray, blue_red: np.ndarray, wbc_mask: np.ndarray, params: SmearParams
) -> np.ndarray:
    """Platelet labels: small stained blobs outside WBCs whose peak blue − red is high."""
    stained = apply_hysteresis_threshold(
        score, params.platelet_score_low, params.platelet_score_high
    )
    candidates, _ = label_by_area(
        stained & ~wbc_mask,
        disk_area(params.platelet_min_diameter_um),
        disk_area(params.platelet_max_diameter_um),
    )
    n_candidates = int(candidates.max(initial=0))
    if n_candidates == 0:
        return candidates
    peak_blue_red = ndi.maximum(blue_red, candidates, np.arange(1, n_candidates + 1))
    is_platelet = np.concatenate([[False], peak_blue_red >= params.platelet_blue_red_min])
    platelets, _ = filter_labels_by_area(np.where(is_platelet[candidates], candidates, 0), 1)
    return platelets


def _rbcs(rgb: np.ndarray, taken: np.ndarray, params: SmearParams) -> np.ndarray:
    """RBC labels: Otsu foreground of red − green minus ``taken``, split by a distance
    watershed seeded at the central pallors (the filled holes of the foreground).

    The threshold is at least ``rbc_red_green_min`` above a pinkish background's red −
    green (a frame without cells has a foreground by Otsu's too)."""
    red_green = ndi.gaussian_filter(rgb[..., 0] - rgb[..., 1], params.smoothing_sigma_um)
    background = max(0.0, background_score(rgb, red_green))
    threshold = max(threshold_otsu(red_green), params.rbc_red_green_min + background)
    rbc_area = disk_area(params.rbc_diameter_um)
    stained = red_green > threshold
    foreground = fill_small_holes(stained, 0.5 * rbc_area, at_border=True) & ~taken
    pallors, _ = label_by_area(
        foreground & ~stained, params.rbc_min_pallor_area_fraction * rbc_area
    )
    rbcs = split_touching(
        foreground,
        params.rbc_min_centre_distance_fraction * params.rbc_diameter_um,
        downsample=_RBC_WATERSHED_DOWNSAMPLE,
        centres=pallors > 0,
    )
    rbcs, _ = filter_labels_by_area(rbcs, params.rbc_min_area_fraction * rbc_area)
    return rbcs


CENTRAL_REGION_FRACTION = 0.25
"""A single-cell image's cell has its centroid within this fraction of the image's smaller
side from the image centre."""


def central_stained_object(rgb: np.ndarray) -> tuple[float, float, float] | None:
    """(centroid_y, centroid_x, diameter_px) of the central stained object: the largest
    near the image centre (:func:`_central_object`).

    For a single-cell training crop of unknown magnification (float (Y, X, 3) in [0, 1]).
    ``diameter_px`` is measured like a WBC's ``crop_diameter_px`` in :func:`segment_frame`:
    same stain score and smoothing, same lobe merging and hole filling. Only the scale is
    adapted: the threshold is Otsu's (at least the frame ``nucleus_score_low``), and the closing
    radius keeps the frame ratio of closing radius to nucleus diameter. None if nothing is
    stained.
    """
    from ._frame import checked_frame  # (_frame imports this module)

    shape = np.shape(rgb)
    if len(shape) != 3 or shape[2] != 3:
        raise InputImageError(
            f"expected a stained single-cell RGB image (Y, X, 3), got shape {shape}"
        )
    rgb = checked_frame(rgb)  # (a NaN failed in Otsu's threshold)
    params = SmearParams().in_pixels(None)
    score = stain_score(rgb, params.smoothing_sigma_um)
    if np.ptp(score) <= 0:
        return None
    stained = score > max(threshold_otsu(score), params.nucleus_score_low)
    if not stained.any():
        return None
    # merge with the closing radius a nucleus of this size would get at the reference scale
    lobe_gap_ratio = params.nucleus_closing_radius_um / _TYPICAL_NUCLEUS_DIAMETER_PX
    scale_diameter = equivalent_diameter(np.count_nonzero(ndi.binary_fill_holes(stained)))
    merged = merge_lobes(stained, lobe_gap_ratio * scale_diameter)
    return _central_object(merged)


def _central_object(mask: np.ndarray) -> tuple[float, float, float]:
    """(centroid_y, centroid_x, equivalent diameter) of the largest component whose centroid
    lies within :data:`CENTRAL_REGION_FRACTION` of the image's smaller side from its centre
    (the nearest component when none does): a speck or a lobe near the centre is not the
    cell."""
    labels, n_labels = ndi.label(mask)
    index = np.arange(1, n_labels + 1)
    centroids = np.asarray(ndi.center_of_mass(mask, labels, index)).reshape(-1, 2)
    areas = np.asarray(ndi.sum_labels(mask, labels, index)).reshape(-1)
    centre = (np.asarray(mask.shape) - 1) / 2.0
    distances = np.linalg.norm(centroids - centre, axis=1)
    central = distances <= CENTRAL_REGION_FRACTION * min(mask.shape)
    chosen = int(np.argmax(np.where(central, areas, -1))) if central.any() else distances.argmin()
    return (
        float(centroids[chosen, 0]),
        float(centroids[chosen, 1]),
        float(equivalent_diameter(areas[chosen])),
    )
