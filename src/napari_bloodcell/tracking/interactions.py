"""Leukocyte–platelet interactions: nearest platelet and aggregate per frame, contact events.

Distances are centre to centre, in µm with a pixel size (else px). Platelet aggregates are
the connected components of platelets at most ``aggregate_distance`` apart in one frame
(single linkage, scipy k-d tree + connected components) with at least ``min_aggregate_size``
members; the distance to an aggregate is the distance to its nearest member.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ._common import TrackingParams, Units, empty_table, median_diameter


def resolve_distances(
    cells: pd.DataFrame, units: Units, params: TrackingParams
) -> tuple[float, float]:
    """Contact and aggregate distances (length unit), filling the None defaults from sizes."""
    wbc = median_diameter(cells, "wbc", units)
    platelet = median_diameter(cells, "platelet", units)
    contact = params.contact_distance if params.contact_distance else 0.5 * (wbc + platelet)
    aggregate = params.aggregate_distance if params.aggregate_distance else 1.5 * platelet
    return float(contact), float(aggregate)


def aggregate_sizes(points: np.ndarray, distance: float) -> np.ndarray:
    """Size of the single-linkage cluster (link ≤ ``distance``) of each of ``points`` (n, 2)."""
    n = len(points)
    pairs = cKDTree(points).query_pairs(distance, output_type="ndarray")
    graph = coo_array((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    return np.bincount(component)[component]


def nearest_platelets(
    tracks: pd.DataFrame,
    units: Units,
    *,
    contact_distance: float,
    aggregate_distance: float,
    min_aggregate_size: int,
) -> pd.DataFrame:
    """Per leukocyte track and frame: nearest platelet and platelet aggregate.

    A platelet missed in a frame that its track bridges (gap closing) counts there at the
    position interpolated between its detections on either side: a platelet out of focus
    for a frame has not left (a contact no longer ends when the platelet, rather than the
    leukocyte, blinks).

    Columns: ``track_id, frame, t_s, platelet_distance_<u>, platelet_track_id`` (-1 when
    the frame has no platelet), ``aggregate_distance_<u>, aggregate_size`` (0 when none),
    ``in_contact`` (platelet distance ≤ ``contact_distance``), ``aggregate_in_contact``
    (aggregate distance ≤ ``contact_distance``). Rows sorted by track, then frame.
    """
    length = units.length_unit
    tracked = tracks[tracks["cell_type"].isin(("wbc", "platelet"))]
    bridged = _bridged_platelets(tracked)
    if len(bridged):
        tracked = pd.concat([tracked, bridged], ignore_index=True)
    by_frame = np.argsort(tracked["frame"].to_numpy(), kind="stable")  # a frame: row order
    frames = tracked["frame"].to_numpy(dtype=np.int64)[by_frame]
    track_ids = tracked["track_id"].to_numpy(dtype=np.int64)[by_frame]
    is_wbc = (tracked["cell_type"] == "wbc").to_numpy()[by_frame]
    yx = units.lengths(tracked[["centroid_y", "centroid_x"]].to_numpy(dtype=float))[by_frame]
    # per leukocyte row (in frame order): what it is near; stays "none" without platelets
    n_wbc = int(is_wbc.sum())
    to_platelet = np.full(n_wbc, np.nan)
    platelet_ids = np.full(n_wbc, -1, dtype=np.int64)
    to_aggregate = np.full(n_wbc, np.nan)
    aggregate_size = np.zeros(n_wbc, dtype=np.int64)
    wbc_row = np.cumsum(is_wbc) - 1
    starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(frames)], strict=True):
        leukocytes, platelets = is_wbc[start:end], ~is_wbc[start:end]
        if not leukocytes.any() or not platelets.any():
            continue
        rows = wbc_row[start:end][leukocytes]
        sources, targets = yx[start:end][leukocytes], yx[start:end][platelets]
        to_platelet[rows], nearest = cKDTree(targets).query(sources)
        platelet_ids[rows] = track_ids[start:end][platelets][nearest]
        sizes = aggregate_sizes(targets, aggregate_distance)
        members = sizes >= min_aggregate_size
        if members.any():
            to_aggregate[rows], member = cKDTree(targets[members]).query(sources)
            aggregate_size[rows] = sizes[members][member]
    wbc_frames = frames[is_wbc]
    table = pd.DataFrame(
        {
            "track_id": track_ids[is_wbc],
            "frame": wbc_frames,
            "t_s": units.seconds(wbc_frames.astype(float)),
            f"platelet_distance_{length}": to_platelet,
            "platelet_track_id": platelet_ids,
            f"aggregate_distance_{length}": to_aggregate,
            "aggregate_size": aggregate_size,
            "in_contact": to_platelet <= contact_distance,
            "aggregate_in_contact": to_aggregate <= contact_distance,
        }
    )
    return table.sort_values(["track_id", "frame"]).reset_index(drop=True)


def _bridged_platelets(tracked: pd.DataFrame) -> pd.DataFrame:
    """Rows (``track_id, frame, centroid_y, centroid_x, cell_type``) of the platelets in the
    frames their tracks bridge, at positions interpolated linearly between the detections
    before and after each gap."""
    columns = ["track_id", "frame", "centroid_y", "centroid_x"]
    platelets = tracked.loc[tracked["cell_type"] == "platelet", columns]
    platelets = platelets.sort_values(["track_id", "frame"], kind="stable")
    ids, frames = platelets["track_id"].to_numpy(), platelets["frame"].to_numpy(dtype=np.int64)
    yx = platelets[["centroid_y", "centroid_x"]].to_numpy(dtype=float)
    before = np.flatnonzero((ids[1:] == ids[:-1]) & (frames[1:] - frames[:-1] > 1))
    missed = frames[before + 1] - frames[before] - 1  # frames missed in each gap
    gap = np.repeat(np.arange(len(before)), missed)
    step = np.arange(len(gap)) - np.repeat(np.cumsum(missed) - missed, missed) + 1  # 1, 2, …
    fraction = (step / (missed[gap] + 1))[:, None]
    start, end = yx[before[gap]], yx[before[gap] + 1]
    positions = start + fraction * (end - start)
    return pd.DataFrame(
        {
            "track_id": ids[before[gap]],
            "frame": frames[before[gap]] + step,
            "centroid_y": positions[:, 0],
            "centroid_x": positions[:, 1],
            "cell_type": "platelet",
        }
    )


def contact_events(
    nearest: pd.DataFrame, units: Units, min_contact_frames: int, max_gap_frames: int = 0
) -> pd.DataFrame:
    """Contact events: a leukocyte seen in contact in ≥ ``min_contact_frames`` frames in a row.

    Up to ``max_gap_frames`` frames in which the leukocyte was not detected (those its track
    bridges) do not end an event when it is in contact on both sides; a frame in which it is
    seen out of contact, or a longer gap, does. Columns: ``event_id, track_id, start_frame,
    end_frame, n_frames`` (frames seen in contact), ``start_s, end_s, duration_s`` ((end −
    start + 1) × frame interval; NaN without one), ``min_distance_<u>``,
    ``platelet_track_id`` (the most frequent nearest platelet) and ``with_aggregate`` (a
    member of a platelet aggregate was within the contact distance in one of its frames,
    not necessarily the nearest platelet).
    """
    length = units.length_unit
    distance = f"platelet_distance_{length}"
    columns = {
        "event_id": np.int64,
        "track_id": np.int64,
        "start_frame": np.int64,
        "end_frame": np.int64,
        "n_frames": np.int64,
        "start_s": float,
        "end_s": float,
        "duration_s": float,
        f"min_distance_{length}": float,
        "platelet_track_id": np.int64,
        "with_aggregate": bool,
    }
    if nearest.empty:
        return empty_table(columns)
    contact = nearest["in_contact"].to_numpy(bool)
    new_run = (
        (nearest["track_id"].diff() != 0)
        | (nearest["frame"].diff() > max_gap_frames + 1)
        | (nearest["in_contact"] != nearest["in_contact"].shift())
    )
    runs = nearest.assign(run=new_run.cumsum())[contact]
    events = runs.groupby("run").agg(
        track_id=("track_id", "first"),
        start_frame=("frame", "min"),
        end_frame=("frame", "max"),
        n_frames=("frame", "size"),
        min_distance=(distance, "min"),
        platelet_track_id=("platelet_track_id", lambda ids: ids.mode().iloc[0]),
        with_aggregate=("aggregate_in_contact", "any"),
    )
    events = events[events["n_frames"] >= min_contact_frames].reset_index(drop=True)
    events = events.rename(columns={"min_distance": f"min_distance_{length}"})
    events.insert(0, "event_id", np.arange(1, len(events) + 1))
    events["start_s"] = units.seconds(events["start_frame"].astype(float))
    events["end_s"] = units.seconds(events["end_frame"].astype(float))
    spanned = events["end_frame"] - events["start_frame"] + 1
    events["duration_s"] = units.seconds(spanned.astype(float))
    return events[list(columns)]
