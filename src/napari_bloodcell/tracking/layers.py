"""Tracks as napari ``Tracks`` layer data, without importing napari."""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURE_COLUMNS = (
    "track_id",
    "frame",
    "t_s",
    "cell_type",
    "cell_class",
    "confidence",
    "track_class",
    "track_class_confidence",
    "track_class_agreement",
)
CATEGORY_FEATURES = ("cell_type", "cell_class", "track_class")


def tracks_layer_data(
    tracks: pd.DataFrame,
) -> tuple[np.ndarray, pd.DataFrame, dict[str, np.ndarray]]:
    """``(data, features, properties)`` for ``napari.layers.Tracks``.

    ``data`` is (N, 4) float ``[track_id, t, y, x]`` (t = frame, y/x in px) sorted by track
    then frame; ``features`` holds the per-point columns (classes as categories); for
    ``color_by``, ``properties`` maps ``track_id``, ``track_class``, ``cell_type`` and
    ``confidence`` to numeric (N,) arrays (class names → category codes, in the order of
    ``features[name].cat.categories``).
    """
    ordered = tracks.sort_values(["track_id", "frame"], kind="stable").reset_index(drop=True)
    data = ordered[["track_id", "frame", "centroid_y", "centroid_x"]].to_numpy(dtype=float)
    features = ordered[[c for c in FEATURE_COLUMNS if c in ordered]].copy()
    for column in CATEGORY_FEATURES:
        if column in features:
            features[column] = features[column].astype(str).astype("category")
    properties = {"track_id": data[:, 0].copy()}
    for column in ("track_class", "cell_type"):
        if column in features:
            properties[column] = features[column].cat.codes.to_numpy(dtype=float)
    if "confidence" in features:
        properties["confidence"] = features["confidence"].to_numpy(dtype=float)
    return data.reshape(-1, 4), features, properties
