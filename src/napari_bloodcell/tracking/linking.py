"""Link per-frame detections into tracks with laptrack (LAP linking + gap closing).

Each cell type (leukocytes ``wbc``, ``platelet``) of each ``source`` is linked on its own, in the
length unit (µm with a pixel size, else px). Splitting and merging are off: blood cells do not
divide here, and a merge or split from a segmentation error simply ends one track and starts
another.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from laptrack import LapTrack
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from ._common import TRACKED_CELL_TYPES, TrackingParams, Units, max_step

_COORDINATES = ["_y", "_x"]


def _link_group(group: pd.DataFrame, step: float, max_gap_frames: int) -> np.ndarray:
    """Track index per row of ``group`` (one cell type, rows sorted by frame)."""
    if group["frame"].nunique() < 2:
        return np.arange(len(group))
    # A gap is bridged only within one frame's largest step: the largest step is a rare,
    # fast one, so letting the reach grow with the gap joins unrelated track ends and starts.
    cutoff = step**2
    tracker = LapTrack(
        metric="sqeuclidean",
        cutoff=cutoff,
        gap_closing_cutoff=cutoff if max_gap_frames > 0 else False,
        gap_closing_max_frame_count=max_gap_frames + 1,
        splitting_cutoff=False,
        merging_cutoff=False,
        # explicit start/end costs: laptrack's percentile default refuses valid links when
        # there are only a few candidates
        track_start_cost=cutoff,
        track_end_cost=cutoff,
        segment_start_cost=cutoff,
        segment_end_cost=cutoff,
    )
    # laptrack nodes are (frame, index within that frame); rows are sorted by frame
    frames = _without_long_gaps(group["frame"].to_numpy(), max_gap_frames)
    points = group[_COORDINATES].to_numpy(dtype=float)
    frame_start = np.searchsorted(frames, np.arange(frames[-1] + 2))
    coords = [points[a:b] for a, b in zip(frame_start[:-1], frame_start[1:], strict=True)]
    graph = tracker.predict(coords)
    edges = np.array(
        [(frame_start[f1] + i1, frame_start[f2] + i2) for (f1, i1), (f2, i2) in graph.edges()],
        dtype=np.int64,
    )
    edges = edges.reshape(-1, 2)
    adjacency = coo_array(
        (np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(group), len(group))
    )
    return connected_components(adjacency, directed=False)[1]


def _without_long_gaps(frames: np.ndarray, max_gap_frames: int) -> np.ndarray:
    """Sorted frame numbers from 0, every gap longer than gap closing can bridge shortened
    to just that long: laptrack takes one list per frame, so a lone detection at frame
    3·10⁷ took minutes and gigabytes; links are the same."""
    steps = np.minimum(np.diff(frames, prepend=frames[0]), max_gap_frames + 2)
    return np.cumsum(steps)


def link_cells(cells: pd.DataFrame, units: Units, params: TrackingParams) -> pd.DataFrame:
    """Rows of ``cells`` of tracked types with a ``track_id`` (1, 2, …), sorted by track, frame.

    ``cells`` is a checked per-cell table (see ``_common.checked_cells``). Track ids are
    numbered by source, then cell type (leukocytes first), then laptrack's order (rows in
    frame then label order, so that the ids do not depend on the table's row order).
    """
    tracked = cells[cells["cell_type"].isin(TRACKED_CELL_TYPES)].copy()
    tracked["_y"] = units.lengths(tracked["centroid_y"])
    tracked["_x"] = units.lengths(tracked["centroid_x"])
    tracked["track_id"] = np.zeros(len(tracked), dtype=np.int64)
    sources = tracked["source"] if "source" in tracked else pd.Series("", index=tracked.index)
    type_order = tracked["cell_type"].map(TRACKED_CELL_TYPES.index)
    next_id = 1
    groups = tracked.groupby([sources, type_order], sort=True, dropna=False, observed=True)
    for _, group in groups:
        cell_type = group["cell_type"].iloc[0]
        step = max_step(cells, cell_type, units, params)
        order = ["frame", "label"] if "label" in group else ["frame"]
        group = group.sort_values(order, kind="stable")
        track_index = _link_group(group, step, params.max_gap_frames)
        _, dense = np.unique(track_index, return_inverse=True)
        tracked.loc[group.index, "track_id"] = next_id + dense
        next_id += int(dense.max()) + 1
    tracked = tracked.drop(columns=_COORDINATES)
    return tracked.sort_values(["track_id", "frame"], kind="stable").reset_index(drop=True)
