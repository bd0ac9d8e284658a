"""Instance-segmentation accuracy: one-to-one matching of labelled objects by IoU, and of
object centres by distance.

Label images are integer arrays of any shape (e.g. (Y, X) or (T, Y, X)); 0 is background and
every other value is one instance. Ground truth and prediction must have the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from .errors import InputImageError

CELL_TYPES = ("wbc", "rbc", "platelet")


def _check_labels(gt_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both label images as flat int64 arrays, or InputImageError."""
    gt, pred = np.asarray(gt_labels), np.asarray(pred_labels)
    if gt.shape != pred.shape:
        raise InputImageError(
            f"ground-truth and predicted labels differ in shape: {gt.shape} vs {pred.shape}"
        )
    for name, labels in (("ground-truth", gt), ("predicted", pred)):
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputImageError(f"{name} labels must be integers; got dtype {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise InputImageError(f"{name} labels must be >= 0 (0 is background)")
        if labels.size and labels.max() > np.iinfo(np.int64).max:
            raise InputImageError(
                f"{name} labels must be <= {np.iinfo(np.int64).max}; got {labels.max()}"
            )
    return gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)


def _ratio(numerator: int, denominator: int, *, both_empty: bool) -> float:
    """numerator / denominator; 1.0 for 0/0 when both images are empty, 0.0 for other 0/0."""
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator


def _scores(tp: int, n_gt: int, n_pred: int) -> dict[str, float]:
    """Precision, recall and F1 of ``tp`` matches among ``n_gt`` and ``n_pred`` objects."""
    both_empty = n_gt == 0 and n_pred == 0
    precision = _ratio(tp, n_pred, both_empty=both_empty)
    recall = _ratio(tp, n_gt, both_empty=both_empty)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def scores_from_counts(counts: pd.DataFrame) -> pd.DataFrame:
    """``counts`` (columns ``tp, fp, fn``, e.g. pooled over frames) with ``precision, recall,
    f1`` added per row, with the conventions of :func:`match_instances`."""
    missing = {"tp", "fp", "fn"} - set(counts.columns)
    if missing:
        raise ValueError(f"counts lack columns {sorted(missing)}; expected tp, fp, fn")
    counts = counts[["tp", "fp", "fn"]].astype(int)
    rates = [_scores(row.tp, row.tp + row.fn, row.tp + row.fp) for row in counts.itertuples()]
    return counts.join(
        pd.DataFrame(rates, index=counts.index, columns=["precision", "recall", "f1"])
    )


