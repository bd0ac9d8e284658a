"""Scoring a classifier on labelled crop folders: accuracy, per-class metrics, confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .datasets import load_crop_dataset
from .inference import CellClassifier


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    ``y_true``/``y_pred`` are class indices; a prediction of -1 means "uncertain"
    and counts as wrong (it is reported in ``uncertain_rate``).
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
    uncertain_threshold: float | None = 0.0,
) -> tuple[dict, CellClassifier]:
    """Classify every crop of labelled folders and score the result.

    By default every crop gets a class (``uncertain_threshold=0``) so accuracy is
    comparable with other work; pass the model's threshold (``None``) to score
    with "uncertain" answers.
    """
    classifier = CellClassifier(model)
    dataset = load_crop_dataset(
        data_dirs,
        size=classifier.input_size,
        scale=classifier.crop_scale,
        classes=classifier.classes,
        ignore_unknown=ignore_unknown,
    )
    table = classifier.classify(dataset.images.astype(np.float32) / 255, uncertain_threshold)
    lookup = {name: i for i, name in enumerate(classifier.classes)}
    y_pred = np.array([lookup.get(c, -1) for c in table["cell_class"]], dtype=int)
    metrics = classification_metrics(dataset.labels, y_pred, classifier.classes)
    metrics["model"] = str(classifier.path)
    metrics["data_dirs"] = [str(d) for d in data_dirs]
    return metrics, classifier


def write_evaluation(metrics: dict, out: Path) -> list[Path]:
    """Write ``metrics.json`` and ``confusion_matrix.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2))
    png = out / "confusion_matrix.png"
    plot_confusion_matrix(np.array(metrics["confusion_matrix"]), metrics["classes"], png)
    return [metrics_path, png]


def plot_confusion_matrix(confusion: np.ndarray, classes: list[str], path: Path) -> None:
    """Row-normalised confusion matrix with counts, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.6 * len(classes)))
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
    plt.close(fig)
