"""Tracking: link per-frame cells into tracks, class per track, motility and interactions.

:func:`track_table` is the single entry point: it takes the per-cell table of
:mod:`napari_bloodcell.pipeline` (one row per cell per frame, centroids in px) and returns a
:class:`TrackingResult`; :func:`write_tracking` writes its tables as CSV and its settings as
JSON. Lengths are µm when ``pixel_size_um`` is given (else px); times are seconds / minutes
when ``frame_interval_s`` is given (else frames). See ``docs/tracking.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import BloodcellError, OutputExistsError, TrackingError
from ..table import write_table
from ._common import (
    MAX_TIME_OR_SPEED,
    TRACKED_CELL_TYPES,
    TrackingParams,
    Units,
    checked_cells,
    max_step,
    median_diameter,
)
from .ctc import ctc_scores, ctc_segments, write_ctc
from .interactions import contact_events, nearest_platelets, resolve_distances
from .layers import tracks_layer_data
from .linking import link_cells
from .measures import VOTE_COLUMNS, msd_table, track_summary, vote_track_classes

__all__ = [
    "MAX_TIME_OR_SPEED",
    "TRACKED_CELL_TYPES",
    "TrackingParams",
    "TrackingResult",
    "Units",
    "ctc_scores",
    "ctc_segments",
    "existing_tracking_files",
    "pixel_size_of_table",
    "track_table",
    "tracks_layer_data",
    "vote_track_classes",
    "write_ctc",
    "write_tracking",
]

LEADING_COLUMNS = [
    "track_id",
    "frame",
    "t_s",
    "centroid_y",
    "centroid_x",
    "cell_type",
    "cell_class",
]
OUTPUT_FILES = {
    "tracks": "tracks.csv",
    "summary": "track_summary.csv",
    "interactions": "interactions.csv",
    "nearest_platelet": "nearest_platelet.csv",
    "msd": "msd.csv",
    "settings": "tracking.json",
}
"""The files of :func:`write_tracking`: the result's tables and its ``settings``."""


