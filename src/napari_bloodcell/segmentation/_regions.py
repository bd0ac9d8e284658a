"""Shared building blocks of the segmentation stage: the result type, unit scaling,
size filtering, touching-object splitting and the per-cell table.

All arrays are (Y, X); all lengths here are in pixels unless a name says otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import regionprops_table
from skimage.segmentation import relabel_sequential, watershed

CELL_TYPES: tuple[str, ...] = ("wbc", "rbc", "platelet")

TABLE_DTYPES: dict[str, str] = {
    "label": "int64",
    "cell_type": "str",
    "centroid_y": "float64",
    "centroid_x": "float64",
    "bbox_y0": "int64",
    "bbox_x0": "int64",
    "bbox_y1": "int64",
    "bbox_x1": "int64",
    "area_px": "int64",
    "diameter_px": "float64",
    "crop_diameter_px": "float64",
}

UM = {"unit": "um"}
"""Field metadata marking a parameter as a length in µm (scaled by ``in_pixels``)."""


@dataclass
class Segmentation:
    """Instance segmentation of one frame.

    ``labels``: (Y, X) uint32, 0 = background, objects numbered 1..N without gaps.
    ``cells``: one row per label, sorted by label, columns :data:`TABLE_DTYPES` (pixel units,
    half-open bounding boxes like ``regionprops.bbox``).
    ``modality``: ``"smear"`` or ``"fluorescence"``.
    """

    labels: np.ndarray
    cells: pd.DataFrame
    modality: str


@dataclass(frozen=True)
class LabelLayer:
    """Objects of one cell type: (Y, X) integer labels 1..n (0 = none).

    ``crop_diameters_px`` gives, per label 1..n, the size the crop stage scales by;
    ``None`` means each object's own equivalent diameter.
    """

    cell_type: str
    labels: np.ndarray
    crop_diameters_px: np.ndarray | None = None


def lengths_in_pixels(params, pixel_size_um: float | None, reference_pixel_size_um: float):
    """Copy of a parameter dataclass with every µm length field divided by the pixel size.

    Fields whose metadata is :data:`UM` are scaled; dimensionless fields are kept.
    ``pixel_size_um`` is µm per pixel; ``None`` uses ``reference_pixel_size_um``.
    """
    pixel_size = reference_pixel_size_um if pixel_size_um is None else float(pixel_size_um)
    if not np.isfinite(pixel_size) or pixel_size <= 0:
        raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    scaled = {
        field.name: getattr(params, field.name) / pixel_size
        for field in dataclasses.fields(params)
        if field.metadata == UM
    }
    return dataclasses.replace(params, **scaled)


def disk_area(diameter: float) -> float:
    """Area (px²) of a disk with the given diameter (px)."""
    return float(np.pi * diameter**2 / 4.0)


def equivalent_diameter(area: np.ndarray | float) -> np.ndarray | float:
    """Diameter (px) of the disk with the given area (px²)."""
    return np.sqrt(4.0 * np.asarray(area, dtype=np.float64) / np.pi)


def label_by_area(
    mask: np.ndarray, min_area: float, max_area: float = np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected components of ``mask`` and keep those with min ≤ area ≤ max (px²).

    Returns (labels numbered 1..n, areas of the kept labels in px²).
    """
    labels, _ = ndi.label(mask)
    return filter_labels_by_area(labels, min_area, max_area)


