"""Synthetic blood-cell images with exact instance ground truth.

Two generators, both deterministic for a given ``seed`` (``numpy.random.default_rng``):

* :func:`make_smear`: a brightfield Giemsa/Wright blood-smear frame at BCCD scale
  (640 x 480 px, RBC ~100 px across, WBC 128-228 px: lymphocytes the smallest), composed by
  Beer-Lambert absorption so overlapping cells darken like real ones, then blurred, noised
  and JPEG-compressed.
* :func:`make_timelapse`: an intravital fluorescence time-lapse like flowcatchR's mesentery
  sequence: dim green leukocytes on random walks and bright red, mostly adherent platelets on a
  dark, streaky background.

Ground-truth labels hold exactly the visible pixels of each object: an object drawn later
occludes the objects under it, except that in smears white cells (drawn first) stay on top
of everything drawn after them (in time-lapses platelets are drawn over leukocytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import imageio.v3 as iio
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.filters import gaussian
from skimage.transform import resize

from ._checks import is_real
from .errors import InputImageError
from .reading import check_frame_pixels

WBC_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil")

# Smear colours, measured on the BCCD frames (RGB, 0-255): the empty glass is ~(205, 207, 204);
# optical densities (-ln transmission) per R, G, B channel.
_SMEAR_BACKGROUND_RGB = np.array([205.0, 207.0, 204.0])
_RBC_OD = np.array([0.10, 0.25, 0.24])
_NUCLEUS_OD = np.array([0.45, 0.6, 0.0])
_PLATELET_OD = np.array([0.38, 0.50, 0.06])
_EOSINOPHIL_GRANULE_OD = np.array([0.02, 0.50, 0.40])
_CYTOPLASM_OD = {
    "neutrophil": np.array([0.03, 0.08, 0.01]),
    "eosinophil": np.array([0.03, 0.08, 0.01]),
    "lymphocyte": np.array([0.16, 0.10, 0.02]),
    "monocyte": np.array([0.11, 0.10, 0.02]),
}
_WBC_RADIUS_PX = {
    "neutrophil": (84.0, 104.0),
    "eosinophil": (84.0, 104.0),
    "lymphocyte": (64.0, 80.0),
    "monocyte": (94.0, 114.0),
}
_RBC_RADIUS_PX = (50.0, 4.0)  # mean, sd: ~100 px diameter like BCCD
_PLATELET_DIAMETER_PX = (14.0, 30.0)
_HALO_OD = 0.15  # bright refraction ring just outside red cells, relative to their OD
_RBC_MIN_VISIBLE_FRACTIONS = (0.85, 0.7, 0.5, 0.3)
_PLACEMENT_ATTEMPTS = 480  # per object, over all relaxation steps


@dataclass
class SyntheticSmear:
    """A synthetic smear frame and its ground truth.

    ``image`` is (Y, X, 3) uint8 RGB; ``labels`` is (Y, X) uint32 with instances 1..N and 0 for
    background; ``cells`` has one row per label: ``label, cell_type`` ("wbc", "rbc",
    "platelet"), ``wbc_class`` ("neutrophil", "lymphocyte", "monocyte", "eosinophil", or ""
    for non-WBC) and ``centroid_y, centroid_x`` of the visible pixels (px).
    """

    image: np.ndarray
    labels: np.ndarray
    cells: pd.DataFrame


@dataclass
class SyntheticTimelapse:
    """A synthetic fluorescence time-lapse and its ground truth.

    ``image`` is (T, Y, X, 3) uint8 RGB (platelets red, leukocytes green, blue nearly empty);
    ``labels`` is (T, Y, X) uint32 where an object keeps its track id in every frame; ``tracks``
    has one row per object per frame: ``track_id, frame, centroid_y, centroid_x`` (the
    object's true sub-pixel centre, px), ``cell_type`` ("wbc", "platelet") and ``visible``
    (whether the object has pixels in that frame's labels).
    """

    image: np.ndarray
    labels: np.ndarray
    tracks: pd.DataFrame


@dataclass
class _Sprite:
    """An object rendered in its own box: ``mask`` (h, w) bool, ``density`` (h, w, C) float.

    ``center`` is the object's centre (y, x) in box coordinates (px).
    """

    mask: np.ndarray
    density: np.ndarray
    center: tuple[float, float]


# --------------------------------------------------------------------------- shared helpers


def _check_shape(shape: tuple[int, int], minimum: int) -> tuple[int, int]:
    """``shape`` as (Y, X) whole numbers of at least ``minimum`` px, within the frame pixel
    budget (:func:`~.reading.check_frame_pixels`), or InputImageError."""
    if len(shape) != 2 or not all(_is_whole(side) for side in shape) or min(shape) < minimum:
        raise InputImageError(
            f"shape must be (Y, X) whole numbers, both sides >= {minimum} px; got {shape}"
        )
    check_frame_pixels(int(shape[0]), int(shape[1]))
    return int(shape[0]), int(shape[1])


def _check_count(name: str, value: int) -> int:
    """``value`` as a non-negative int, or InputImageError."""
    if not _is_whole(value) or value < 0:
        raise InputImageError(f"{name} must be a non-negative integer; got {value!r}")
    return int(value)


def _is_whole(value) -> bool:
    """A whole number (an int, or a float such as 3.0; not NaN, infinite, text or bool)."""
    return is_real(value) and bool(np.isfinite(value)) and float(value).is_integer()


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation, float32."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def _low_frequency_field(
    rng: np.random.Generator, shape: tuple[int, int], cell_px: float
) -> np.ndarray:
    """Smooth unit-variance field varying over ~``cell_px`` pixels (cheap: upsampled grid)."""
    coarse_shape = (max(2, round(shape[0] / cell_px)) + 2, max(2, round(shape[1] / cell_px)) + 2)
    coarse = rng.standard_normal(coarse_shape)
    field = resize(coarse, shape, order=3, mode="reflect", anti_aliasing=False)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _box_grid(radius: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Pixel offsets (dy, dx) from a random sub-pixel centre in a box holding ``radius``."""
    half = int(np.ceil(radius)) + 3
    center = (half + rng.uniform(-0.5, 0.5), half + rng.uniform(-0.5, 0.5))
    yy, xx = np.mgrid[0 : 2 * half + 1, 0 : 2 * half + 1].astype(np.float32)
    return yy - center[0], xx - center[1], center


def _normalized_radius(
    dy: np.ndarray,
    dx: np.ndarray,
    radius: float,
    rng: np.random.Generator,
    *,
    max_aspect: float,
    wobble: float,
) -> np.ndarray:
    """Distance from the centre divided by a random, slightly irregular boundary radius.

    The outline is an ellipse (aspect up to ``max_aspect``, random angle, same area as the
    circle of ``radius``) whose radius is modulated by harmonics 2-5 of relative amplitude
    ~``wobble``; the result is 1 on the outline, < 1 inside.
    """
    aspect = np.sqrt(rng.uniform(1.0, max_aspect))
    angle = rng.uniform(0, np.pi)
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / aspect
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) * aspect
    theta = np.arctan2(v, u)
    boundary = np.ones_like(theta)
    for harmonic in range(2, 6):
        amplitude = rng.normal(0.0, wobble / harmonic)
        boundary += amplitude * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(u, v) / (radius * boundary)


def _coverage(rho: np.ndarray, radius: float) -> np.ndarray:
    """Anti-aliased inside fraction (0..1) of pixels given the normalized radius ``rho``."""
    return np.clip((1.0 - rho) * radius + 0.5, 0.0, 1.0)


def _blob_fields(
    dy: np.ndarray,
    dx: np.ndarray,
    centers: np.ndarray,
    radii: np.ndarray,
    rng: np.random.Generator,
    *,
    max_aspect: float,
) -> np.ndarray:
    """Soft irregular blobs (n, h, w): 1 at each centre, 0.5 on its outline of ~``radii`` px.

    Summed, they merge like metaballs (threshold 0.5): blobs closer than ~1.7 radii join.
    """
    rhos = [
        _normalized_radius(dy - cy, dx - cx, r, rng, max_aspect=max_aspect, wobble=0.08)
        for (cy, cx), r in zip(centers, radii, strict=True)
    ]
    return 0.5 ** np.square(np.stack(rhos))


def _paste_bounds(top_left: tuple[int, int], box_shape: tuple[int, int], frame_shape):
    """Frame and box slices of a box at ``top_left`` clipped to the frame (None if outside)."""
    y0, x0 = top_left
    fy0, fx0 = max(y0, 0), max(x0, 0)
    fy1, fx1 = min(y0 + box_shape[0], frame_shape[0]), min(x0 + box_shape[1], frame_shape[1])
    if fy0 >= fy1 or fx0 >= fx1:
        return None
    frame = (slice(fy0, fy1), slice(fx0, fx1))
    box = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
    return frame, box


def _top_left(sprite: _Sprite, center_yx: tuple[float, float]) -> tuple[int, int]:
    """Integer box origin that puts the sprite centre at ``center_yx`` (px, rounded)."""
    return round(center_yx[0] - sprite.center[0]), round(center_yx[1] - sprite.center[1])


# --------------------------------------------------------------------------- smear sprites


def _rbc_sprite(rng: np.random.Generator) -> _Sprite:
    """A biconcave red cell: salmon disc with a pale, off-centre pallor and a darker rim."""
    radius = float(np.clip(rng.normal(*_RBC_RADIUS_PX), 40.0, 62.0))
    dy, dx, center = _box_grid(radius * 1.15, rng)
    rho = _normalized_radius(dy, dx, radius, rng, max_aspect=1.25, wobble=0.06)
    pallor_depth = rng.uniform(0.4, 0.85)
    pallor_width = rng.uniform(0.4, 0.6) * radius
    shift = rng.normal(0.0, 0.08 * radius, 2)
    pallor_distance_sq = ((dy - shift[0]) ** 2 + (dx - shift[1]) ** 2) / pallor_width**2
    pallor = np.exp(-np.square(pallor_distance_sq))  # flat-topped: a clear central pallor
    rim = rng.uniform(0.2, 0.45) * np.exp(-np.square((rho - 0.93) / 0.07))
    unevenness = 1.0 + 0.04 * _smooth_noise(rng, rho.shape, 4)
    thickness = (1.0 - pallor_depth * pallor + rim) * unevenness
    halo = _HALO_OD * np.exp(-(((rho - 1.06) / 0.04) ** 2))
    color = _RBC_OD * rng.uniform(0.85, 1.15) * rng.uniform(0.93, 1.07, 3)
    density = (_coverage(rho, radius) * thickness - halo)[..., None] * color
    return _Sprite(rho < 1.0, density.astype(np.float32), center)


def _nucleus_lobes(
    wbc_class: str, radius: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Lobe centres (n, 2) (px from the cell centre) and radii (n,) (px) of a WBC nucleus.

    Lobes sit on an arc: 3-5 overlapping segments (neutrophil), two joined by a neck
    (eosinophil), 4-5 merged ones forming a kidney (monocyte) or one round mass (lymphocyte).
    """
    if wbc_class == "lymphocyte":
        offset = rng.normal(0.0, 0.06 * radius, 2)
        centers = offset + rng.normal(0.0, 0.08 * radius, (2, 2))
        return centers, rng.uniform(0.6, 0.66, 2) * radius
    # lobe radius and centre spacing relative to the cell radius; arc radius (same unit)
    n_lobes, lobe_radius, spacing, arc_radius = {
        "neutrophil": (int(rng.integers(3, 6)), 0.3, 0.48, 0.4),
        "eosinophil": (2, 0.27, 0.7, 0.38),
        "monocyte": (int(rng.integers(4, 6)), 0.26, 0.29, 0.38),
    }[wbc_class]
    radii = lobe_radius * radius * rng.uniform(0.85, 1.1, n_lobes)
    step_angle = 2 * np.arcsin(min(1.0, spacing / (2 * arc_radius)))
    angles = rng.uniform(0, 2 * np.pi) + step_angle * (np.arange(n_lobes) - (n_lobes - 1) / 2)
    angles += rng.normal(0.0, 0.1, n_lobes)
    arc_center = rng.normal(0.0, 0.05 * radius, 2)
    if wbc_class == "monocyte":
        arc_center -= 0.25 * radius * np.array([np.sin(angles.mean()), np.cos(angles.mean())])
    centers = arc_center + arc_radius * radius * np.stack([np.sin(angles), np.cos(angles)], 1)
    return centers, radii


def _segmented_nucleus(lobes: np.ndarray) -> np.ndarray:
    """Nucleus opacity (0..1) of overlapping ``lobes`` (n, h, w) parted by thin pale clefts."""
    lobes = np.sort(lobes, axis=0)
    strongest, runner_up = lobes[-1], lobes[-2]
    cleft = np.exp(-(((strongest - runner_up) / 0.05) ** 2)) * (runner_up > 0.4)
    return np.clip((strongest - 0.5) / 0.06, 0.0, 1.0) * (1.0 - 0.75 * cleft)


def _wbc_sprite(wbc_class: str, rng: np.random.Generator) -> _Sprite:
    """A leukocyte: pale cytoplasm disc with a purple, textured nucleus of its class's shape."""
    radius = rng.uniform(*_WBC_RADIUS_PX[wbc_class])
    dy, dx, center = _box_grid(radius * 1.12, rng)
    rho = _normalized_radius(dy, dx, radius, rng, max_aspect=1.15, wobble=0.05)
    cell = _coverage(rho, radius)

    centers, radii = _nucleus_lobes(wbc_class, radius, rng)
    lobes = _blob_fields(dy, dx, centers, radii, rng, max_aspect=1.6)
    if wbc_class == "neutrophil":
        nucleus = _segmented_nucleus(lobes) * cell
    else:
        nucleus = np.clip((lobes.sum(axis=0) - 0.5) / 0.06, 0.0, 1.0) * cell
    chromatin = (
        1.0 + 0.12 * _smooth_noise(rng, rho.shape, 2.0) + 0.2 * _smooth_noise(rng, rho.shape, 5.0)
    )
    nucleus_color = _NUCLEUS_OD * rng.uniform(0.85, 1.15)
    if wbc_class == "monocyte":
        nucleus_color = nucleus_color * 0.8  # lacy, paler chromatin

    granularity = 1.0 + 0.2 * _smooth_noise(rng, rho.shape, 1.5)
    cytoplasm = (cell * (1.0 - nucleus) * granularity)[..., None] * _CYTOPLASM_OD[wbc_class]
    if wbc_class == "monocyte":
        vacuoles = np.zeros_like(rho)
        for _ in range(int(rng.integers(3, 8))):
            position = center + rng.uniform(-0.7, 0.7, 2) * radius
            rr, cc = disk(position, rng.uniform(3, 8), shape=rho.shape)
            vacuoles[rr, cc] = 1.0
        cytoplasm *= 1.0 - 0.7 * ndi.gaussian_filter(vacuoles, 1.5)[..., None]
    if wbc_class == "eosinophil":
        seeds = (rng.random(rho.shape) < 1 / 40).astype(np.float32)
        granules = np.clip(ndi.gaussian_filter(seeds, 1.8) * 2 * np.pi * 1.8**2, 0.0, 1.0)
        granules *= cell * (1.0 - 0.6 * nucleus) * np.clip((0.97 - rho) / 0.05, 0.0, 1.0)
        cytoplasm += granules[..., None] * _EOSINOPHIL_GRANULE_OD * rng.uniform(0.8, 1.2)

    density = (nucleus * chromatin)[..., None] * nucleus_color + cytoplasm
    return _Sprite(rho < 1.0, density.astype(np.float32), center)


def _platelet_sprite(rng: np.random.Generator) -> _Sprite:
    """A platelet: small irregular purple fragment of 2-4 merged granular blobs."""
    radius = rng.uniform(*_PLATELET_DIAMETER_PX) / 2
    dy, dx, center = _box_grid(radius * 2.0, rng)
    n_blobs = int(rng.integers(2, 5))
    centers = rng.normal(0.0, 0.35 * radius, (n_blobs, 2))
    radii = rng.uniform(0.55, 0.75, n_blobs) * radius
    blobs = _blob_fields(dy, dx, centers, radii, rng, max_aspect=1.5)
    shape = np.clip((blobs.sum(axis=0) - 0.5) / 0.15, 0.0, 1.0)
    texture = 1.0 + 0.3 * _smooth_noise(rng, dy.shape, 1.0)
    color = _PLATELET_OD * rng.uniform(0.8, 1.3)
    density = (shape * texture)[..., None] * color
    return _Sprite(shape > 0.5, density.astype(np.float32), center)


def _artefact_density(rng: np.random.Generator, shape: tuple[int, int], n_artefacts: int):
    """Unlabelled optical artefacts: small dust rings and bright refractile specks (OD map)."""
    density = np.zeros(shape, dtype=np.float32)
    for _ in range(n_artefacts):
        center = rng.uniform((0, 0), shape)
        radius = rng.uniform(2.5, 5.5)
        rr, cc = disk(center, radius + 1.2, shape=shape)
        density[rr, cc] += 0.1
        rr, cc = disk(center, radius, shape=shape)
        density[rr, cc] -= rng.choice([0.1, 0.25])  # bright core: refractile speck or dust
    return density


# --------------------------------------------------------------------------- smear


class _SmearCanvas:
    """Labels and optical density of a smear, with visible-area bookkeeping for placement."""

    def __init__(self, shape: tuple[int, int], n_objects: int) -> None:
        self.labels = np.zeros(shape, dtype=np.uint32)
        self.density = np.zeros((*shape, 3), dtype=np.float32)
        self.visible = np.zeros(n_objects + 1, dtype=np.int64)
        self.in_frame_area = np.zeros(n_objects + 1, dtype=np.int64)

    def try_place(
        self,
        sprite: _Sprite,
        center_yx: tuple[float, float],
        label: int,
        *,
        protected_below: int,
        min_visible_fraction: float,
        max_under_protected: float = 0.0,
        background_only: bool = False,
    ) -> bool:
        """Draw ``sprite`` as ``label`` at ``center_yx`` if every object keeps enough pixels.

        Labels ``<= protected_below`` lie on top (never overwritten); other labels are
        overwritten. Placement is refused when this object or one it covers would keep less
        than ``min_visible_fraction`` of its in-frame area, when most of this object falls
        outside the frame, when more than ``max_under_protected`` of it would lie under
        protected objects, or (``background_only``) when it would cover any object.
        """
        bounds = _paste_bounds(_top_left(sprite, center_yx), sprite.mask.shape, self.labels.shape)
        if bounds is None:
            return False
        frame, box = bounds
        mask = sprite.mask[box]
        area_in_frame = int(mask.sum())
        if area_in_frame < 0.5 * sprite.mask.sum():
            return False
        under = self.labels[frame][mask]
        if background_only and under.any():
            return False
        protected = (under > 0) & (under <= protected_below)
        own_visible = area_in_frame - int(protected.sum())
        if own_visible < (1.0 - max_under_protected) * area_in_frame:
            return False
        covered = np.bincount(under[~protected], minlength=len(self.visible))
        covered[0] = 0
        remaining = self.visible - covered
        hit = covered > 0
        if np.any(remaining[hit] < min_visible_fraction * self.in_frame_area[hit]):
            return False

        self.visible = remaining
        self.visible[label] = own_visible
        self.in_frame_area[label] = area_in_frame
        target = self.labels[frame]
        target[mask & ~((target > 0) & (target <= protected_below))] = label
        self.density[frame] += sprite.density[box]
        return True


def _place(
    canvas: _SmearCanvas,
    sprite: _Sprite,
    label: int,
    rng: np.random.Generator,
    *,
    margin: float,
    protected_below: int,
    visible_fractions: tuple[float, ...],
    max_under_protected: float = 0.0,
    background_first: bool = False,
) -> None:
    """Place ``sprite`` at a random centre, relaxing the rules as attempts fail (or raise).

    The centre is uniform in the frame shrunk by ``margin`` px (negative: grown). Successive
    attempts allow less visible area (``visible_fractions``, strictest first) and, with
    ``background_first``, try the empty glass before anywhere else.
    """
    modes = (True, False) if background_first else (False,)
    rules = [(fraction, mode) for fraction in visible_fractions for mode in modes]
    attempts_per_rule = _PLACEMENT_ATTEMPTS // len(rules)
    low = np.full(2, margin)
    high = np.array(canvas.labels.shape, dtype=float) - margin
    if (high < low).any():
        raise InputImageError(
            f"a {canvas.labels.shape} frame is too small for object {label} and its margin "
            f"({margin:.0f} px); request a larger shape"
        )
    centers = rng.uniform(low, high, (attempts_per_rule * len(rules), 2))
    for attempt, center in enumerate(centers):
        min_visible, background_only = rules[attempt // attempts_per_rule]
        if canvas.try_place(
            sprite,
            center,
            label,
            protected_below=protected_below,
            min_visible_fraction=min_visible,
            max_under_protected=max_under_protected,
            background_only=background_only,
        ):
            return
    raise InputImageError(
        f"cannot fit object {label} into a {canvas.labels.shape} frame with each cell visible; "
        "request fewer cells or a larger shape"
    )


def _render_smear(density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Transmitted light through ``density`` (Y, X, 3 OD), with the optics and camera."""
    shape = density.shape[:2]
    background = _SMEAR_BACKGROUND_RGB + rng.normal(0.0, 3.0, 3)
    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    vignetting = 1.0 - rng.uniform(0.02, 0.07) * (
        ((yy - shape[0] / 2) / shape[0]) ** 2 + ((xx - shape[1] / 2) / shape[1]) ** 2
    )
    illumination = vignetting * (1.0 + 0.025 * _low_frequency_field(rng, shape, 120.0))
    stain = rng.uniform(0.85, 1.15) * rng.uniform(0.92, 1.08, 3)
    light = background * illumination[..., None] * np.exp(-density * stain)
    blur_px = rng.uniform(1.0, 1.5)
    light = ndi.gaussian_filter(light.astype(np.float32), sigma=(blur_px, blur_px, 0))
    light += rng.normal(0.0, 1.5, light.shape)
    image = np.clip(np.rint(light), 0, 255).astype(np.uint8)
    encoded = iio.imwrite("<bytes>", image, extension=".jpg", quality=int(rng.integers(75, 93)))
    return iio.imread(encoded)


def make_smear(
    shape: tuple[int, int] = (480, 640),
    *,
    n_rbc: int = 30,
    n_wbc: int = 2,
    n_platelets: int = 6,
    seed: int = 0,
) -> SyntheticSmear:
    """A synthetic Giemsa/Wright smear frame (BCCD scale) with its instance ground truth.

    ``shape`` is (Y, X) in px. Cell sizes are those of the 640 x 480 BCCD frames whatever the
    shape, so counts that cannot fit (each cell keeping at least 30 % of its area visible)
    raise InputImageError. RBCs touch and overlap; WBCs lie on top of RBCs; platelets lie on
    top of RBCs or on the glass, never on WBCs. WBC classes are drawn uniformly.
    """
    height, width = _check_shape(shape, 64)
    n_rbc = _check_count("n_rbc", n_rbc)
    n_wbc = _check_count("n_wbc", n_wbc)
    n_platelets = _check_count("n_platelets", n_platelets)
    rng = np.random.default_rng(_check_count("seed", seed))
    n_objects = n_wbc + n_rbc + n_platelets
    canvas = _SmearCanvas((height, width), n_objects)

    # Labels 1..n_wbc are WBCs (on top), then RBCs, then platelets (drawn last, over RBCs).
    wbc_classes = [str(c) for c in rng.choice(WBC_CLASSES, size=n_wbc)]
    for label, wbc_class in enumerate(wbc_classes, start=1):
        sprite = _wbc_sprite(wbc_class, rng)
        _place(
            canvas,
            sprite,
            label,
            rng,
            margin=0.55 * sprite.mask.shape[0] / 2,
            protected_below=0,
            visible_fractions=(1.0,),
        )
    for label in range(n_wbc + 1, n_wbc + n_rbc + 1):
        _place(
            canvas,
            _rbc_sprite(rng),
            label,
            rng,
            margin=-20.0,
            protected_below=n_wbc,
            visible_fractions=_RBC_MIN_VISIBLE_FRACTIONS,
            max_under_protected=0.08,
        )
    for label in range(n_wbc + n_rbc + 1, n_objects + 1):
        _place(
            canvas,
            _platelet_sprite(rng),
            label,
            rng,
            margin=10.0,
            protected_below=n_wbc,
            visible_fractions=_RBC_MIN_VISIBLE_FRACTIONS,
            background_first=rng.random() < 0.7,
        )

    n_artefacts = int(rng.integers(5, 20) * height * width / (480 * 640))
    canvas.density += _artefact_density(rng, (height, width), n_artefacts)[..., None]
    image = _render_smear(canvas.density, rng)

    labels = canvas.labels
    ids = np.arange(1, n_objects + 1)
    centroids = np.array(ndi.center_of_mass(np.ones_like(labels), labels, ids)).reshape(-1, 2)
    cells = pd.DataFrame(
        {
            "label": ids,
            "cell_type": ["wbc"] * n_wbc + ["rbc"] * n_rbc + ["platelet"] * n_platelets,
            "wbc_class": wbc_classes + [""] * (n_rbc + n_platelets),
            "centroid_y": centroids[:, 0],
            "centroid_x": centroids[:, 1],
        }
    )
    return SyntheticSmear(image=image, labels=labels, cells=cells)


# --------------------------------------------------------------------------- time-lapse

# Fluorescence colours (RGB, 0-255), after flowcatchR's mesentery sequence: a dark red-green
# background (~(25, 23, 11)), dim olive-green leukocytes and bright red platelets.
_FLUORESCENCE_BACKGROUND_RGB = np.array([24.0, 22.0, 10.0])
_LEUKOCYTE_RGB = np.array([0.6, 1.0, 0.3])
_PLATELET_RGB = np.array([1.0, 0.08, 0.15])
_LEUKOCYTE_DIAMETER_PX = (15.0, 25.0)
_PLATELET_SPOT_DIAMETER_PX = (3.0, 6.0)
_PLATELET_JITTER_PX = 0.3
_PLATELET_DROPOUT = 0.05  # chance per frame that a platelet is out of focus (not drawn)
_TURN_SD_RAD = 0.4  # heading change per frame of the persistent random walk


@dataclass
class _Spot:
    """A fluorescent object: fixed shape (re-drawn from ``shape_seed``), colour, path."""

    track_id: int
    cell_type: str
    radius: float
    max_aspect: float
    shape_seed: int
    edge_px: float
    rgb: np.ndarray
    positions: np.ndarray  # (T, 2) true centre (y, x) per frame, px
    in_focus: np.ndarray  # (T,) bool


def _persistent_walk(
    rng: np.random.Generator, n_frames: int, shape: tuple[int, int], margin: float, step_px: float
) -> np.ndarray:
    """(T, 2) centres (y, x) of a walk with ~``step_px`` steps, bouncing off the frame edges."""
    low, high = np.array([margin, margin]), np.array(shape, dtype=float) - margin
    position = rng.uniform(low, high)
    heading = rng.uniform(0, 2 * np.pi)
    positions = [position]
    for _ in range(n_frames - 1):
        heading += rng.normal(0.0, _TURN_SD_RAD)
        step = step_px * max(0.0, 1.0 + rng.normal(0.0, 0.1))
        proposal = position + step * np.array([np.sin(heading), np.cos(heading)])
        if not low[0] <= proposal[0] <= high[0]:
            heading = -heading
        if not low[1] <= proposal[1] <= high[1]:
            heading = np.pi - heading
        position = position + step * np.array([np.sin(heading), np.cos(heading)])
        position = np.clip(position, low, high)
        positions.append(position)
    return np.array(positions)


def _platelet_anchors(
    rng: np.random.Generator, n_platelets: int, shape: tuple[int, int], min_distance: float
) -> np.ndarray:
    """(n, 2) adherent platelet sites (y, x) at least ``min_distance`` px apart when possible."""
    anchors: list[np.ndarray] = []
    for _ in range(n_platelets):
        for _ in range(_PLACEMENT_ATTEMPTS):
            candidate = rng.uniform(4.0, np.array(shape, dtype=float) - 4.0)
            if all(np.hypot(*(candidate - a)) >= min_distance for a in anchors):
                break
        anchors.append(candidate)
    return np.array(anchors).reshape(-1, 2)


def _draw_spot(signal: np.ndarray, labels: np.ndarray, spot: _Spot, frame: int) -> None:
    """Add ``spot``'s fluorescence to ``signal`` (Y, X, 3) and paint its pixels into labels."""
    cy, cx = spot.positions[frame]
    reach = spot.radius * np.sqrt(spot.max_aspect) * 1.3 + 3 * spot.edge_px
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, labels.shape[0])
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, labels.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    shape_rng = np.random.default_rng(spot.shape_seed)  # same outline in every frame
    rho = _normalized_radius(
        yy - cy, xx - cx, spot.radius, shape_rng, max_aspect=spot.max_aspect, wobble=0.05
    )
    brightness = 1.0 / (1.0 + np.exp((rho - 1.0) * spot.radius / spot.edge_px))
    signal[y0:y1, x0:x1] += brightness[..., None] * spot.rgb
    labels[y0:y1, x0:x1][rho < 1.0] = spot.track_id


def make_timelapse(
    n_frames: int = 10,
    shape: tuple[int, int] = (128, 256),
    *,
    n_leukocytes: int = 4,
    n_platelets: int = 12,
    seed: int = 0,
    step_px: float = 2.0,
) -> SyntheticTimelapse:
    """A synthetic intravital fluorescence time-lapse (T, Y, X, 3) with tracking ground truth.

    Leukocytes (dim green blobs, 15-25 px) follow persistent random walks of ~``step_px`` px
    per frame and bounce off the frame edges; platelets (bright red spots, 3-6 px) stay at
    adherent sites with ~0.3 px jitter and drop out of focus in ~5 % of frames. Track ids:
    leukocytes 1..n_leukocytes, then platelets; platelets are drawn over leukocytes. The
    background is dark and streaky, the overall gain drifts over time, noise is shot-like.
    """
    height, width = _check_shape(shape, 32)
    n_frames = _check_count("n_frames", n_frames)
    n_leukocytes = _check_count("n_leukocytes", n_leukocytes)
    n_platelets = _check_count("n_platelets", n_platelets)
    if n_frames == 0:
        raise InputImageError("n_frames must be at least 1")
    if not is_real(step_px) or not np.isfinite(step_px) or step_px < 0:
        raise InputImageError(f"step_px must be a non-negative number; got {step_px!r}")
    rng = np.random.default_rng(_check_count("seed", seed))

    spots: list[_Spot] = []
    for track_id in range(1, n_leukocytes + 1):
        radius = rng.uniform(*_LEUKOCYTE_DIAMETER_PX) / 2
        spots.append(
            _Spot(
                track_id=track_id,
                cell_type="wbc",
                radius=radius,
                max_aspect=1.4,
                shape_seed=int(rng.integers(2**31)),
                edge_px=1.5,
                rgb=_LEUKOCYTE_RGB * rng.uniform(25.0, 45.0),
                positions=_persistent_walk(rng, n_frames, (height, width), radius + 1, step_px),
                in_focus=np.ones(n_frames, dtype=bool),
            )
        )
    anchors = _platelet_anchors(rng, n_platelets, (height, width), min_distance=10.0)
    for track_id, anchor in enumerate(anchors, start=n_leukocytes + 1):
        spots.append(
            _Spot(
                track_id=track_id,
                cell_type="platelet",
                radius=rng.uniform(*_PLATELET_SPOT_DIAMETER_PX) / 2,
                max_aspect=2.0,
                shape_seed=int(rng.integers(2**31)),
                edge_px=0.6,
                rgb=_PLATELET_RGB * rng.uniform(150.0, 240.0),
                positions=anchor + rng.normal(0.0, _PLATELET_JITTER_PX, (n_frames, 2)),
                in_focus=rng.random(n_frames) >= _PLATELET_DROPOUT,
            )
        )

    streaks = _smooth_noise(rng, (height, width), sigma=(2.0, 20.0))
    patches = _low_frequency_field(rng, (height, width), 40.0)
    background = np.clip(1.0 + 0.2 * streaks + 0.3 * patches, 0.2, None)[..., None]
    background = background * _FLUORESCENCE_BACKGROUND_RGB
    gain_drift = rng.uniform(-0.15, 0.35)

    images = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    labels = np.zeros((n_frames, height, width), dtype=np.uint32)
    for frame in range(n_frames):
        signal = background.copy()
        for spot in spots:
            if spot.in_focus[frame]:
                _draw_spot(signal, labels[frame], spot, frame)
        signal = gaussian(signal, sigma=1.0, channel_axis=-1, preserve_range=True)
        gain = 1.0 + gain_drift * frame / max(n_frames - 1, 1) + rng.normal(0.0, 0.02)
        signal *= gain
        signal += rng.normal(0.0, 1.0, signal.shape) * np.sqrt(0.5 * signal + 4.0)
        images[frame] = np.clip(np.rint(signal), 0, 255).astype(np.uint8)

    rows = []
    for spot in spots:
        for frame in range(n_frames):
            rows.append(
                {
                    "track_id": spot.track_id,
                    "frame": frame,
                    "centroid_y": float(spot.positions[frame, 0]),
                    "centroid_x": float(spot.positions[frame, 1]),
                    "cell_type": spot.cell_type,
                    "visible": bool(np.any(labels[frame] == spot.track_id)),
                }
            )
    tracks = pd.DataFrame(
        rows, columns=["track_id", "frame", "centroid_y", "centroid_x", "cell_type", "visible"]
    )
    return SyntheticTimelapse(image=images, labels=labels, tracks=tracks)