def match_instances(
    gt_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5
) -> dict:
    """Match ground-truth to predicted instances one-to-one by intersection over union.

    The IoU of every overlapping pair comes from a sparse contingency table of the two label
    images; among the pairs with IoU >= ``iou_threshold`` (in (0, 1]) the assignment
    (Hungarian algorithm) maximises the number of matches, then their total IoU (below 0.5
    an object may overlap two partners that much).

    Returns ``tp, fp, fn`` (object counts), ``precision, recall, f1`` (1.0 when both images
    are empty; 0.0 when only one is), ``mean_matched_iou`` (NaN without matches) and
    ``matches``: a list of ``(gt_label, pred_label, iou)`` sorted by ground-truth label.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1]; got {iou_threshold}")
    gt, pred = _check_labels(gt_labels, pred_labels)
    gt_ids, gt_index = np.unique(gt, return_inverse=True)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    gt_areas = np.bincount(gt_index)
    pred_areas = np.bincount(pred_index)
    # Index 0 is background when present; drop it from both axes.
    gt_offset = int(gt_ids.size > 0 and gt_ids[0] == 0)
    pred_offset = int(pred_ids.size > 0 and pred_ids[0] == 0)
    n_gt, n_pred = gt_ids.size - gt_offset, pred_ids.size - pred_offset

    both = (gt != 0) & (pred != 0)
    intersections = sparse.coo_array(
        (np.ones(int(both.sum()), dtype=np.int64), (gt_index[both], pred_index[both])),
        shape=(gt_ids.size, pred_ids.size),
    )
    intersections.sum_duplicates()
    rows, cols, overlap = intersections.row, intersections.col, intersections.data
    iou = overlap / (gt_areas[rows] + pred_areas[cols] - overlap)

    keep = iou >= iou_threshold
    rows, cols, iou = rows[keep], cols[keep], iou[keep]
    matches: list[tuple[int, int, float]] = []
    if iou.size:
        candidate_rows, row_pos = np.unique(rows, return_inverse=True)
        candidate_cols, col_pos = np.unique(cols, return_inverse=True)
        iou_matrix = np.zeros((candidate_rows.size, candidate_cols.size))
        iou_matrix[row_pos, col_pos] = iou
        # each allowed pair weighs 1 + IoU / (2 m): one match more outweighs any IoU gain
        weight = np.where(iou_matrix > 0, 1.0 + iou_matrix / (2.0 * min(iou_matrix.shape)), 0.0)
        assigned_rows, assigned_cols = linear_sum_assignment(weight, maximize=True)
        for r, c in zip(assigned_rows, assigned_cols, strict=True):
            if iou_matrix[r, c] >= iou_threshold:
                matches.append(
                    (
                        int(gt_ids[candidate_rows[r]]),
                        int(pred_ids[candidate_cols[c]]),
                        float(iou_matrix[r, c]),
                    )
                )
        matches.sort()

    tp = len(matches)
    return {
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_gt - tp,
        **_scores(tp, n_gt, n_pred),
        "mean_matched_iou": float(np.mean([m[2] for m in matches])) if matches else float("nan"),
        "matches": matches,
    }


def _types_of(labels: np.ndarray, types: Mapping[int, str], name: str) -> dict[int, str]:
    """Type of every non-zero label in ``labels``, or InputImageError naming missing ones."""
    present = np.unique(labels)
    present = present[present != 0]
    types = {int(k): str(v) for k, v in dict(types).items()}
    missing = [int(label) for label in present if int(label) not in types]
    if missing:
        raise InputImageError(f"{name} types lack labels {missing[:10]}")
    return {int(label): types[int(label)] for label in present}


def detection_by_type(
    gt_labels: np.ndarray,
    gt_types: Mapping[int, str],
    pred_labels: np.ndarray,
    pred_types: Mapping[int, str],
    iou_threshold: float = 0.5,
) -> pd.DataFrame:
    """Detection scores per cell type from one IoU matching of all instances.

    A matched pair counts as a true positive of its type only when the ground-truth and
    predicted types agree; otherwise the objects count as a false negative of the true type
    and a false positive of the predicted type. Rows: "wbc", "rbc", "platelet", any other
    type present, then "all" (types ignored); columns ``tp, fp, fn, precision, recall, f1``.
    """
    gt_type = _types_of(np.asarray(gt_labels), gt_types, "ground-truth")
    pred_type = _types_of(np.asarray(pred_labels), pred_types, "predicted")
    result = match_instances(gt_labels, pred_labels, iou_threshold)
    agreeing = [(g, p) for g, p, _ in result["matches"] if gt_type[g] == pred_type[p]]
    extra_types = sorted((set(gt_type.values()) | set(pred_type.values())) - set(CELL_TYPES))

    rows = {}
    for cell_type in (*CELL_TYPES, *extra_types):
        n_gt = sum(t == cell_type for t in gt_type.values())
        n_pred = sum(t == cell_type for t in pred_type.values())
        tp = sum(gt_type[g] == cell_type for g, _ in agreeing)
        rows[cell_type] = {
            "tp": tp,
            "fp": n_pred - tp,
            "fn": n_gt - tp,
            **_scores(tp, n_gt, n_pred),
        }
    rows["all"] = {key: result[key] for key in ("tp", "fp", "fn", "precision", "recall", "f1")}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "cell_type"
    return table


def _check_points(points: np.ndarray, name: str) -> np.ndarray:
    """``points`` as a float (n, 2) array of finite (y, x), or InputImageError."""
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise InputImageError(f"{name} must be (n, 2) centres (y, x); got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputImageError(f"{name} holds non-finite coordinates")
    return array


def match_centroids(
    gt_yx: np.ndarray, pred_yx: np.ndarray, max_distance: float | np.ndarray
) -> dict:
    """Match ground-truth to predicted object centres one-to-one by distance.

    ``gt_yx`` (n_gt, 2) and ``pred_yx`` (n_pred, 2) are (y, x) centres in px; ``max_distance``
    (px) is one radius or one per ground-truth object (n_gt,). A pair may match when its
    distance is at most the ground-truth object's radius; the assignment (Hungarian algorithm)
    maximises the number of matches, then minimises their total distance.

    Returns ``tp, fp, fn`` and ``precision, recall, f1`` (1.0 when both sets are empty).
    """
    gt, pred = _check_points(gt_yx, "gt_yx"), _check_points(pred_yx, "pred_yx")
    radius = np.asarray(max_distance, dtype=np.float64)
    if radius.ndim > 1 or (radius.ndim == 1 and radius.shape != (len(gt),)):
        raise InputImageError(
            f"max_distance must be one radius or one per ground-truth object ({len(gt)},); "
            f"got shape {radius.shape}"
        )
    radius = np.broadcast_to(radius, (len(gt),))
    if np.any(~np.isfinite(radius) | (radius < 0)):
        raise InputImageError("max_distance must be finite and >= 0")
    tp = 0
    if len(gt) and len(pred):
        distance = np.linalg.norm(gt[:, None, :] - pred[None, :, :], axis=2)
        allowed = distance <= radius[:, None]
        if allowed.any():
            # a forbidden pair costs more than all allowed pairs together, so the
            # assignment first maximises the number of allowed pairs
            forbidden_cost = distance[allowed].sum() + 1.0
            cost = np.where(allowed, distance, forbidden_cost)
            rows, cols = linear_sum_assignment(cost)
            tp = int(allowed[rows, cols].sum())
    return {"tp": tp, "fp": len(pred) - tp, "fn": len(gt) - tp, **_scores(tp, len(gt), len(pred))}
