"""Scoring a classifier on labelled crop folders: accuracy, per-class metrics, confusion matrix."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import DatasetError, OutputExistsError
from .calibration import confidence_bins, expected_calibration_error
from .datasets import (
    find_labelled_files,
    learnt_source_names,
    other_class_folders,
    parts_in_model_split,
    prepare_crop_files,
    source_id,
    source_name,
)
from .inference import CellClassifier, check_uncertain_threshold


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    ``y_true``/``y_pred`` are class indices; a prediction of -1 means "uncertain"
    and counts as wrong (it is reported in ``uncertain_rate``). ``macro_f1`` is the mean
    F1 of the classes present in ``y_true`` (scikit-learn's macro average with those
    labels): a class that is only predicted, never true, is left out of the mean (a test
    set without some of the model's classes is not scored 0 for them); its wrong answers
    lower the recall of the true classes.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    k = len(classes)
    decided = y_pred >= 0
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y_true[decided], y_pred[decided]), 1)
    support = np.bincount(y_true, minlength=k)
    true_positive = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    precision = np.divide(true_positive, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0
    )
    present = support > 0
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "uncertain_rate": float(np.mean(~decided)) if len(y_true) else 0.0,
        "classes": list(classes),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion.tolist(),
    }


def evaluate_classifier(
    data_dirs: list[Path],
    model: str | Path = "default",
    *,
    ignore_unknown: bool = False,
    uncertain_threshold: float | None = None,
    all_images: bool = False,
) -> tuple[dict, CellClassifier]:
    """Classify the crops of labelled folders and score the result.

    Only images the model never learnt from are scored: of a folder the model was trained
    on (see :func:`.datasets.parts_in_model_split`) its test split and images added since,
    of any other folder every image. ``all_images`` scores every image, training ones included.
    ``metrics["split_parts"]`` counts the scored images by part, ``metrics["left_out"]``
    the others per folder; ``metrics["other_named_as_learnt"]`` the scored "other" images
    whose source name is that of a training or validation image (crops of those frames
    filed elsewhere, or a name shared by chance: see :func:`.datasets.learnt_source_names`).

    ``accuracy``, ``macro_f1``, ``per_class`` and the confusion matrix count every crop
    with its most probable class (comparable with other work); ``uncertain_rate`` and
    ``accuracy_when_decided`` use the uncertain threshold (default: the model's);
    ``ece`` and ``coverage_curve`` describe calibration and the coverage/accuracy trade-off.
    """
    if uncertain_threshold is not None:  # before any crop is read
        check_uncertain_threshold(uncertain_threshold)
    classifier = CellClassifier(model)
    data_dirs = [Path(d) for d in data_dirs]
    found, _ = find_labelled_files(data_dirs, classifier.classes, ignore_unknown=ignore_unknown)
    parts = parts_in_model_split(found, data_dirs, classifier.metadata.training)
    scored = np.ones(len(found), bool) if all_images else np.isin(parts, ["test", "other"])
    if not scored.any():
        raise DatasetError(
            f"{classifier.name} learnt from every image in {', '.join(map(str, data_dirs))} "
            f"(training or validation images; none is in its test split); evaluate it on "
            f"other images, or pass --all-images (all_images=True) to score these anyway"
        )
    items = [item for item, keep in zip(found, scored, strict=True) if keep]
    crops = prepare_crop_files(
        [f for f, _, _ in items], size=classifier.input_size, scale=classifier.crop_scale
    )
    labels = np.array([classifier.classes.index(c) for _, c, _ in items])
    probabilities = classifier.predict_proba(crops)
    threshold = (
        classifier.metadata.uncertain_threshold
        if uncertain_threshold is None
        else uncertain_threshold
    )
    sources = np.array([source_id(file, data_dirs[domain]) for file, _, domain in items])
    metrics = score_probabilities(probabilities, labels, classifier.classes, threshold, sources)
    metrics["model"] = str(classifier.path)
    metrics["test_time_views"] = classifier.metadata.test_time_views
    metrics["data_dirs"] = [str(d) for d in data_dirs]
    metrics["split_parts"] = _counts(parts[scored])
    metrics["other_class_folders"] = (  # left out by ignore_unknown: not in the figures
        other_class_folders(data_dirs, classifier.classes) if ignore_unknown else {}
    )
    learnt_names = learnt_source_names(classifier.metadata.training)
    metrics["other_named_as_learnt"] = sum(
        part == "other" and source_name(file) in learnt_names
        for (file, _, _), part in zip(items, parts[scored], strict=True)
    )
    domains = np.array([d for _, _, d in found])
    metrics["left_out"] = {
        str(data_dir): _counts(parts[~scored & (domains == d)])
        for d, data_dir in enumerate(data_dirs)
        if (~scored & (domains == d)).any()
    }
    return metrics, classifier


def _counts(parts: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(parts, return_counts=True)
    return {str(k): int(n) for k, n in zip(names, counts, strict=True)}


def score_probabilities(
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    uncertain_threshold: float,
    groups: np.ndarray | None = None,
) -> dict:
    """All evaluation figures from probabilities (N, K) and true class indices (N,);
    ``groups``: each crop's source frame, for the intervals (see
    :func:`add_confidence_intervals`)."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    metrics = classification_metrics(labels, predicted, classes)
    add_confidence_intervals(metrics, labels, predicted, groups=groups)
    decided = confidence >= uncertain_threshold
    metrics["uncertain_threshold"] = float(uncertain_threshold)
    metrics["uncertain_rate"] = float(np.mean(~decided)) if len(labels) else 0.0
    metrics["accuracy_when_decided"] = (
        float(np.mean(predicted[decided] == labels[decided])) if decided.any() else float("nan")
    )
    metrics["ece"] = expected_calibration_error(probabilities, labels)
    metrics["reliability"] = confidence_bins(probabilities, labels)  # the ECE's bins
    metrics["coverage_curve"] = coverage_curve(confidence, predicted == labels)
    return metrics


