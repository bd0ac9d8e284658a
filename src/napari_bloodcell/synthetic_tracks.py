"""Synthetic time-lapses with tracking ground truth, driven by real neutrophil trajectories.

Leukocytes move along real two-photon neutrophil tracks (celltrackR ``Neutrophils.csv``: µm,
24 s steps), read at run time from ``../shared/data`` next to the repository or from an
explicit path, each randomly rotated, placed and started; without the file they follow
persistent random walks with similar step lengths. Platelets are adherent: single or in
touching aggregates, with sub-µm jitter. Objects are occasionally out of focus (not drawn and
absent from the ground truth, so a tracker must bridge the gap). Renderings: ``fluorescence``
(dim green leukocytes, bright red platelets on a dark streaky background, like flowcatchR's
mesentery) or ``smear`` (purple cells absorbing light on a pale background). Noise, blur,
density, speed and out-of-focus rate grow with the difficulty level; every level has the
same gain drift (−15 % to +35 % over the sequence).

Everything is deterministic for a given ``seed``. Axis order: (T, Y, X[, C]); positions (y, x)
in px; the pixel size is :data:`PIXEL_SIZE_UM` and the frame interval :data:`FRAME_INTERVAL_S`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .errors import InputImageError
from .synthetic import (
    _FLUORESCENCE_BACKGROUND_RGB,
    _LEUKOCYTE_RGB,
    _NUCLEUS_OD,
    _PLATELET_OD,
    _PLATELET_RGB,
    _SMEAR_BACKGROUND_RGB,
    WBC_CLASSES,
    _check_count,
    _check_shape,
    _low_frequency_field,
    _normalized_radius,
    _smooth_noise,
)
from .tracking.ctc import write_ctc

PIXEL_SIZE_UM = 0.75
FRAME_INTERVAL_S = 24.0
STYLES = ("fluorescence", "smear")
TRACK_COLUMNS = [
    "track_id",
    "frame",
    "centroid_y",
    "centroid_x",
    "cell_type",
    "cell_class",
    "diameter_px",
    "in_focus",
]
_LEUKOCYTE_DIAMETER_UM = (9.0, 13.0)
_PLATELET_DIAMETER_UM = (2.5, 4.0)
_PLATELET_JITTER_UM = 0.15
_AGGREGATE_SIZES = (3, 6)  # platelets per aggregate, [low, high)
_WALK_STEP_UM = 4.0  # mean step per 24 s of the real neutrophils (celltrackR)
_WALK_TURN_SD_RAD = 0.6
_WALK_MEAN_POINTS = 13.3  # mean time points per track of the real neutrophils


@dataclass(frozen=True)
class Difficulty:
    """Density (objects per 256 x 256 px field), speed factor, out-of-focus rate, image quality."""

    n_leukocytes: int
    n_platelets: int
    speed_factor: float
    miss_rate: float
    aggregate_fraction: float
    noise: float
    blur_px: float


DIFFICULTIES = {
    "easy": Difficulty(6, 12, 0.75, 0.01, 0.3, 0.5, 0.8),
    "medium": Difficulty(12, 25, 1.0, 0.03, 0.4, 1.0, 1.0),
    "hard": Difficulty(24, 50, 1.5, 0.08, 0.5, 1.5, 1.4),
}


@dataclass
class TrackingTimelapse:
    """A synthetic time-lapse with tracking ground truth.

    ``image``: (T, Y, X, 3) uint8 RGB. ``labels``: (T, Y, X) uint32, each object painted with
    its ``track_id`` where visible. ``tracks``: one row per object per frame it is in the field
    (:data:`TRACK_COLUMNS` + ``visible``: has pixels in ``labels``): true centre (px),
    ``cell_type`` ("wbc", "platelet"), ``cell_class`` (a WBC class or "platelet"),
    ``diameter_px``, ``in_focus``. ``trajectory_source``: the CSV used, or "random_walk".
    """

    image: np.ndarray
    labels: np.ndarray
    tracks: pd.DataFrame
    trajectory_source: str
    pixel_size_um: float = PIXEL_SIZE_UM
    frame_interval_s: float = FRAME_INTERVAL_S


def default_trajectories_path() -> Path:
    """``shared/data/celltrackr_tracks/Neutrophils.csv`` beside the repository."""
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return shared / "celltrackr_tracks" / "Neutrophils.csv"


def load_trajectories(path: str | Path) -> list[np.ndarray]:
    """Displacements (n_steps + 1, 2) (y, x) in µm from each track's start, one per track,
    one row per time step.

    ``path`` is a CSV with ``track_id, t_s, x_um, y_um`` (celltrackR layout). The time step
    is the file's median step; a track with missing time points (celltrackR's raw tracks
    skip some) is interpolated linearly onto that grid, so a gap is not one long step.
    """
    table = pd.read_csv(path)
    missing = {"track_id", "t_s", "x_um", "y_um"} - set(table.columns)
    if missing:
        raise InputImageError(f"{path}: trajectory CSV lacks columns {sorted(missing)}")
    table = table.sort_values(["track_id", "t_s"])
    steps = table.groupby("track_id")["t_s"].diff()
    steps = steps[steps > 0]
    if steps.empty:
        raise InputImageError(f"{path}: no track has 2 or more time points")
    step = float(steps.median())
    displacements = []
    for _, track in table.groupby("track_id"):
        times = track["t_s"].to_numpy(float)
        if len(track) < 2 or times[-1] - times[0] < step:
            continue
        grid = times[0] + step * np.arange(int(round((times[-1] - times[0]) / step)) + 1)
        grid = np.minimum(grid, times[-1])
        yx = np.stack([np.interp(grid, times, track[c].to_numpy(float)) for c in ("y_um", "x_um")])
        displacements.append(yx.T - yx[:, :1].T)
    if not displacements:
        raise InputImageError(f"{path}: no track spans one time step ({step} s)")
    return displacements


def _random_walk(rng: np.random.Generator) -> np.ndarray:
    """Displacements (n, 2) in µm of a persistent random walk like a real neutrophil track."""
    n_steps = 1 + int(rng.geometric(1.0 / (_WALK_MEAN_POINTS - 2)))  # n_steps + 1 points
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, _WALK_TURN_SD_RAD, n_steps))
    steps = rng.gamma(2.0, _WALK_STEP_UM / 2.0, n_steps)[:, None]
    moves = steps * np.stack([np.sin(heading), np.cos(heading)], axis=1)
    return np.vstack([np.zeros((1, 2)), np.cumsum(moves, axis=0)])


def _resolve_trajectories(trajectories: str | Path | None) -> tuple[list[np.ndarray], str]:
    """Real trajectories from ``trajectories`` ("auto": the shared CSV when present)."""
    if trajectories is None:
        return [], "random_walk"
    path = default_trajectories_path() if trajectories == "auto" else Path(trajectories)
    if not path.is_file():
        if trajectories == "auto":
            return [], "random_walk"
        raise InputImageError(f"{path}: trajectory file not found")
    return load_trajectories(path), str(path)


def _leukocyte_rows(
    rng: np.random.Generator,
    real: list[np.ndarray],
    n_leukocytes: int,
    n_frames: int,
    shape: tuple[int, int],
    speed_factor: float,
) -> list[pd.DataFrame]:
    """Leukocyte tracks until on average ``n_leukocytes`` are in the field per frame."""
    parts, object_frames, track_id = [], 0, 1
    while object_frames < n_leukocytes * n_frames:
        displacement = real[rng.integers(len(real))] if real else _random_walk(rng)
        angle = rng.uniform(0, 2 * np.pi)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        path_px = displacement @ rotation.T * speed_factor / PIXEL_SIZE_UM
        start = rng.uniform((0, 0), shape) - path_px.mean(axis=0) / 2
        first_frame = int(rng.integers(-len(path_px) + 1, n_frames))
        frames = first_frame + np.arange(len(path_px))
        centres = start + path_px
        inside = (
            (frames >= 0)
            & (frames < n_frames)
            & np.all((centres >= 0) & (centres < np.array(shape) - 1), axis=1)
        )
        if not inside.any():
            continue
        diameter = rng.uniform(*_LEUKOCYTE_DIAMETER_UM) / PIXEL_SIZE_UM
        parts.append(
            pd.DataFrame(
                {
                    "track_id": track_id,
                    "frame": frames[inside],
                    "centroid_y": centres[inside, 0],
                    "centroid_x": centres[inside, 1],
                    "cell_type": "wbc",
                    "cell_class": str(rng.choice(WBC_CLASSES)),
                    "diameter_px": diameter,
                }
            )
        )
        object_frames += int(inside.sum())
        track_id += 1
    return parts


def _platelet_sites(
    rng: np.random.Generator, n_platelets: int, shape: tuple[int, int], aggregate_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Adherent sites (n, 2) px and diameters (n,) px: singles and touching aggregates."""
    diameters = rng.uniform(*_PLATELET_DIAMETER_UM, n_platelets) / PIXEL_SIZE_UM
    sites: list[np.ndarray] = []
    n_in_aggregates = int(round(aggregate_fraction * n_platelets))
    while len(sites) < n_in_aggregates:  # a central platelet ringed by touching ones
        ring = _AGGREGATE_RING_DIAMETERS * diameters[len(sites)]  # the ring's reach
        centre = _free_site(rng, np.array(sites), diameters, len(sites), shape, ring)
        size = min(int(rng.integers(*_AGGREGATE_SIZES)), n_in_aggregates - len(sites))
        sites.append(centre)
        for k in range(1, size):
            angle = 2 * np.pi * k / (size - 1) + rng.normal(0, 0.2)
            spacing = diameters[len(sites)] * rng.uniform(0.85, 1.05)
            sites.append(centre + spacing * np.array([np.sin(angle), np.cos(angle)]))
    while len(sites) < n_platelets:  # a single apart from every earlier platelet
        sites.append(_free_site(rng, np.array(sites), diameters, len(sites), shape))
    return np.array(sites[:n_platelets]).reshape(-1, 2), diameters