@dataclass
class TrackingResult:
    """Tables of one tracking run (pandas DataFrames).

    * ``tracks``: one row per tracked cell per frame (``tracks.csv``): ``track_id, frame,
      t_s, centroid_y, centroid_x`` (px), ``cell_type, cell_class`` (per frame), the other
      input columns, then the vote ``track_class, track_class_confidence,
      track_class_agreement``.
    * ``summary``: one row per track (``track_summary.csv``), see
      :func:`~napari_bloodcell.tracking.measures.track_summary`.
    * ``interactions``: leukocyte–platelet contact events (``interactions.csv``).
    * ``nearest_platelet``: per leukocyte and frame, nearest platelet and aggregate.
    * ``msd``: mean-squared displacement per track and lag.
    * ``units``, ``contact_distance``, ``aggregate_distance``: what was used (length unit).
    * ``params``: the parameters it was made with.
    * ``settings`` (property): all of these settings as a JSON-ready dict
      (``tracking.json``).
    """

    tracks: pd.DataFrame
    summary: pd.DataFrame
    interactions: pd.DataFrame
    nearest_platelet: pd.DataFrame
    msd: pd.DataFrame
    units: Units
    contact_distance: float
    aggregate_distance: float
    params: TrackingParams
    reach: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per tracked cell type: ``median_diameter`` and ``max_step`` (the largest link, per
    frame) as used (length unit)."""

    @property
    def settings(self) -> dict:
        """Pixel size (µm/px), frame interval (s), units, ``params`` (None: the default),
        the contact and aggregate distances used (length unit) and the software versions."""
        return {
            "pixel_size_um": _plain(self.units.pixel_size_um),
            "frame_interval_s": _plain(self.units.frame_interval_s),
            "length_unit": self.units.length_unit,
            "speed_unit": self.units.speed_unit,
            "params": {name: _plain(value) for name, value in asdict(self.params).items()},
            "contact_distance": self.contact_distance,
            "aggregate_distance": self.aggregate_distance,
            "reach": self.reach,
            "laptrack_version": version("laptrack"),
            "napari_bloodcell_version": __version__,
        }


def _plain(value):
    """A numpy number as a Python one (JSON has no numpy types); other values as they are."""
    return value.item() if isinstance(value, np.generic) else value


def track_table(
    cells_table: pd.DataFrame,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
    params: TrackingParams | None = None,
) -> TrackingResult:
    """Link the cells of ``cells_table`` over frames and measure tracks and interactions.

    ``cells_table`` needs ``frame, centroid_y, centroid_x`` (px) and ``cell_type`` and holds
    one time-lapse (one ``source``); leukocytes (``wbc``) and platelets are linked
    separately (red cells are left out). ``cell_class`` / ``confidence`` feed the class
    vote (``cell_type`` stands in for a missing ``cell_class``). Raises
    :class:`~napari_bloodcell.errors.TrackingError` for a table it cannot use; a table
    without tracked cells gives empty tables.
    """
    params = params or TrackingParams()
    units = Units(pixel_size_um, frame_interval_s)
    cells = checked_cells(cells_table)
    if "source" in cells and cells["source"].nunique(dropna=False) > 1:
        raise TrackingError(
            f"the table holds {cells['source'].nunique(dropna=False)} sources (inputs, a "
            f"missing one counted too); track one time-lapse at a time, e.g. "
            f"cells_table[cells_table.source == name]"
        )
    reach = {
        cell_type: {
            "median_diameter": median_diameter(cells, cell_type, units),
            "max_step": max_step(cells, cell_type, units, params),
        }
        for cell_type in TRACKED_CELL_TYPES
    }
    max_steps = {cell_type: r["max_step"] for cell_type, r in reach.items()}
    tracks = link_cells(cells, units, max_steps, params.max_gap_frames)
    tracks["t_s"] = units.seconds(tracks["frame"].to_numpy(dtype=float))
    votes = vote_track_classes(tracks)
    for column in VOTE_COLUMNS:  # typed also without tracks (map gives float64 then)
        tracks[column] = tracks["track_id"].map(votes[column]).astype(votes[column].dtype)
    tracks = tracks[LEADING_COLUMNS + [c for c in tracks if c not in LEADING_COLUMNS]]
    tracks["track_id"] = tracks["track_id"].astype(np.int64)

    contact, aggregate = resolve_distances(cells, units, params)
    nearest = nearest_platelets(
        tracks,
        units,
        contact_distance=contact,
        aggregate_distance=aggregate,
        min_aggregate_size=params.min_aggregate_size,
    )
    return TrackingResult(
        tracks=tracks,
        summary=track_summary(tracks, units),
        interactions=contact_events(
            nearest, units, params.min_contact_frames, params.max_gap_frames
        ),
        nearest_platelet=nearest,
        msd=msd_table(tracks, units, params.msd_max_lag_frames),
        units=units,
        contact_distance=contact,
        aggregate_distance=aggregate,
        params=params,
        reach=reach,
    )


def existing_tracking_files(out_dir: str | Path) -> list[Path]:
    """The tracking outputs (``OUTPUT_FILES``: tables and settings) already in ``out_dir``."""
    out_dir = Path(out_dir)
    return [out_dir / name for name in OUTPUT_FILES.values() if (out_dir / name).exists()]


def write_tracking(
    result: TrackingResult, out_dir: str | Path, *, overwrite: bool = False
) -> list[Path]:
    """Write the tables of ``result`` as CSV files and its settings as ``tracking.json`` in
    ``out_dir`` (see ``OUTPUT_FILES``); existing ones are replaced only with ``overwrite``
    (:class:`~napari_bloodcell.errors.OutputExistsError` otherwise, before any is written)."""
    out_dir = Path(out_dir)
    existing = existing_tracking_files(out_dir)
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out_dir} holds {', '.join(p.name for p in existing)}; "
            "pass --overwrite (overwrite=True) to replace them"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} is a file; the tracking tables need a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []  # all files or none (a full disk stops half-way)
    replaced: list[Path] = []
    try:
        for name, file in OUTPUT_FILES.items():
            output = getattr(result, name)
            partial = out_dir / f".{file}.partial{Path(file).suffix}"
            staged.append((partial, out_dir / file))
            if isinstance(output, dict):
                partial.write_text(json.dumps(output, indent=2))
            else:
                write_table(output, partial)
        for partial, final in staged:
            os.replace(partial, final)
            replaced.append(final)
    except OSError as exc:
        for partial, _ in staged:
            partial.unlink(missing_ok=True)
        names = ", ".join(p.name for p in replaced)
        written = f"only {names} written" if replaced else "none written"
        raise BloodcellError(
            f"{out_dir}: cannot write the tracking tables ({exc.strerror or exc}); {written}"
        ) from None
    return [final for _, final in staged]


def pixel_size_of_table(cells_table: pd.DataFrame) -> float | None:
    """The µm per pixel a cells table was measured with (from its ``diameter_um`` and
    ``diameter_px`` columns), or None when it has no µm lengths."""
    if not {"diameter_um", "diameter_px"} <= set(cells_table.columns):
        return None
    px = cells_table["diameter_px"].to_numpy(dtype=float)
    um = cells_table["diameter_um"].to_numpy(dtype=float)
    measured = np.isfinite(um) & np.isfinite(px) & (px > 0)
    return float(np.median(um[measured] / px[measured])) if measured.any() else None
