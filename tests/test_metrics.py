"""Tests of instance matching (metrics.match_instances, detection_by_type, match_centroids)."""

import numpy as np
import pandas as pd
import pytest

from napari_bloodcell.errors import InputImageError
from napari_bloodcell.metrics import (
    detection_by_type,
    match_centroids,
    match_instances,
    scores_from_counts,
)


def squares(shape=(40, 40), boxes=(), labels=None) -> np.ndarray:
    """Label image with axis-aligned squares: boxes are (y, x, size) in px, labels 1.. or given."""
    image = np.zeros(shape, dtype=np.uint16)
    for value, (y, x, size) in zip(labels or range(1, len(boxes) + 1), boxes, strict=True):
        image[y : y + size, x : x + size] = value
    return image


THREE = ((2, 2, 10), (2, 20, 10), (20, 5, 12))


def test_identical_labels_match_perfectly():
    gt = squares(boxes=THREE)
    result = match_instances(gt, gt)
    assert (result["tp"], result["fp"], result["fn"]) == (3, 0, 0)
    assert result["precision"] == result["recall"] == result["f1"] == 1.0
    assert result["mean_matched_iou"] == 1.0
    assert result["matches"] == [(1, 1, 1.0), (2, 2, 1.0), (3, 3, 1.0)]


def test_one_missing_object_is_a_false_negative():
    gt = squares(boxes=THREE)
    pred = squares(boxes=THREE[:2])
    result = match_instances(gt, pred)
    assert (result["tp"], result["fp"], result["fn"]) == (2, 0, 1)
    assert result["precision"] == 1.0
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(0.8)


def test_shifted_object_below_threshold_is_unmatched():
    gt = squares(boxes=[(5, 5, 10)])
    pred = squares(boxes=[(5, 11, 10)])  # overlap 10 x 4: IoU = 40 / 160 = 0.25
    result = match_instances(gt, pred)
    assert (result["tp"], result["fp"], result["fn"]) == (0, 1, 1)
    assert np.isnan(result["mean_matched_iou"])
    lenient = match_instances(gt, pred, iou_threshold=0.2)
    assert lenient["matches"] == [(1, 1, pytest.approx(0.25))]


def test_matching_is_one_to_one_and_keeps_label_values():
    gt = squares(boxes=[(0, 0, 20)], labels=[7])
    pred = squares(boxes=[(0, 0, 10), (10, 0, 10)], labels=[42, 9])  # two halves, IoU 0.25 each
    result = match_instances(gt, pred, iou_threshold=0.2)
    assert result["tp"] == 1 and result["fp"] == 1 and result["fn"] == 0
    (gt_label, pred_label, iou) = result["matches"][0]
    assert gt_label == 7 and pred_label in (9, 42) and iou == pytest.approx(0.25)


def test_empty_images():
    empty = np.zeros((8, 8), dtype=np.uint8)
    one = squares((8, 8), boxes=[(1, 1, 3)]).astype(np.uint8)
    both_empty = match_instances(empty, empty)
    assert both_empty["tp"] == both_empty["fp"] == both_empty["fn"] == 0
    assert both_empty["precision"] == both_empty["recall"] == both_empty["f1"] == 1.0
    assert both_empty["matches"] == []
    only_pred = match_instances(empty, one)
    assert (only_pred["fp"], only_pred["precision"], only_pred["recall"]) == (1, 0.0, 0.0)
    only_gt = match_instances(one, empty)
    assert (only_gt["fn"], only_gt["precision"], only_gt["recall"], only_gt["f1"]) == (
        1,
        0.0,
        0.0,
        0.0,
    )


def test_works_on_time_lapse_stacks():
    gt = np.stack([squares(boxes=THREE), squares(boxes=THREE[1:], labels=[2, 3])])
    result = match_instances(gt, gt)
    assert result["tp"] == 3 and result["f1"] == 1.0


def test_bad_inputs_raise():
    gt = squares(boxes=THREE)
    with pytest.raises(InputImageError, match="shape"):
        match_instances(gt, gt[:-1])
    with pytest.raises(InputImageError, match="integers"):
        match_instances(gt, gt.astype(float))
    with pytest.raises(InputImageError, match=">= 0"):
        match_instances(gt, -gt.astype(np.int32))
    with pytest.raises(ValueError, match="iou_threshold"):
        match_instances(gt, gt, iou_threshold=0.0)


def test_detection_by_type_counts_only_agreeing_types():
    gt = squares(boxes=THREE)
    gt_types = {1: "wbc", 2: "rbc", 3: "platelet"}
    pred_types = {1: "wbc", 2: "wbc", 3: "platelet"}  # the RBC is called a WBC
    table = detection_by_type(gt, gt_types, gt, pred_types)
    assert list(table.index) == ["wbc", "rbc", "platelet", "all"]
    assert table.loc["rbc", ["tp", "fp", "fn"]].tolist() == [0, 0, 1]
    assert table.loc["wbc", ["tp", "fp", "fn"]].tolist() == [1, 1, 0]
    assert table.loc["platelet", "f1"] == 1.0
    assert table.loc["all", ["tp", "fp", "fn"]].tolist() == [3, 0, 0]
    assert table.loc["wbc", "precision"] == 0.5


