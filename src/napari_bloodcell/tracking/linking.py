"""Link per-frame detections into tracks: laptrack's LAP frame-to-frame linking, then gap
closing with laptrack's costs and solver on candidates found by a k-d tree.

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
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from ._common import TRACKED_CELL_TYPES, Units


def _link_group(
    frames: np.ndarray, points: np.ndarray, step: float, max_gap_frames: int
) -> np.ndarray:
    """Track index per detection of one cell type: ``frames`` (N,) sorted, ``points``
    (N, 2) their (y, x) in the length unit of ``step``."""
    if len(np.unique(frames)) < 2:
        return np.arange(len(frames))
    # A gap is bridged only within one frame's largest step: the largest step is a rare,
    # fast one, so letting the reach grow with the gap joins unrelated track ends and starts.
    cutoff = step**2
    tracker = LapTrack(
        metric="sqeuclidean",
        cutoff=cutoff,
        gap_closing_cutoff=False,  # (closed below: laptrack's search is quadratic)
        splitting_cutoff=False,
        merging_cutoff=False,
        # explicit start/end costs: laptrack's percentile default refuses valid links when
        # there are only a few candidates
        track_start_cost=cutoff,
        track_end_cost=cutoff,
    )
    # laptrack nodes are (frame, index within that frame); rows are sorted by frame
    frames = _without_long_gaps(frames, max_gap_frames)
    frame_start = np.searchsorted(frames, np.arange(frames[-1] + 2))
    coords = [points[a:b] for a, b in zip(frame_start[:-1], frame_start[1:], strict=True)]
    graph = tracker.predict(coords)
    edges = np.array(
        [(frame_start[f1] + i1, frame_start[f2] + i2) for (f1, i1), (f2, i2) in graph.edges()],
        dtype=np.int64,
    ).reshape(-1, 2)
    segments = _components(edges, len(frames))
    if max_gap_frames > 0:
        edges = np.vstack(
            [edges, _gap_closing_links(segments, frames, points, cutoff, max_gap_frames + 1)]
        )
    return _components(edges, len(frames))


def _components(edges: np.ndarray, n_rows: int) -> np.ndarray:
    """The connected component of each of ``n_rows`` rows linked by ``edges`` (E, 2)."""
    adjacency = coo_array((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_rows, n_rows))
    return connected_components(adjacency, directed=False)[1]


def _gap_closing_links(
    segments: np.ndarray, frames: np.ndarray, points: np.ndarray, cutoff: float, max_frames: int
) -> np.ndarray:
    """Row pairs (last row of a segment, first row of another) that close gaps: laptrack's
    gap-closing assignment (Jaqaman et al. 2008; costs as laptrack builds them, the same
    sparse solver), the candidates found with a k-d tree. laptrack's own search compares
    every segment with every other in Python: 40,000 fragmented platelet detections took
    8 minutes.

    A segment's end links to another's start ``1 … max_frames`` frames later at a squared
    distance below ``cutoff``; ending or starting a track costs ``cutoff``.
    """
    order = np.lexsort((frames, segments))  # rows by segment, then frame
    boundaries = np.flatnonzero(np.diff(segments[order])) + 1
    first = order[np.r_[0, boundaries]]  # each segment's first row (segments 0 … M-1)
    last = order[np.r_[boundaries - 1, len(order) - 1]]  # … and last row
    pairs = cKDTree(points[last]).sparse_distance_matrix(
        cKDTree(points[first]), np.sqrt(cutoff), output_type="ndarray"
    )
    ends, starts, cost = pairs["i"], pairs["j"], pairs["v"] ** 2
    gap = frames[first[starts]] - frames[last[ends]]
    keep = (gap >= 1) & (gap <= max_frames) & (cost < cutoff)
    ends, starts, cost = ends[keep], starts[keep], cost[keep]
    if len(ends) == 0:
        return np.zeros((0, 2), np.int64)
    m = len(first)
    # rows: segment ends, then "no start" rows; columns: segment starts, then "no end" ones.
    # laptrack's auxiliary (lower right) cost is the least of its alternative costs, among
    # them those of splitting and merging (off): 1.05 × the 90th percentile of the costs
    auxiliary = min(cutoff, np.percentile(cost, 90, method="lower") * 1.05) or _EPSILON
    diagonal = np.arange(m)
    rows = np.concatenate([ends, diagonal, m + diagonal, m + starts])
    columns = np.concatenate([starts, m + diagonal, diagonal, m + ends])
    costs = np.concatenate([cost, np.full(2 * m, cutoff), np.full(len(ends), auxiliary)])
    costs = costs.astype(np.float32) + np.float32(_EPSILON)  # laptrack's precision
    matrix = coo_array((costs, (rows, columns)), shape=(2 * m, 2 * m))
    row, column = min_weight_full_bipartite_matching(matrix.tocsr())
    linked = (row < m) & (column < m)
    return np.column_stack([last[row[linked]], first[column[linked]]])


_EPSILON = 1e-6
"""Added to every cost, as laptrack does: a zero in a sparse matrix is no edge."""


def _without_long_gaps(frames: np.ndarray, max_gap_frames: int) -> np.ndarray:
    """Sorted frame numbers from 0, every gap longer than gap closing can bridge shortened
    to just that long: laptrack takes one list per frame, so a lone detection at frame
    3·10⁷ took minutes and gigabytes; links are the same."""
    steps = np.minimum(np.diff(frames, prepend=frames[0]), max_gap_frames + 2)
    return np.cumsum(steps)


def link_cells(
    cells: pd.DataFrame, units: Units, max_steps: dict[str, float], max_gap_frames: int
) -> pd.DataFrame:
    """Rows of ``cells`` of tracked types with a ``track_id`` (1, 2, …), sorted by track, frame.

    ``cells`` is a checked per-cell table (see ``_common.checked_cells``); ``max_steps``: the
    largest link per frame of each tracked cell type (length unit). Track ids are
    numbered by source, then cell type (leukocytes first), then laptrack's order (rows in
    frame then label order, so that the ids do not depend on the table's row order).
    """
    tracked = cells[cells["cell_type"].isin(TRACKED_CELL_TYPES)].copy()
    tracked["track_id"] = np.zeros(len(tracked), dtype=np.int64)
    sources = tracked["source"] if "source" in tracked else pd.Series("", index=tracked.index)
    type_order = tracked["cell_type"].map(TRACKED_CELL_TYPES.index)
    next_id = 1
    groups = tracked.groupby([sources, type_order], sort=True, dropna=False, observed=True)
    for _, group in groups:
        cell_type = group["cell_type"].iloc[0]
        order = ["frame", "label"] if "label" in group else ["frame"]
        group = group.sort_values(order, kind="stable")
        points = units.lengths(group[["centroid_y", "centroid_x"]].to_numpy(dtype=float))
        frames = group["frame"].to_numpy()
        track_index = _link_group(frames, points, max_steps[cell_type], max_gap_frames)
        _, dense = np.unique(track_index, return_inverse=True)
        tracked.loc[group.index, "track_id"] = next_id + dense
        next_id += int(dense.max()) + 1
    return tracked.sort_values(["track_id", "frame"], kind="stable").reset_index(drop=True)
