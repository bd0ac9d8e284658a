"""Fine-tuning to a new microscope: Zheng 2018 dataset 1 before and after (issue 3).

The shared part of Zheng 2018 dataset 1 (Motic camera, rapid stain; one WBC per 120 px
image, each image its own source) is split by image, per class, with a fixed seed: up
to ``--per-class`` images of each class for fine-tuning (``train --init default``, i.e.
``fine_tuning_config``: the default model's body, a rebuilt head starting from the default
model's weights for the classes it knows, learning rate 1e-3, batch 16, patience 10, stain
jitter 0.15; the trainer holds out 20 % of these for early stopping), the rest for the test.
The starting model is scored on the test images before, the fine-tuned one after. The
fine-tuning folder is made of symbolic links in a temporary folder (nothing is copied into
the project).

    python benchmarks/bench_finetune.py [--per-class 50] [--seeds 0 1 2 3 4]

Each seed draws another split (and seeds the training); the mean over seeds is the
figure to read, the test sets being small (109 images).

Writes ``benchmarks/results/finetune.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import DEFAULT_DATA, require, write_result
from bench_classifier import score

from napari_bloodcell.classification.inference import CellClassifier
from napari_bloodcell.classification.training import (
    FINE_TUNING_RECIPE,
    fine_tuning_config,
    train_classifier,
)

DATASET = "wbc_seg_zheng2018/dataset1"


def split_by_image(labels: pd.DataFrame, per_class: int, seed: int):
    """(fine-tuning rows, test rows): per class up to ``per_class`` images, at most half
    of the class, drawn at random; every other image is a test image — but for those
    identical to a fine-tuning image (``labels["pixels"]``, a hash of the decoded image:
    dataset 1 holds one image twice), left out."""
    rng = np.random.default_rng(seed)
    chosen = []
    for _, rows in labels.groupby("label"):
        n = min(per_class, len(rows) // 2)
        chosen += list(rng.choice(rows.index.to_numpy(), size=n, replace=False))
    tune, test = labels.loc[sorted(chosen)], labels.drop(index=chosen)
    return tune, test[~test["pixels"].isin(tune["pixels"])]


def pixel_hashes(root: Path, images: pd.Series) -> list[str]:
    """A hash of each image's decoded pixels (the same picture saved twice hashes alike)."""
    import hashlib

    import imageio.v3 as iio

    return [hashlib.sha1(iio.imread(root / image).tobytes()).hexdigest() for image in images]


def link_class_folders(rows: pd.DataFrame, root: Path, folder: Path) -> Path:
    """``folder/<class>/<image>`` links to the images of ``rows``."""
    for image, label in zip(rows["image"], rows["label"], strict=True):
        target = folder / label / Path(image).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((root / image).resolve())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--init", default="default", help="model to start from")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=FINE_TUNING_RECIPE["epochs"])
    parser.add_argument("--learning-rate", type=float, default=FINE_TUNING_RECIPE["learning_rate"])
    parser.add_argument("--patience", type=int, default=FINE_TUNING_RECIPE["patience"])
    parser.add_argument(
        "--lr-patience", type=int, default=0, help="learning-rate cut patience (0: none)"
    )
    parser.add_argument("--head-only", action="store_true", help="train the head only")
    parser.add_argument(
        "--views", type=int, help="test-time views of the fine-tuned model (default: the initial's)"
    )
    parser.add_argument("--result", default="finetune", help="name of the JSON result")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workdir", type=Path, default=Path("runs"))
    args = parser.parse_args()
    root = require(args.data / DATASET)
    labels = pd.read_csv(root / "labels.csv")
    labels["pixels"] = pixel_hashes(root, labels["image"])
    runs = [fine_tune_run(args, root, labels, seed) for seed in args.seeds]
    result = {
        "dataset": DATASET,
        "init_model": args.init,
        "learning_rate": args.learning_rate,
        "patience": args.patience,
        "lr_patience": args.lr_patience,
        "head_only": args.head_only,
        "test_time_views": args.views or "initial model's",
        "mean_validation_accuracy": float(np.mean([r["validation_accuracy"] for r in runs])),
        "mean_validation_loss": float(np.mean([r["validation_loss"] for r in runs])),
        "mean_accuracy_before": mean_accuracy(runs, "before_fine_tuning"),
        "mean_accuracy_after": mean_accuracy(runs, "after_fine_tuning"),
        "target_accuracy": 0.85,
        "runs": runs,
    }
    write_result(args.result, result)
    print(
        f"mean accuracy over seeds {args.seeds}: {result['mean_accuracy_before']:.3f} before, "
        f"{result['mean_accuracy_after']:.3f} after fine-tuning (mean validation loss "
        f"{result['mean_validation_loss']:.3f})"
    )


def validation_accuracy(history: dict) -> float:
    """Validation accuracy at the epoch of lowest validation loss (the weights kept)."""
    best = int(np.argmin(history["val_loss"]))
    return float(history["val_accuracy"][best])


def validation_loss(history: dict) -> float:
    """Lowest validation loss (that of the weights kept): what a lab can compare recipes by,
    the test images unseen."""
    return float(np.min(history["val_loss"]))


def mean_accuracy(runs: list[dict], key: str) -> float:
    return float(np.mean([run[key]["accuracy"] for run in runs]))


def fine_tune_run(args, root: Path, labels: pd.DataFrame, seed: int) -> dict:
    """Split with ``seed``, fine-tune the default model, score before and after."""
    tune, test = split_by_image(labels, args.per_class, seed)
    test_files = [root / image for image in test["image"]]

    before = CellClassifier(args.init)
    with tempfile.TemporaryDirectory() as tmp:
        folder = link_class_folders(tune, root, Path(tmp) / "crops")
        config = fine_tuning_config(
            args.init,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            patience=args.patience,
            lr_patience=args.lr_patience,
            seed=seed,
            train_body=not args.head_only,
            test_time_views=args.views,
        )
        out = args.workdir / f"finetune_zheng1_seed{seed}.keras"
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        trained = train_classifier([folder], out, config)
        minutes = (time.perf_counter() - started) / 60
    after = CellClassifier(out)

    def scored(classifier: CellClassifier) -> dict:
        keep = test["label"].isin(classifier.classes).to_numpy()
        files = [f for f, k in zip(test_files, keep, strict=True) if k]
        metrics = score(classifier, files, test["label"][keep].tolist())
        return {
            "n": metrics["n"],
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "per_class_recall": {c: m["recall"] for c, m in metrics["per_class"].items()},
        }

    run = {
        "seed": seed,
        "fine_tuning_images_per_class": tune["label"].value_counts().to_dict(),
        "test_images_per_class": test["label"].value_counts().to_dict(),
        "epochs_run": len(trained.history["loss"]),
        "validation_accuracy": validation_accuracy(trained.history),
        "validation_loss": validation_loss(trained.history),
        "minutes_2_cores": round(minutes, 1),
        "before_fine_tuning": scored(before),
        "after_fine_tuning": scored(after),
    }
    for key in ("before_fine_tuning", "after_fine_tuning"):
        print(seed, key, {k: run[key][k] for k in ("n", "accuracy", "macro_f1")})
    return run


if __name__ == "__main__":
    main()
