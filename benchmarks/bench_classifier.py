"""Classifier benchmark: accuracy on data never trained on, and crops/s per architecture.

* PBC: the model's recorded *test* sources (split by source image, never used for
  training or early stopping), all classes and the six target classes.
* BCCD: crops cut by ``scripts/cut_bccd_training_crops.py`` from frames in the test split
  (another microscope: lower magnification, other stain).
* Zheng 2018 dataset 1 and 2 (two more microscopes, never trained on): the WBC classes.
* Novelty (when the model file has a reference): the share of crops with novelty > 1,
  the accuracy on the others, and whether ``predict`` would warn on these crops.
* Speed: crops/s of the benchmarked model itself vs the seed ``coursework`` network
  (untrained weights; speed does not depend on them) in the same run.

Usage: ``python benchmarks/bench_classifier.py [--model default] [--bccd-crops runs/bccd_crops]``
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import model_benchmark_arguments, require, write_result

from napari_bloodcell.classification.datasets import (
    find_labelled_files,
    prepare_crop_files,
    source_id,
    source_name,
)
from napari_bloodcell.classification.evaluation import score_probabilities
from napari_bloodcell.classification.inference import CellClassifier
from napari_bloodcell.classification.novelty import novelty, novelty_warning

TARGET_CLASSES = ["neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil", "platelet"]


def score(classifier: CellClassifier, files: list[Path], truth: list[str]) -> dict:
    """``evaluate``'s figures for these crop files; the per-class intervals resample whole
    source frames (crops named ``<frame>__<n>`` share a frame), as ``evaluate``'s do."""
    crops = prepare_crop_files(files, size=classifier.input_size, scale=classifier.crop_scale)
    probabilities, features = classifier.predict(crops)
    lookup = {c: i for i, c in enumerate(classifier.classes)}
    y_true = np.array([lookup[c] for c in truth])
    # as `evaluate` scores: accuracy of the most probable class, and the uncertain rate and
    # accuracy of the decided crops at the model's stored threshold
    metrics = score_probabilities(
        probabilities,
        y_true,
        classifier.classes,
        classifier.metadata.uncertain_threshold,
        groups=np.array([f"{Path(f).parent.parent}/{source_name(Path(f))}" for f in files]),
    )
    for curve in ("reliability", "coverage_curve"):  # `evaluate` plots them
        metrics.pop(curve)
    present = [c for c in classifier.classes if metrics["per_class"][c]["support"]]
    metrics["per_class"] = {c: metrics["per_class"][c] for c in present}
    if classifier.novelty_reference is not None:
        values = novelty(features, classifier.novelty_reference)
        novel = values > 1
        right = probabilities.argmax(axis=1) == y_true
        metrics["novelty"] = {
            "novel_share": float(novel.mean()),
            "accuracy_of_familiar": float(right[~novel].mean()) if (~novel).any() else None,
            "accuracy_of_novel": float(right[novel].mean()) if novel.any() else None,
            "predict_would_warn_on_these_crops": novelty_warning(values) is not None,
        }
    return metrics


def test_split_files(data_dir: Path, test_sources: set[str] | None, classes: list[str]):
    """Files (and classes) of ``data_dir`` from the given sources (None: all of them)."""
    found, _ = find_labelled_files([data_dir], classes, ignore_unknown=True)
    chosen = [
        (f, c)
        for f, c, _ in found
        if test_sources is None or source_id(f, data_dir) in test_sources
    ]
    return [f for f, _ in chosen], [c for _, c in chosen]


def zheng_files(root: Path, classes: list[str]):
    files, truth = [], []
    for dataset in ("dataset1", "dataset2"):
        labels = pd.read_csv(root / dataset / "labels.csv")
        labels = labels[labels["label"].isin(classes)]
        files.append([root / dataset / p for p in labels["image"]])
        truth.append(labels["label"].tolist())
    return files, truth


def crops_per_second(predict, size: int, n: int = 512, batch: int = 64) -> float:
    """Steady-state speed of ``predict`` (e.g. a Keras model's ``predict_on_batch``) on
    (batch, size, size, 3) crops: warmed up with two batches of the measured size (the
    first call of a new batch shape traces the network, a one-off cost)."""
    crops = np.random.default_rng(0).random((n, size, size, 3)).astype(np.float32)
    for _ in range(2):
        predict(crops[:batch])
    started = time.perf_counter()
    for i in range(0, n, batch):
        predict(crops[i : i + batch])
    return n / (time.perf_counter() - started)


def main() -> None:
    args = model_benchmark_arguments(__doc__.splitlines()[0])
    pbc = require(args.data / "pbc")
    classifier = CellClassifier(args.model)
    test_sources = set(classifier.metadata.training.get("test_sources", []))
    result: dict = {"model": str(classifier.path), "classes": classifier.classes}

    files, truth = test_split_files(pbc, test_sources, classifier.classes)
    result["pbc_test_all_classes"] = score(classifier, files, truth)
    target = [(f, c) for f, c in zip(files, truth, strict=True) if c in TARGET_CLASSES]
    result["pbc_test_six_classes"] = score(classifier, *map(list, zip(*target, strict=True)))

    if args.bccd_crops.is_dir():
        files, truth = test_split_files(args.bccd_crops, test_sources, classifier.classes)
        result["bccd_test_frames"] = score(classifier, files, truth)
    zheng = args.data / "wbc_seg_zheng2018"
    if zheng.is_dir():
        for name, files, truth in zip(
            ("zheng_dataset1", "zheng_dataset2"),
            *zheng_files(zheng, classifier.classes),
            strict=True,
        ):
            result[name] = score(classifier, files, truth)

    from napari_bloodcell.classification.architectures import build_model

    seed_network = build_model("coursework", len(classifier.classes))
    size = classifier.input_size
    result["crops_per_second"] = {
        "model": round(crops_per_second(classifier.keras_model().predict_on_batch, size), 1),
        "coursework": round(
            crops_per_second(seed_network.predict_on_batch, seed_network.input_shape[1]), 1
        ),
        f"classifier_{classifier.metadata.test_time_views}_views": round(
            crops_per_second(classifier.predict_proba, size), 1
        ),
    }
    for key, metrics in result.items():
        if isinstance(metrics, dict) and "accuracy" in metrics:
            print(
                f"{key:24s} n={metrics['n']:5d} accuracy={metrics['accuracy']:.3f} "
                f"macro_f1={metrics['macro_f1']:.3f} ece={metrics['ece']:.3f} "
                f"uncertain={metrics['uncertain_rate']:.3f} "
                f"decided_accuracy={metrics['accuracy_when_decided']:.3f} "
                f"{metrics.get('novelty', '')}"
            )
    print(f"crops/s: {result['crops_per_second']}")
    write_result("classifier", result)


if __name__ == "__main__":
    main()