BOOTSTRAP_CHUNK = 100
"""Bootstrap resamples drawn at a time (memory: chunk × items indices)."""


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (nan, nan when there are no trials)."""
    if trials == 0:
        return (float("nan"), float("nan"))
    p = successes / trials
    centre = (p + z**2 / (2 * trials)) / (1 + z**2 / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / (1 + z**2 / trials)
    low = 0.0 if successes == 0 else max(0.0, float(centre - half))  # exact, not 1e-17 off
    high = 1.0 if successes == trials else min(1.0, float(centre + half))
    return (low, high)


def add_confidence_intervals(
    metrics: dict,
    labels: np.ndarray,
    predicted: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> None:
    """Add 95 % intervals per class: Wilson for precision and recall, bootstrap for F1,
    crops counting as independent. With ``groups`` (N,), e.g. the source frame of each
    crop, a bootstrap of whole groups (crops of one frame share its stain and focus) widens
    them: each interval is then the span of both (resampling a class's few frames alone
    gives intervals too narrow, down to none at all for a class from one frame)."""
    rng = np.random.default_rng(seed)
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    classes = metrics["classes"]
    true = labels[:, None] == np.arange(len(classes))  # (N, K)
    pred = predicted[:, None] == np.arange(len(classes))
    by_crop = _bootstrap(true, pred, np.arange(len(labels)), n_boot, rng)
    by_group = None
    if groups is not None:
        by_group = _bootstrap(true, pred, np.unique(groups, return_inverse=True)[1], n_boot, rng)
    for k, name in enumerate(classes):
        entry = metrics["per_class"][name]
        hits = int(np.sum(true[:, k] & pred[:, k]))
        entry["precision_ci95"] = wilson_interval(hits, int(pred[:, k].sum()))
        entry["recall_ci95"] = wilson_interval(hits, int(true[:, k].sum()))
        entry["f1_ci95"] = _percentile_interval(by_crop[2, :, k])
        if by_group is not None:
            for i, key in enumerate(("precision_ci95", "recall_ci95", "f1_ci95")):
                entry[key] = _span(entry[key], _percentile_interval(by_group[i, :, k]))


def _bootstrap(
    true: np.ndarray, pred: np.ndarray, group: np.ndarray, n_boot: int, rng
) -> np.ndarray:
    """(3, n_boot, K) precision, recall and F1 per class over ``n_boot`` resamples of whole
    groups (``group``: (N,) indices 0 … G − 1; one group per crop: a crop bootstrap)."""
    n_groups, n_classes = int(group.max(initial=-1)) + 1, true.shape[1]
    per_group = [  # (G, K) counts: true positives, true, predicted
        np.stack(
            [np.bincount(group, weights=w[:, k], minlength=n_groups) for k in range(n_classes)],
            axis=1,
        )
        for w in (true & pred, true, pred)
    ]
    resampled = np.full((3, n_boot, n_classes), np.nan)
    for start in range(0, n_boot if n_groups else 0, BOOTSTRAP_CHUNK):
        draws = rng.integers(0, n_groups, (min(BOOTSTRAP_CHUNK, n_boot - start), n_groups))
        times = np.stack([np.bincount(row, minlength=n_groups) for row in draws])  # (chunk, G)
        tp, n_true, n_pred = (times @ counts for counts in per_group)  # (chunk, K)
        chunk = slice(start, start + len(draws))
        resampled[0, chunk] = _ratio(tp, n_pred)
        resampled[1, chunk] = _ratio(tp, n_true)
        resampled[2, chunk] = _ratio(2 * tp, n_true + n_pred)
    return resampled


def _span(first: tuple[float, float], second: tuple[float, float]) -> tuple[float, float]:
    """The smallest interval holding both (NaN ends ignored; NaN when both are)."""
    lows, highs = (
        [v for v in (first[0], second[0]) if np.isfinite(v)],
        [v for v in (first[1], second[1]) if np.isfinite(v)],
    )
    return (min(lows, default=float("nan")), max(highs, default=float("nan")))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(
        numerator, denominator, out=np.full(numerator.shape, np.nan), where=denominator > 0
    )


def _percentile_interval(values: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the finite resampled values (NaN without)."""
    if not np.isfinite(values).any():
        return (float("nan"), float("nan"))
    return tuple(float(v) for v in np.nanpercentile(values, [2.5, 97.5]))


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> list:
    """Accuracy of the decided cells and the share decided, as the threshold rises."""
    curve = []
    for threshold in np.round(np.arange(0.0, 1.0, 0.05), 2):
        decided = confidence >= threshold
        curve.append(
            {
                "threshold": float(threshold),
                "coverage": float(decided.mean()) if len(confidence) else 0.0,
                "accuracy": float(correct[decided].mean()) if decided.any() else float("nan"),
            }
        )
    return curve