_SITE_ATTEMPTS = 100
_AGGREGATE_RING_DIAMETERS = 1.6  # an aggregate's ring reaches this far beyond its centre's edge


def _free_site(
    rng: np.random.Generator,
    sites: np.ndarray,
    diameters: np.ndarray,
    index: int,
    shape: tuple[int, int],
    reach: float = 0.0,
) -> np.ndarray:
    """A random site (px) for platelet ``index`` at least 1 px from every one of ``sites``
    (one drawn on another showed one spot for two objects of the ground truth), also
    ``reach`` px beyond its own edge (an aggregate's ring); the last draw when
    :data:`_SITE_ATTEMPTS` draws all touch one (a crowded field)."""
    margin = 4.0 + reach
    for _ in range(_SITE_ATTEMPTS):
        site = rng.uniform(margin, np.array(shape) - margin)
        if not len(sites):
            return site
        distances = np.linalg.norm(sites - site, axis=1)
        gaps = distances - (diameters[: len(sites)] + diameters[index]) / 2 - reach
        if gaps.min() >= 1.0:
            return site
    return site


def simulate_tracks(
    difficulty: str = "medium",
    *,
    n_frames: int = 30,
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    trajectories: str | Path | None = "auto",
    n_leukocytes: int | None = None,
    n_platelets: int | None = None,
) -> tuple[pd.DataFrame, str]:
    """Ground-truth tracks (:data:`TRACK_COLUMNS`) without images, and the trajectory source.

    Counts default to the difficulty's density scaled to ``shape``; ``trajectories``: "auto"
    (shared celltrackR neutrophils when present), a CSV path, or None (random walks).
    """
    level = _difficulty(difficulty)
    if _check_count("n_frames", n_frames) < 1:
        raise InputImageError(f"n_frames must be a positive integer; got {n_frames!r}")
    n_frames = int(n_frames)
    shape = _check_shape(shape, 32)
    area = shape[0] * shape[1] / 256**2
    if n_leukocytes is None:
        n_leukocytes = round(level.n_leukocytes * area)
    if n_platelets is None:
        n_platelets = round(level.n_platelets * area)
    n_leukocytes = _check_count("n_leukocytes", n_leukocytes)
    n_platelets = _check_count("n_platelets", n_platelets)
    real, source = _resolve_trajectories(trajectories)
    rng = np.random.default_rng(_check_count("seed", seed))
    parts = _leukocyte_rows(rng, real, n_leukocytes, n_frames, shape, level.speed_factor)
    first_platelet = len(parts) + 1
    sites, diameters = _platelet_sites(rng, n_platelets, shape, level.aggregate_fraction)
    frames = np.arange(n_frames)
    for index, (site, diameter) in enumerate(zip(sites, diameters, strict=True)):
        jitter = rng.normal(0, _PLATELET_JITTER_UM / PIXEL_SIZE_UM, (n_frames, 2))
        parts.append(
            pd.DataFrame(
                {
                    "track_id": first_platelet + index,
                    "frame": frames,
                    "centroid_y": site[0] + jitter[:, 0],
                    "centroid_x": site[1] + jitter[:, 1],
                    "cell_type": "platelet",
                    "cell_class": "platelet",
                    "diameter_px": diameter,
                }
            )
        )
    tracks = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TRACK_COLUMNS)
    tracks["in_focus"] = rng.random(len(tracks)) >= level.miss_rate
    tracks = tracks.astype({"track_id": np.int64, "frame": np.int64})
    return tracks.sort_values(["frame", "track_id"], ignore_index=True)[TRACK_COLUMNS], source