def filter_labels_by_area(
    labels: np.ndarray, min_area: float, max_area: float = np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the labels with min ≤ area ≤ max (px²), renumbered 1..n; also return their areas."""
    areas = np.bincount(labels.ravel())
    keep = (areas >= min_area) & (areas <= max_area)
    keep[0] = False
    return renumber_kept(labels, keep), areas[keep]


def renumber_kept(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Labels whose ``keep[label]`` is True, renumbered 1..n in increasing order; others 0."""
    new_ids = np.cumsum(keep) * keep
    return new_ids[labels].astype(np.int32)


def fill_small_holes(
    mask: np.ndarray, max_hole_area: float, *, at_border: bool = False
) -> np.ndarray:
    """``mask`` with enclosed background holes of at most ``max_hole_area`` px² filled.

    ``at_border``: also fill small holes cut open by the image border (the frame edge counts
    as foreground), e.g. the pallor of a red cell that the frame cuts through — those that
    touch ``mask`` on at least as many pixels as the edge (a patch of background with no
    cell, or a bay between cells mostly along the edge, is no hole).
    """
    padded = np.pad(mask, 1, constant_values=True) if at_border else mask
    holes = ndi.binary_fill_holes(padded) & ~padded
    small_holes, _ = label_by_area(holes, 0, max_hole_area)
    if at_border:
        small_holes = small_holes[1:-1, 1:-1]
        small_holes = _drop_holes_open_to_the_edge(small_holes, mask)
    return mask | (small_holes > 0)


def _drop_holes_open_to_the_edge(holes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``holes`` (labels) without those touching the frame edge on more pixels than
    ``mask`` (each hole's pixels beside a mask pixel, 4-connected)."""
    n_holes = int(holes.max(initial=0))
    if n_holes == 0:
        return holes
    edge = np.zeros(holes.shape, bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    beside_mask = ndi.binary_dilation(mask) & ~mask
    index = np.arange(1, n_holes + 1)
    on_edge = ndi.sum_labels(edge, holes, index)
    on_mask = ndi.sum_labels(beside_mask, holes, index)
    keep = np.concatenate([[False], on_mask >= on_edge])
    return np.where(keep[holes], holes, 0)


def split_touching(
    mask: np.ndarray,
    min_distance: float,
    downsample: int = 1,
    centres: np.ndarray | None = None,
) -> np.ndarray:
    """Split touching round objects of ``mask`` by a distance-transform watershed.

    ``min_distance`` (px, full resolution) is the smallest distance between two object
    centres. ``centres``: optional (Y, X) bool mask of known object centres (each connected
    blob seeds one object); in a component of ``mask`` holding one, distance-transform
    peaks then only add objects at least ``min_distance`` away from them. The watershed
    may run on a ``downsample``-times coarser grid for speed; the returned (Y, X) labels
    are full resolution and confined to ``mask``.
    """
    coarse = mask[::downsample, ::downsample]
    distance = ndi.distance_transform_edt(coarse)
    components, _ = ndi.label(coarse)
    peaks = peak_local_max(
        distance,
        min_distance=max(1, round(min_distance / downsample)),
        labels=components,
        exclude_border=False,
    )
    markers = np.zeros(coarse.shape, dtype=np.int32)
    n_known = 0
    if centres is not None:
        known = centres[::downsample, ::downsample] & coarse
        markers, n_known = ndi.label(known)
        if n_known:
            from_known = ndi.distance_transform_edt(~known)[tuple(peaks.T)]
            seeded = np.zeros(int(components.max()) + 1, dtype=bool)
            seeded[components[known]] = True  # (a component without one keeps its peaks)
            in_seeded = seeded[components[tuple(peaks.T)]]
            peaks = peaks[(from_known * downsample >= min_distance) | ~in_seeded]
    markers[tuple(peaks.T)] = np.arange(n_known + 1, n_known + len(peaks) + 1)
    coarse_labels = watershed(-distance, markers, mask=coarse)
    if downsample == 1:
        return coarse_labels
    full = np.repeat(np.repeat(coarse_labels, downsample, axis=0), downsample, axis=1)
    full = full[: mask.shape[0], : mask.shape[1]]
    full[~mask] = 0
    return full


def split_into_counts(
    labels: np.ndarray, weights: np.ndarray, counts: np.ndarray, n_iterations: int = 20
) -> np.ndarray:
    """Split each object of ``labels`` into ``counts[label]`` parts by weighted k-means.

    For objects that hide several touching ones without an intensity dip between them
    (e.g. a platelet aggregate): the pixel coordinates are clustered (weights: ``weights``,
    e.g. contrast, clipped at 0), starting from farthest-point seeds, so deterministic, and
    each pixel goes to its nearest centre. ``counts`` is indexed by label (entry 0 unused);
    objects with a count ≤ 1 are kept. Returns (Y, X) labels numbered 1..n.
    """
    result = labels.astype(np.int32, copy=True)
    next_label = int(labels.max(initial=0)) + 1
    boxes = ndi.find_objects(labels)
    for label in np.flatnonzero(np.asarray(counts) >= 2):
        if label == 0 or label > len(boxes) or boxes[label - 1] is None:
            continue
        box = boxes[label - 1]
        inside = labels[box] == label
        coords = np.argwhere(inside).astype(np.float64)
        k = min(int(counts[label]), len(coords))
        if k < 2:
            continue
        mass = np.clip(weights[box][inside], 0, None) + 1e-9
        part = _weighted_kmeans(coords, mass, k, n_iterations)
        pixels = np.argwhere(inside)[part > 0] + [box[0].start, box[1].start]
        result[tuple(pixels.T)] = next_label + part[part > 0] - 1
        next_label += k - 1
    return relabel_sequential(result)[0].astype(np.int32)  # 0 stays background


def _weighted_kmeans(coords: np.ndarray, mass: np.ndarray, k: int, n_iterations: int) -> np.ndarray:
    """Cluster index (0..k-1) of each (y, x) row of ``coords`` (weighted Lloyd iterations).

    Seeds: the pixel nearest the weighted centre, then repeatedly the pixel farthest from
    all seeds chosen so far.
    """
    centre = np.average(coords, axis=0, weights=mass)
    seeds = [int(np.argmin(((coords - centre) ** 2).sum(axis=1)))]
    nearest = ((coords - coords[seeds[0]]) ** 2).sum(axis=1)
    for _ in range(k - 1):
        seeds.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, ((coords - coords[seeds[-1]]) ** 2).sum(axis=1))
    centres = coords[seeds]
    assignment = np.zeros(len(coords), dtype=np.int64)
    for _ in range(n_iterations):
        assignment = np.argmin(((coords[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
        totals = np.bincount(assignment, mass, minlength=k)
        moved = np.stack(
            [np.bincount(assignment, mass * coords[:, axis], minlength=k) for axis in (0, 1)],
            axis=1,
        )
        new_centres = np.where(
            totals[:, None] > 0, moved / np.maximum(totals, 1e-12)[:, None], centres
        )
        if np.allclose(new_centres, centres):
            break
        centres = new_centres
    return assignment


def empty_segmentation(shape: tuple[int, int], modality: str) -> Segmentation:
    """A Segmentation with no objects: all-zero (Y, X) labels and a zero-row table."""
    return Segmentation(
        labels=np.zeros(shape, dtype=np.uint32),
        cells=_typed_table({column: [] for column in TABLE_DTYPES}),
        modality=modality,
    )


def combine_layers(
    layers: Sequence[LabelLayer], shape: tuple[int, int], modality: str
) -> Segmentation:
    """Merge per-type label layers into one Segmentation; earlier layers win overlaps.

    Pixels already claimed by an earlier layer are removed from later ones; objects left
    with no pixels disappear. Labels are renumbered 1..N in layer order.
    """
    labels = np.zeros(shape, dtype=np.uint32)
    cell_types: list[str] = []
    crop_diameters: list[float] = []
    for layer in layers:
        free = np.where(labels == 0, layer.labels, 0)
        surviving = np.bincount(free.ravel()) > 0
        surviving[0] = False
        n_kept = int(surviving.sum())
        if n_kept == 0:
            continue
        kept = renumber_kept(free, surviving)
        if layer.crop_diameters_px is None:
            layer_crop = np.full(n_kept, np.nan)
        else:
            surviving_ids = np.flatnonzero(surviving)
            layer_crop = np.asarray(layer.crop_diameters_px, dtype=np.float64)[surviving_ids - 1]
        offset = len(cell_types)
        labels[kept > 0] = kept[kept > 0] + offset
        cell_types.extend([layer.cell_type] * n_kept)
        crop_diameters.extend(layer_crop.tolist())
    if not cell_types:
        return empty_segmentation(shape, modality)
    props = regionprops_table(labels, properties=("label", "centroid", "bbox", "area"))
    diameters = equivalent_diameter(props["area"])
    crop = np.asarray(crop_diameters)
    table = {
        "label": props["label"],
        "cell_type": cell_types,
        "centroid_y": props["centroid-0"],
        "centroid_x": props["centroid-1"],
        "bbox_y0": props["bbox-0"],
        "bbox_x0": props["bbox-1"],
        "bbox_y1": props["bbox-2"],
        "bbox_x1": props["bbox-3"],
        "area_px": props["area"],
        "diameter_px": diameters,
        "crop_diameter_px": np.where(np.isnan(crop), diameters, crop),
    }
    return Segmentation(labels=labels, cells=_typed_table(table), modality=modality)


def _typed_table(columns: dict) -> pd.DataFrame:
    """DataFrame with exactly the :data:`TABLE_DTYPES` columns, order and dtypes."""
    table = pd.DataFrame({name: pd.Series(columns[name]) for name in TABLE_DTYPES})
    return table.astype(TABLE_DTYPES).reset_index(drop=True)