EVALUATION_FILES = ("metrics.json", "confusion_matrix.png", "reliability.png")


def check_evaluation_folder(out: Path, *, overwrite: bool = False) -> None:
    """Refuse (:class:`OutputExistsError`) a folder holding an evaluation, unless ``overwrite``,
    and a path that is not a folder."""
    if Path(out).exists() and not Path(out).is_dir():
        raise OutputExistsError(f"{out} is a file; evaluation results need a folder (--out)")
    existing = [name for name in EVALUATION_FILES if (Path(out) / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out} holds {', '.join(existing)}; pass --overwrite (overwrite=True) to replace them"
        )


def write_evaluation(metrics: dict, out: Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``metrics.json``, ``confusion_matrix.png``, ``reliability.png`` into ``out``
    (existing ones only with ``overwrite``).

    The three are written into a hidden folder in ``out`` first and moved in together at
    the end: a failed write leaves the earlier results as they were. Figures that have no
    value (a class never predicted has no precision interval) are ``null`` in the JSON.
    """
    check_evaluation_folder(out, overwrite=overwrite)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".evaluation-", dir=out))
    try:
        (staging / "metrics.json").write_text(
            json.dumps(finite_or_null(metrics), indent=2, allow_nan=False)
        )
        plot_confusion_matrix(
            np.array(metrics["confusion_matrix"]),
            metrics["classes"],
            staging / "confusion_matrix.png",
        )
        plot_reliability(metrics, staging / "reliability.png")
        for name in EVALUATION_FILES:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in EVALUATION_FILES]


def finite_or_null(value):
    """``value`` (nested dicts, lists, tuples of numbers) with NaN and ±inf as None: strict
    JSON, which has no NaN."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def plot_reliability(metrics: dict, path: Path) -> None:
    """Reliability diagram (accuracy vs confidence, with ECE) and the coverage/accuracy curve."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    left, right = fig.subplots(1, 2)
    bins = metrics["reliability"]
    left.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    left.bar(
        [(b["bin_low"] + b["bin_high"]) / 2 for b in bins],
        [b["accuracy"] for b in bins],
        width=[0.9 * (b["bin_high"] - b["bin_low"]) for b in bins],
        alpha=0.7,
        label="accuracy per confidence bin",
    )
    left.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="C1")
    left.set(
        xlabel="confidence",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"reliability (ECE {metrics['ece']:.3f})",
    )
    left.legend(loc="upper left", fontsize=8)
    curve = metrics["coverage_curve"]
    right.plot([c["coverage"] for c in curve], [c["accuracy"] for c in curve], "o-")
    right.set(
        xlabel="share of cells decided (coverage)",
        ylabel="accuracy of decided cells",
        xlim=(0, 1.02),
        title="coverage vs accuracy (threshold 0 → 0.95)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_confusion_matrix(confusion: np.ndarray, classes: list[str], path: Path) -> None:
    """Row-normalised confusion matrix with counts, saved as PNG."""
    from matplotlib.figure import Figure

    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    fig = Figure(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.6 * len(classes)))
    ax = fig.subplots()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(confusion):
        colour = "white" if share[i, j] > 0.5 else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
