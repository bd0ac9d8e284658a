"""Parameters, units and input checks shared by the tracking modules.

Lengths are µm when a pixel size is known, else px; times are minutes when a frame interval is
known, else frames. Coordinates in the cells table are always (y, x) pixel centroids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._checks import is_real
from ..classes import UNCERTAIN
from ..errors import TrackingError

TRACKED_CELL_TYPES = ("wbc", "platelet")
"""Cell types that are linked (each type on its own); red cells are not tracked."""

KNOWN_CELL_TYPES = (*TRACKED_CELL_TYPES, "rbc")
"""The cell types of a cells table (those segmentation gives)."""

REQUIRED_COLUMNS = ("frame", "centroid_y", "centroid_x", "cell_type")

# Defaults when both a pixel size and a frame interval are known (µm/min). Neutrophils in the
# celltrackR two-photon data move < 46 µm/min in 99 % of 24 s steps; platelets are adherent.
DEFAULT_MAX_SPEED_UM_PER_MIN = {"wbc": 50.0, "platelet": 5.0}
# Otherwise the largest step per frame is this many median cell diameters of the type.
DEFAULT_MAX_STEP_DIAMETERS = {"wbc": 1.0, "platelet": 0.5}
# Diameters assumed when the table has no ``diameter_px`` column: in µm with a pixel size
# (a neutrophil ~10 µm, a platelet ~3 µm), else in px.
FALLBACK_DIAMETER_UM = {"wbc": 10.0, "platelet": 3.0}
FALLBACK_DIAMETER_PX = {"wbc": 15.0, "platelet": 4.0}
_ROUNDING = 1e-6  # tolerance of the [0, 1] check of confidences
JITTER_DIAMETERS = 0.5
"""The reach of a link is never below this many median diameters: the centroid of a cell
that does not move wanders by segmentation noise, and speed × a short frame interval (2 s:
0.17 µm for a platelet) is less than that noise (static platelets broke into 15× as many
tracks)."""


@dataclass(frozen=True)
class TrackingParams:
    """How to link cells and measure their interactions.

    Lengths in µm (px without a pixel size); speeds in µm/min (px/frame without a pixel size
    and a frame interval; µm/frame or px/min with only one of them).

    * ``wbc_max_speed`` / ``platelet_max_speed``: largest speed of a link; None: 50 / 5 µm/min
      with full units, else 1 / 0.5 median cell diameters per frame. The reach of a link
      is never below :data:`JITTER_DIAMETERS` median diameters (segmentation noise).
    * ``max_gap_frames``: missed frames that gap closing may bridge (0 disables it).
    * ``contact_distance``: centre distance at which (or below) a leukocyte touches a platelet;
      None: half the sum of the median leukocyte and platelet diameters (touching outlines).
    * ``min_contact_frames``: consecutive frames in contact that make a contact event.
    * ``aggregate_distance``: platelets at most this far apart (centre to centre) belong to
      the same aggregate (single linkage); None: 1.5 median platelet diameters.
    * ``min_aggregate_size``: platelets in a cluster for it to count as an aggregate.
    * ``msd_max_lag_frames``: largest lag of the mean-squared displacement.
    """

    wbc_max_speed: float | None = None
    platelet_max_speed: float | None = None
    max_gap_frames: int = 2
    contact_distance: float | None = None
    min_contact_frames: int = 2
    aggregate_distance: float | None = None
    min_aggregate_size: int = 3
    msd_max_lag_frames: int = 20

    def __post_init__(self) -> None:
        for name in (
            "wbc_max_speed",
            "platelet_max_speed",
            "contact_distance",
            "aggregate_distance",
        ):
            _check_positive(name, getattr(self, name), allow_none=True)
        for name, minimum in (
            ("max_gap_frames", 0),
            ("min_contact_frames", 1),
            ("min_aggregate_size", 2),
            ("msd_max_lag_frames", 1),
        ):
            value = getattr(self, name)
            whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            whole = whole or (isinstance(value, (float, np.floating)) and float(value).is_integer())
            if not whole or value < minimum:
                raise TrackingError(f"{name} must be an integer >= {minimum}; got {value!r}")
            object.__setattr__(self, name, int(value))  # 20.0 → 20: used as a count


@dataclass(frozen=True)
class Units:
    """Pixel size (µm/px) and frame interval (s), either None when unknown."""

    pixel_size_um: float | None = None
    frame_interval_s: float | None = None

    def __post_init__(self) -> None:
        _check_positive("pixel_size_um", self.pixel_size_um, allow_none=True)
        _check_positive("frame_interval_s", self.frame_interval_s, allow_none=True)

    @property
    def length_unit(self) -> str:
        return "um" if self.pixel_size_um is not None else "px"

    @property
    def time_unit(self) -> str:
        return "min" if self.frame_interval_s is not None else "frame"

    @property
    def speed_unit(self) -> str:
        return f"{self.length_unit}_per_{self.time_unit}"

    @property
    def complete(self) -> bool:
        return self.pixel_size_um is not None and self.frame_interval_s is not None

    def lengths(self, pixels):
        """Pixel lengths in the length unit (µm or px)."""
        return pixels * self.pixel_size_um if self.pixel_size_um is not None else pixels

    def times(self, frames):
        """Frame counts in the time unit (min or frames)."""
        return frames * self.frame_interval_s / 60.0 if self.frame_interval_s else frames

    def seconds(self, frames):
        """Frame counts in seconds (NaN without a frame interval)."""
        return frames * (self.frame_interval_s if self.frame_interval_s else np.nan)


def empty_table(dtypes: dict[str, object]) -> pd.DataFrame:
    """A table without rows whose columns have ``dtypes`` (those of the table with rows)."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in dtypes.items()})


