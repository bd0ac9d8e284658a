"""Leukocyte–platelet interactions: nearest platelet and aggregate per frame, contact events.

Distances are centre to centre, in µm with a pixel size (else px). Platelet aggregates are
the connected components of platelets closer than ``aggregate_distance`` in one frame
(single linkage, scipy k-d tree + connected components) with at least ``min_aggregate_size``
members; the distance to an aggregate is the distance to its nearest member.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ._common import TrackingParams, Units, median_diameter


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


def _nearest(sources: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance and index of the nearest of ``targets`` for each source (NaN, -1 if none)."""
    if len(targets) == 0:
        return np.full(len(sources), np.nan), np.full(len(sources), -1)
    distance, index = cKDTree(targets).query(sources)
    return distance, index


def nearest_platelets(
    tracks: pd.DataFrame,
    units: Units,
    *,
    contact_distance: float,
    aggregate_distance: float,
    min_aggregate_size: int,
) -> pd.DataFrame:
    """Per leukocyte track and frame: nearest platelet and platelet aggregate.

    Columns: ``track_id, frame, t_s, platelet_distance_<u>, platelet_track_id`` (-1 when the
    frame has no platelet), ``aggregate_distance_<u>, aggregate_size`` (0 when none),
    ``in_contact`` (platelet distance ≤ ``contact_distance``), ``aggregate_in_contact``
    (aggregate distance ≤ ``contact_distance``).
    """
    length = units.length_unit
    wbc = tracks[tracks["cell_type"] == "wbc"]
    platelets = tracks[tracks["cell_type"] == "platelet"]
    platelets_by_frame = {frame: group for frame, group in platelets.groupby("frame")}
    parts = []
    for frame, leukocytes in wbc.groupby("frame", sort=True):
        here = platelets_by_frame.get(frame, platelets.iloc[0:0])
        sources = units.lengths(leukocytes[["centroid_y", "centroid_x"]].to_numpy(float))
        targets = units.lengths(here[["centroid_y", "centroid_x"]].to_numpy(float))
        distance, index = _nearest(sources, targets)
        sizes = (
            aggregate_sizes(targets, aggregate_distance)
            if len(targets)
            else np.zeros(0, dtype=np.int64)
        )
        in_aggregate = sizes >= min_aggregate_size
        to_aggregate, aggregate_index = _nearest(sources, targets[in_aggregate])
        # index -1 (nothing to be near) picks the trailing "none" value
        platelet_ids = np.r_[here["track_id"].to_numpy(), -1]
        member_sizes = np.r_[sizes[in_aggregate], 0]
        parts.append(
            pd.DataFrame(
                {
                    "track_id": leukocytes["track_id"].to_numpy(),
                    "frame": frame,
                    f"platelet_distance_{length}": distance,
                    "platelet_track_id": platelet_ids[index],
                    f"aggregate_distance_{length}": to_aggregate,
                    "aggregate_size": member_sizes[aggregate_index],
                }
            )
        )
    columns = [
        "track_id",
        "frame",
        f"platelet_distance_{length}",
        "platelet_track_id",
        f"aggregate_distance_{length}",
        "aggregate_size",
    ]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    table = table.astype(
        {
            "track_id": np.int64,
            "frame": np.int64,
            "platelet_track_id": np.int64,
            "aggregate_size": np.int64,
        }
    )
    table.insert(2, "t_s", units.seconds(table["frame"].to_numpy(dtype=float)))
    table["in_contact"] = (table[f"platelet_distance_{length}"] <= contact_distance).astype(bool)
    touching = table[f"aggregate_distance_{length}"] <= contact_distance
    table["aggregate_in_contact"] = touching.astype(bool)
    return table.sort_values(["track_id", "frame"]).reset_index(drop=True)


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
    columns = [
        "event_id",
        "track_id",
        "start_frame",
        "end_frame",
        "n_frames",
        "start_s",
        "end_s",
        "duration_s",
        f"min_distance_{length}",
        "platelet_track_id",
        "with_aggregate",
    ]
    if nearest.empty:
        return pd.DataFrame(columns=columns)
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
    return events[columns]