def _difficulty(name: str) -> Difficulty:
    if name not in DIFFICULTIES:
        raise InputImageError(f"difficulty must be one of {list(DIFFICULTIES)}; got {name!r}")
    return DIFFICULTIES[name]


def _object_mask(
    row, shape: tuple[int, int], shape_seed: int
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Box, soft coverage (0..1) and normalised radius of one object (same outline each frame)."""
    radius = row.diameter_px / 2
    reach = radius * 1.6 + 3
    y0, y1 = max(int(row.centroid_y - reach), 0), min(int(row.centroid_y + reach) + 2, shape[0])
    x0, x1 = max(int(row.centroid_x - reach), 0), min(int(row.centroid_x + reach) + 2, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    rho = _normalized_radius(
        yy - row.centroid_y,
        xx - row.centroid_x,
        radius,
        np.random.default_rng(shape_seed),
        max_aspect=1.4 if row.cell_type == "wbc" else 1.8,
        wobble=0.05,
    )
    coverage = 1.0 / (1.0 + np.exp((rho - 1.0) * radius / 0.8))
    return (slice(y0, y1), slice(x0, x1)), coverage, rho


# Per style: background RGB, leukocyte and platelet colours, nucleus colour (smear).
_FLUORESCENCE = {
    "background": _FLUORESCENCE_BACKGROUND_RGB,
    "wbc": _LEUKOCYTE_RGB * 35.0,
    "platelet": _PLATELET_RGB * 190.0,
}
_SMEAR_OD = {
    "background": _SMEAR_BACKGROUND_RGB,
    "wbc": np.array([0.05, 0.10, 0.02]),
    "nucleus": _NUCLEUS_OD,
    "platelet": _PLATELET_OD,
}


def render_timelapse(
    tracks: pd.DataFrame,
    shape: tuple[int, int],
    *,
    style: str = "fluorescence",
    difficulty: str = "medium",
    seed: int = 0,
    n_frames: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``tracks`` (from :func:`simulate_tracks`): image (T, Y, X, 3) uint8, labels
    (T, Y, X) uint32 (track ids, visible pixels) and ``visible`` per row of ``tracks``.

    T is ``n_frames`` (default: up to the last frame in ``tracks``, at least 1). Leukocytes
    are drawn first, platelets over them; out-of-focus rows are not drawn.
    """
    if style not in STYLES:
        raise InputImageError(f"style must be one of {list(STYLES)}; got {style!r}")
    level = _difficulty(difficulty)
    last_frame = int(tracks["frame"].max()) if len(tracks) else 0
    if n_frames is None:
        n_frames = last_frame + 1
    elif int(n_frames) != n_frames or n_frames <= last_frame:
        raise InputImageError(
            f"n_frames must be an integer above the last frame of the tracks ({last_frame}); "
            f"got {n_frames!r}"
        )
    n_frames = int(n_frames)
    rng = np.random.default_rng(seed)
    track_ids = np.unique(tracks["track_id"])
    shape_seeds = dict(zip(track_ids, rng.integers(0, 2**31, len(track_ids)), strict=True))
    brightness = dict(zip(track_ids, rng.uniform(0.75, 1.25, len(track_ids)), strict=True))
    streaks = _smooth_noise(rng, shape, sigma=(2.0, 20.0))
    patches = _low_frequency_field(rng, shape, 40.0)
    texture = np.clip(1.0 + 0.15 * streaks + 0.25 * patches, 0.2, None)[..., None]
    gain_drift = rng.uniform(-0.15, 0.35)

    images = np.empty((n_frames, *shape, 3), dtype=np.uint8)
    labels = np.zeros((n_frames, *shape), dtype=np.uint32)
    drawn = tracks[tracks["in_focus"]]
    drawn = drawn.assign(order=(drawn["cell_type"] == "platelet").astype(int))
    by_frame = {f: g.sort_values(["order", "track_id"]) for f, g in drawn.groupby("frame")}
    for frame in range(n_frames):
        signal = np.zeros((*shape, 3), dtype=np.float32)
        for row in by_frame.get(frame, drawn.iloc[0:0]).itertuples():
            placed = _object_mask(row, shape, shape_seeds[row.track_id])
            if placed is None:
                continue
            box, coverage, rho = placed
            flicker = brightness[row.track_id] * rng.uniform(0.9, 1.1)
            if style == "fluorescence":
                colour = _FLUORESCENCE[row.cell_type] * flicker
            else:
                colour = _SMEAR_OD[row.cell_type] * flicker
                if row.cell_type == "wbc":  # a dark nucleus inside the pale cytoplasm
                    nucleus = np.clip((0.65 - rho) / 0.1, 0.0, 1.0)
                    signal[box] += (nucleus[..., None] * _SMEAR_OD["nucleus"]).astype(np.float32)
            signal[box] += (coverage[..., None] * colour).astype(np.float32)
            labels[frame][box][rho < 1.0] = row.track_id
        gain = 1.0 + gain_drift * frame / max(n_frames - 1, 1) + rng.normal(0.0, 0.02)
        if style == "fluorescence":
            light = (_FLUORESCENCE["background"] * texture + signal) * gain
        else:
            light = _SMEAR_OD["background"] * (1 + 0.05 * (texture - 1)) * np.exp(-signal) * gain
        light = ndi.gaussian_filter(light, sigma=(level.blur_px, level.blur_px, 0))
        noise_sd = level.noise * np.sqrt(0.5 * np.abs(light) + 4.0)
        light = light + rng.normal(0.0, 1.0, light.shape) * noise_sd
        images[frame] = np.clip(np.rint(light), 0, 255).astype(np.uint8)

    visible = np.zeros(len(tracks), dtype=bool)
    for frame, group in tracks.groupby("frame"):
        present = np.unique(labels[frame])
        visible[tracks.index.get_indexer(group.index)] = np.isin(group["track_id"], present)
    return images, labels, visible


def make_tracking_timelapse(
    difficulty: str = "medium",
    *,
    n_frames: int = 30,
    shape: tuple[int, int] = (256, 256),
    style: str = "fluorescence",
    seed: int = 0,
    trajectories: str | Path | None = "auto",
) -> TrackingTimelapse:
    """A synthetic time-lapse of ``difficulty`` ("easy", "medium", "hard") with ground truth.

    See :func:`simulate_tracks` and :func:`render_timelapse`; deterministic per ``seed``.
    """
    tracks, source = simulate_tracks(
        difficulty, n_frames=n_frames, shape=shape, seed=seed, trajectories=trajectories
    )
    image, labels, visible = render_timelapse(
        tracks, shape, style=style, difficulty=difficulty, seed=seed + 1, n_frames=n_frames
    )
    tracks["visible"] = visible
    return TrackingTimelapse(image=image, labels=labels, tracks=tracks, trajectory_source=source)


def detections_from_ground_truth(
    tracks: pd.DataFrame, *, class_accuracy: float = 1.0, seed: int = 0
) -> pd.DataFrame:
    """A per-cell table (as the pipeline writes) of the visible ground-truth objects.

    ``label`` is the true track id. Each leukocyte frame keeps its true class with
    probability ``class_accuracy``, else gets another WBC class; ``confidence`` is drawn
    from U(0.4, 1) whatever the outcome (it carries no information about correctness).
    """
    if not 0.0 <= class_accuracy <= 1.0:
        raise InputImageError(f"class_accuracy must be in [0, 1]; got {class_accuracy}")
    shown = tracks["visible"] if "visible" in tracks else tracks["in_focus"]
    cells = tracks[shown.to_numpy(bool)].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    wrong = (cells["cell_type"] == "wbc").to_numpy() & (rng.random(len(cells)) >= class_accuracy)
    shift = rng.integers(1, len(WBC_CLASSES), len(cells))
    true_index = cells["cell_class"].map({c: i for i, c in enumerate(WBC_CLASSES)})
    noisy = np.array(WBC_CLASSES)[(true_index.fillna(0).astype(int) + shift) % len(WBC_CLASSES)]
    return pd.DataFrame(
        {
            "source": "synthetic",
            "frame": cells["frame"],
            "label": cells["track_id"],
            "centroid_y": cells["centroid_y"],
            "centroid_x": cells["centroid_x"],
            "diameter_px": cells["diameter_px"],
            "cell_type": cells["cell_type"],
            "cell_class": np.where(wrong, noisy, cells["cell_class"]),
            "confidence": rng.uniform(0.4, 1.0, len(cells)),
        }
    )


def write_ground_truth_ctc(
    timelapse: TrackingTimelapse,
    folder: str | Path,
    cell_type: str | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write the ground truth in CTC layout: ``folder/TRA/man_track###.tif`` + ``man_track.txt``
    (only the objects of ``cell_type``, e.g. ``"wbc"``, when given; an earlier ground truth
    there is replaced only with ``overwrite``).

    Objects hidden in a frame (out of focus or fully covered) split their track; the piece
    after the gap has the piece before it as parent, as in the challenge's format.
    """
    visible = timelapse.tracks[timelapse.tracks["visible"]]
    if cell_type is not None:
        visible = visible[visible["cell_type"] == cell_type]
    return write_ctc(
        folder,
        timelapse.labels,
        visible.assign(label=visible["track_id"]),
        ground_truth=True,
        overwrite=overwrite,
    )