def test_detection_by_type_extra_types_and_missing_labels():
    gt = squares(boxes=THREE)
    types = {1: "wbc", 2: "rbc", 3: "debris"}
    table = detection_by_type(gt, types, gt, types)
    assert list(table.index) == ["wbc", "rbc", "platelet", "debris", "all"]
    assert table.loc["debris", "tp"] == 1
    with pytest.raises(InputImageError, match="lack labels"):
        detection_by_type(gt, {1: "wbc"}, gt, types)


def test_match_centroids_is_one_to_one_within_the_radius():
    gt = np.array([[10.0, 10.0], [10.0, 13.0], [50.0, 50.0]])
    # pred 0 lies between gt 0 and gt 1, pred 1 near gt 1 only, pred 2 far from everything
    pred = np.array([[10.0, 12.0], [10.0, 15.5], [90.0, 90.0]])
    result = match_centroids(gt, pred, 3.0)
    # greedy closest-first matching pairs (gt 1, pred 0) and loses gt 0; the optimum pairs both
    assert (result["tp"], result["fp"], result["fn"]) == (2, 1, 1)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    per_object = match_centroids(gt, pred, np.array([1.0, 1.0, 60.0]))
    assert (per_object["tp"], per_object["fn"]) == (2, 1)  # gt 1 ↔ pred 0, gt 2 ↔ pred 2


def test_match_centroids_empty_and_bad_radius():
    empty = np.zeros((0, 2))
    assert match_centroids(empty, empty, 3.0)["f1"] == 1.0
    only_gt = match_centroids(np.array([[1.0, 1.0]]), empty, 3.0)
    assert (only_gt["fn"], only_gt["recall"], only_gt["f1"]) == (1, 0.0, 0.0)
    with pytest.raises(ValueError, match="max_distance"):
        match_centroids(np.array([[1.0, 1.0]]), np.array([[1.0, 1.0]]), -1.0)


def test_labels_beyond_int64_are_refused_not_wrapped():
    labels = np.zeros((4, 4), dtype=np.uint64)
    labels[0, 0] = 2**63 + 5  # would wrap to a negative label and make background an object
    with pytest.raises(InputImageError, match="<= 9223372036854775807"):
        match_instances(labels, labels)
    labels[0, 0] = 2**63 - 1
    assert match_instances(labels, labels)["matches"] == [(2**63 - 1, 2**63 - 1, 1.0)]


def test_match_centroids_rejects_points_that_are_not_yx_pairs():
    tyx = np.array([[0.0, 5.0, 5.0], [1.0, 20.0, 20.0]])  # (t, y, x): 2 objects, not 3
    with pytest.raises(InputImageError, match=r"gt_yx must be \(n, 2\).*\(2, 3\)"):
        match_centroids(tyx, tyx, 1.0)
    with pytest.raises(InputImageError, match="pred_yx holds non-finite"):
        match_centroids(np.zeros((1, 2)), np.array([[np.nan, 1.0]]), 1.0)
    with pytest.raises(InputImageError, match=r"one per ground-truth object \(3,\)"):
        match_centroids(np.zeros((3, 2)), np.zeros((3, 2)), np.array([1.0, 2.0]))
    assert match_centroids([], np.zeros((2, 2)), 1.0)["fp"] == 2  # no points: any empty shape


def test_scores_from_counts_follow_the_matching_conventions():
    counts = pd.DataFrame(
        {"tp": [3, 0, 0, 0], "fp": [1, 0, 2, 0], "fn": [1, 4, 0, 0]},
        index=["some", "all_missed", "all_false", "none"],
    )
    table = scores_from_counts(counts)
    assert list(table.columns) == ["tp", "fp", "fn", "precision", "recall", "f1"]
    assert table.loc["some", ["precision", "recall", "f1"]].tolist() == [0.75, 0.75, 0.75]
    for name, (tp, fp, fn) in counts.iterrows():  # same numbers as one matching would give
        gt = squares(boxes=[(0, 4 * i, 3) for i in range(tp + fn)])
        pred = squares(
            boxes=[(0, 4 * i, 3) for i in range(tp)] + [(20, 4 * i, 3) for i in range(fp)]
        )
        expected = match_instances(gt, pred)
        assert table.loc[name, ["precision", "recall", "f1"]].tolist() == [
            expected[key] for key in ("precision", "recall", "f1")
        ], name
    with pytest.raises(ValueError, match="fn"):
        scores_from_counts(counts[["tp", "fp"]])


def test_low_thresholds_keep_the_most_matches():
    """Maximising the total IoU kept A-X (0.54) alone where A-Y (0.30) and B-X (0.18) are
    two matches above a threshold of 0.15."""
    gt = np.zeros((1, 30), np.int64)
    pred = np.zeros_like(gt)
    gt[0, 0:10], gt[0, 10:20] = 1, 2  # A, B
    pred[0, 3:13], pred[0, 0:3] = 1, 2  # X (IoU with A 0.54, with B 0.18), Y (with A 0.30)
    result = match_instances(gt, pred, 0.15)
    assert result["tp"] == 2 and [m[:2] for m in result["matches"]] == [(1, 2), (2, 1)]
    assert match_instances(gt, pred, 0.5)["matches"][0][:2] == (1, 1)  # the one above 0.5
