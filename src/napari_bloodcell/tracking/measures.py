"""Per-track class vote and motility: path length, displacement, speed, straightness, MSD.

Inputs are linked tracks (one row per cell per frame, ``track_id``, ``frame``, ``centroid_y``,
``centroid_x`` in px). Lengths are reported in µm with a pixel size (else px), times in
minutes with a frame interval (else frames); column names carry the unit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..classes import UNCERTAIN
from ._common import Units, empty_table

VOTE_COLUMNS = ("track_class", "track_class_confidence", "track_class_agreement")


def vote_track_classes(tracks: pd.DataFrame) -> pd.DataFrame:
    """Class of each track by a confidence-weighted vote over its frames.

    Each frame votes for its ``cell_class`` with weight ``confidence`` (1 where NaN or absent);
    ``uncertain`` frames count only when a track has nothing else (then they win with share
    1). Ties go to the class of more frames, then to the first name. Returns one row per
    ``track_id``: ``track_class``, ``track_class_confidence`` (the winner's share of the
    weight of the track's classes, 0..1) and ``track_class_agreement`` (fraction of frames
    whose class is the winner).
    """
    columns = list(VOTE_COLUMNS)
    if tracks.empty:
        votes = empty_table(dict(zip(columns, (str, float, float), strict=True)))
        return votes.set_axis(pd.Index([], name="track_id", dtype=np.int64))
    classes = tracks["cell_class"].astype(str)
    weights = (
        tracks["confidence"].astype(float).fillna(1.0).clip(lower=0.0)
        if "confidence" in tracks
        else pd.Series(1.0, index=tracks.index)
    )
    frame_votes = pd.DataFrame(
        {"track_id": tracks["track_id"], "cell_class": classes, "weight": weights}
    )
    votes = frame_votes.groupby(["track_id", "cell_class"], as_index=False).agg(
        weight=("weight", "sum"), frames=("weight", "size")
    )
    votes["decides"] = votes["cell_class"] != UNCERTAIN
    # a track with a class: the uncertain votes drop out; without one they are all it has
    votes = votes[votes["decides"] | ~votes.groupby("track_id")["decides"].transform("any")]
    ranked = votes.sort_values(
        ["track_id", "weight", "frames", "cell_class"], ascending=[True, False, False, True]
    )
    winner = ranked.groupby("track_id").first()
    total = votes.groupby("track_id")["weight"].sum()
    share = (winner["weight"] / total).where(total > 0, 0.0)
    share = share.where(winner["decides"], 1.0)
    winners = winner["cell_class"]
    agrees = classes.to_numpy() == tracks["track_id"].map(winners).to_numpy()
    agreement = pd.Series(agrees, index=tracks.index).groupby(tracks["track_id"]).mean()
    result = pd.DataFrame(
        {
            "track_class": winners,
            "track_class_confidence": share.astype(float),
            "track_class_agreement": agreement,
        }
    )
    result.index.name = "track_id"
    return result[columns]


def _steps(tracks: pd.DataFrame, units: Units) -> pd.Series:
    """Length (length unit) of each step from a track's previous detection (NaN at its start)."""
    by_track = tracks.groupby("track_id", sort=False)
    dy = by_track["centroid_y"].diff()
    dx = by_track["centroid_x"].diff()
    return units.lengths(np.hypot(dy, dx))


def track_summary(tracks: pd.DataFrame, units: Units) -> pd.DataFrame:
    """One row per track: type, voted class, frames, duration, path, displacement, speed.

    ``tracks`` must be sorted by ``track_id`` then ``frame`` and carry the vote columns.
    Duration is last minus first frame (time unit); mean speed is path length / duration
    (NaN for one-frame tracks); straightness is net displacement / path length (NaN when
    the path is 0). Gaps are crossed in a straight line.
    """
    length, speed = units.length_unit, units.speed_unit
    by_track = tracks.groupby("track_id", sort=True)
    first = by_track.first()
    last = by_track.last()
    summary = pd.DataFrame(index=first.index)
    for column in ("source", "cell_type", *VOTE_COLUMNS):
        if column in first:
            summary[column] = first[column]
    summary["first_frame"] = first["frame"]
    summary["last_frame"] = last["frame"]
    summary["n_detections"] = by_track.size()
    duration_frames = last["frame"] - first["frame"]
    summary["duration_frames"] = duration_frames
    summary["duration_s"] = units.seconds(duration_frames.astype(float))
    path = _steps(tracks, units).groupby(tracks["track_id"]).sum()
    net = units.lengths(
        np.hypot(last["centroid_y"] - first["centroid_y"], last["centroid_x"] - first["centroid_x"])
    )
    duration = units.times(duration_frames.astype(float))
    summary[f"path_length_{length}"] = path
    summary[f"net_displacement_{length}"] = net
    summary[f"mean_speed_{speed}"] = path / duration.where(duration > 0)
    summary["straightness"] = net / path.where(path > 0)
    summary[f"mean_y_{length}"] = units.lengths(by_track["centroid_y"].mean())
    summary[f"mean_x_{length}"] = units.lengths(by_track["centroid_x"].mean())
    return summary.reset_index()


def msd_table(tracks: pd.DataFrame, units: Units, max_lag_frames: int) -> pd.DataFrame:
    """Mean-squared displacement per track and lag (1..``max_lag_frames`` frames).

    Every pair of a track's detections exactly ``lag`` frames apart contributes, also one
    that spans a missed frame; consecutive detections across a missed frame are a pair of
    lag 2, not 1. Columns: ``track_id, lag_frames, lag_s`` (NaN without a frame interval),
    ``msd_<unit>2`` (length unit squared) and ``n_pairs``; lags without pairs are left out.
    """
    length = units.length_unit
    columns = {
        "track_id": np.int64,
        "lag_frames": np.int64,
        "lag_s": float,
        f"msd_{length}2": float,
        "n_pairs": np.int64,
    }
    # pairs found by a merge per lag: memory follows the detections, not frames × tracks
    points = pd.DataFrame(
        {
            "track_id": tracks["track_id"].to_numpy(),
            "frame": tracks["frame"].to_numpy(),
            "y": units.lengths(tracks["centroid_y"].to_numpy(dtype=float)),
            "x": units.lengths(tracks["centroid_x"].to_numpy(dtype=float)),
        }
    )
    parts = []
    for lag in range(1, max_lag_frames + 1):
        later = points.assign(frame=points["frame"] - lag)
        pairs = points.merge(later, on=["track_id", "frame"], suffixes=("", "_later"))
        if pairs.empty:
            continue
        squared = (pairs["y_later"] - pairs["y"]) ** 2 + (pairs["x_later"] - pairs["x"]) ** 2
        per_track = squared.groupby(pairs["track_id"]).agg(["sum", "count"])
        parts.append(
            pd.DataFrame(
                {
                    "track_id": per_track.index.to_numpy(),
                    "lag_frames": lag,
                    "lag_s": units.seconds(float(lag)),
                    f"msd_{length}2": (per_track["sum"] / per_track["count"]).to_numpy(),
                    "n_pairs": per_track["count"].to_numpy(),
                }
            )
        )
    if not parts:
        return empty_table(columns)
    return (
        pd.concat(parts, ignore_index=True)
        .sort_values(["track_id", "lag_frames"])
        .reset_index(drop=True)
    )