MAX_TIME_OR_SPEED = 1e6
"""The largest speed, distance, pixel size and frame interval a tracking accepts (in its
units): larger ones overflowed in linking (a squared reach) and mean nothing for cells."""


def _check_positive(name: str, value, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not is_real(value) or not np.isfinite(value) or not 0 < value <= MAX_TIME_OR_SPEED:
        raise TrackingError(
            f"{name} must be a positive number up to {MAX_TIME_OR_SPEED:g}; got {value!r}"
        )


def median_diameter(cells: pd.DataFrame, cell_type: str, units: Units) -> float:
    """Median diameter of ``cell_type`` cells in the length unit (fallback if unknown)."""
    diameters = pd.Series(dtype=float)
    if "diameter_px" in cells:
        diameters = cells.loc[cells["cell_type"] == cell_type, "diameter_px"].dropna()
    if len(diameters):
        return float(units.lengths(float(diameters.median())))
    if units.pixel_size_um is not None:
        return FALLBACK_DIAMETER_UM[cell_type]
    return FALLBACK_DIAMETER_PX[cell_type]


def max_step(cells: pd.DataFrame, cell_type: str, units: Units, params: TrackingParams) -> float:
    """Largest displacement per frame (length unit) of a ``cell_type`` link, never below
    :data:`JITTER_DIAMETERS` median diameters."""
    diameter = median_diameter(cells, cell_type, units)
    speed = getattr(params, f"{cell_type}_max_speed")
    if speed is None and units.complete:
        speed = DEFAULT_MAX_SPEED_UM_PER_MIN[cell_type]
    if speed is None:
        return DEFAULT_MAX_STEP_DIAMETERS[cell_type] * diameter
    return max(float(speed * units.times(1.0)), JITTER_DIAMETERS * diameter)


def checked_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """A clean copy of the per-cell table (index 0..n-1, int64 ``frame``) or TrackingError."""
    if not isinstance(cells, pd.DataFrame):
        raise TrackingError(f"expected a pandas DataFrame of cells; got {type(cells).__name__}")
    missing = [column for column in REQUIRED_COLUMNS if column not in cells]
    if missing:
        raise TrackingError(
            f"the cells table lacks column(s) {missing}; tracking needs "
            f"{list(REQUIRED_COLUMNS)} (the table written by 'napari-bloodcell analyze')"
        )
    cells = cells.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(cells["frame"]) or pd.api.types.is_timedelta64_dtype(
        cells["frame"]
    ):
        raise TrackingError(
            "the frame column holds times; tracking needs frame indices (0, 1, 2, …) and "
            "the frame interval given apart (frame_interval_s, --frame-interval)"
        )
    frames = pd.to_numeric(cells["frame"], errors="coerce").to_numpy(dtype=float)
    bad_frames = ~np.isfinite(frames) | (frames < 0) | (frames != np.round(frames))
    if bad_frames.any():
        raise TrackingError(
            f"{int(bad_frames.sum())} row(s) have a frame that is not an integer >= 0 "
            f"(rows {np.flatnonzero(bad_frames)[:5].tolist()})"
        )
    centroids = cells[["centroid_y", "centroid_x"]].apply(pd.to_numeric, errors="coerce")
    bad_centroids = ~np.isfinite(centroids.to_numpy(dtype=float)).all(axis=1)
    if bad_centroids.any():
        raise TrackingError(
            f"{int(bad_centroids.sum())} row(s) have NaN or infinite centroid_y/centroid_x "
            f"(rows {np.flatnonzero(bad_centroids)[:5].tolist()})"
        )
    if "label" in cells:
        missing_labels = cells["label"].isna().to_numpy()
        if missing_labels.any():
            raise TrackingError(
                f"{int(missing_labels.sum())} row(s) have no label "
                f"(rows {np.flatnonzero(missing_labels)[:5].tolist()}); give every row its "
                f"cell's label in the frame's label image, or drop the label column"
            )
        key = [c for c in ("source", "frame", "label") if c in cells]
        duplicated = cells.duplicated(key, keep=False).to_numpy()
        if duplicated.any():
            raise TrackingError(
                f"{int(duplicated.sum())} row(s) share the same {'/'.join(key)} "
                f"(rows {np.flatnonzero(duplicated)[:5].tolist()}); each label must be one cell"
            )
    cells = cells.copy()
    for column, (wanted, valid) in CHECKED_NUMBERS.items():
        if column in cells:
            cells[column] = _checked_numbers(cells[column], column, wanted, valid)
    cells["frame"] = frames.astype(np.int64)
    cells[["centroid_y", "centroid_x"]] = centroids.astype(float)
    cells["cell_type"] = cells["cell_type"].astype(str).str.strip().str.lower()  # "WBC"
    unknown = cells.loc[~cells["cell_type"].isin(KNOWN_CELL_TYPES), "cell_type"].value_counts()
    if len(unknown):  # (they were left out in silence: a table of "neutrophil" rows, no track)
        named = ", ".join(f"{value!r} ({count} rows)" for value, count in unknown.head(5).items())
        raise TrackingError(
            f"cell_type {named}{' …' if len(unknown) > 5 else ''} is none of "
            f"{', '.join(KNOWN_CELL_TYPES)}: tracking links 'wbc' and 'platelet' rows and leaves "
            f"red cells ('rbc') out; give those rows one of these types (a neutrophil is a "
            f"'wbc', its class goes in cell_class) or drop them"
        )
    if "cell_class" in cells:  # a missing class is "uncertain", not a class "nan" or "None"
        classes = cells["cell_class"].astype(object)
        cells["cell_class"] = classes.where(classes.notna(), UNCERTAIN).astype(str)
    else:
        cells["cell_class"] = cells["cell_type"]
    return cells


CHECKED_NUMBERS = {
    "confidence": ("in [0, 1]", lambda v: (v >= 0) & (v <= 1 + _ROUNDING)),  # float32 1+1e-7
    "diameter_px": ("a positive number of pixels", lambda v: (v > 0) & np.isfinite(v)),
}
"""Number columns of the cells table that tracking uses: (what they must be, the test)."""


def _checked_numbers(values: pd.Series, column: str, wanted: str, valid) -> pd.Series:
    """``values`` as numbers (of their float type, else float64; missing where they were)
    or TrackingError naming the rows that are not numbers or fail ``valid``."""
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    not_numbers = (numbers.isna() & values.notna()).to_numpy()
    if not_numbers.any():
        raise TrackingError(
            f"{int(not_numbers.sum())} row(s) have a {column} that is not a number "
            f"(rows {np.flatnonzero(not_numbers)[:5].tolist()}, e.g. "
            f"{values[not_numbers].iloc[0]!r})"
        )
    outside = (numbers.notna() & ~valid(numbers)).to_numpy()
    if outside.any():
        raise TrackingError(
            f"{int(outside.sum())} row(s) have a {column} that is not {wanted} "
            f"(rows {np.flatnonzero(outside)[:5].tolist()}, e.g. {float(numbers[outside].iloc[0])})"
        )
    return numbers.astype(values.dtype) if values.dtype.kind == "f" else numbers  # (float32)
