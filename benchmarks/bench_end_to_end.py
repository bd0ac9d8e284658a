"""End-to-end benchmark on real BCCD smear frames: frames/s and WBC subtype accuracy.

Every frame goes through the whole pipeline (segmentation, crops, CNN on every WBC and
platelet) as ``napari-bloodcell analyze`` runs it. WBC subtype accuracy compares the class
of the detected WBC inside each VOC WBC box with the frame's Kaggle subtype label
(boxes with an unambiguous subtype only), on frames the model neither trained nor was
selected on (its recorded test frames; see :func:`frames_never_learnt`).

Usage: ``python benchmarks/bench_end_to_end.py [--model default] [--bccd-crops runs/bccd_crops]``
(only the folder's name is used, to find its frames in the model's recorded split)
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from _common import model_benchmark_arguments, require, write_result

from napari_bloodcell.classification.datasets import split_records
from napari_bloodcell.classification.inference import CellClassifier
from napari_bloodcell.classification.novelty import novelty_warning, white_cell_novelty
from napari_bloodcell.pipeline import AnalysisSettings, analyze_frame
from napari_bloodcell.reading import read_image


def frames_never_learnt(training: dict, frames: set[str], folder: str) -> set[str]:
    """The BCCD frames (``*.jpg`` names) a model neither trained nor was selected on, from
    the recorded splits of the crops folder named ``folder`` (no file needed) — its own and
    those of the models it was fine-tuned from: in each, its test frames, and, when it
    records its training frames, the frames of no part. Validation frames drove early
    stopping and calibration, so they are not scored; a model that records no training
    frames (older files, like the default) learnt every unlisted one."""
    never_learnt = set(frames)
    for record in split_records(training):
        parts = {
            part: {
                source.split("/", 1)[1] + ".jpg"
                for source in record.get(f"{part}_sources") or []
                if source.startswith(f"{folder}/")
            }
            for part in ("train", "validation", "test")
        }
        if not any(parts.values()):  # this model never trained on the folder
            continue
        if record.get("train_sources") is None:
            never_learnt &= parts["test"]
        else:
            never_learnt -= parts["train"] | parts["validation"]
    return never_learnt


def main() -> None:
    args = model_benchmark_arguments(__doc__.splitlines()[0])
    bccd = require(args.data / "bccd")
    classifier = CellClassifier(args.model)
    objects = pd.read_csv(bccd / "bccd_objects.csv")
    all_frames = set(objects.image)
    frames = sorted(
        frames_never_learnt(classifier.metadata.training, all_frames, args.bccd_crops.name)
    )
    settings = AnalysisSettings(modality="smear")

    # warm-up: load TensorFlow and the network outside the timed loop
    analyze_frame(read_image(bccd / "JPEGImages" / frames[0]).data[0], classifier, settings)
    seconds, hits, n_cells, novelty = [], [], 0, []
    for name in frames:
        frame = read_image(bccd / "JPEGImages" / name).data[0]
        started = time.perf_counter()
        result = analyze_frame(frame, classifier, settings, source=name)
        seconds.append(time.perf_counter() - started)
        n_cells += len(result.table)
        novelty.append(result.table[["cell_type", "novelty"]].dropna())
        wbc = result.table[result.table.cell_type == "wbc"]
        boxes = objects[
            (objects.image == name) & (objects.cell_type == "WBC") & objects.wbc_subtype.notna()
        ]
        for box in boxes.itertuples():
            inside = wbc[
                wbc.centroid_x.between(box.xmin, box.xmax)
                & wbc.centroid_y.between(box.ymin, box.ymax)
            ]
            if len(inside):
                predicted = inside.sort_values("area_px").iloc[-1]["cell_class"]
                hits.append((box.wbc_subtype.lower(), predicted))
    truth, predicted = (np.array(x) for x in zip(*hits, strict=True))
    per_class = {
        c: {"n": int((truth == c).sum()), "accuracy": float((predicted[truth == c] == c).mean())}
        for c in sorted(set(truth.tolist()))
    }
    result = {
        "model": str(classifier.path),
        "n_frames": len(frames),
        "n_frames_excluded_as_trained_or_validated_on": len(all_frames) - len(frames),
        "seconds_per_frame_mean": float(np.mean(seconds)),
        "seconds_per_frame_median": float(np.median(seconds)),
        "frames_per_second": float(1 / np.mean(seconds)),
        "cells_per_frame": n_cells / len(frames),
        "wbc_boxes_scored": len(hits),
        "wbc_subtype_accuracy": float((truth == predicted).mean()),
        "wbc_subtype_per_class": per_class,
        "novelty_per_cell_type": {
            cell_type: {"classified": len(rows), "novel_share": float((rows.novelty > 1).mean())}
            for cell_type, rows in pd.concat(novelty).groupby("cell_type")
        },
        "novelty_warning": novelty_warning(white_cell_novelty(pd.concat(novelty)), "white cells"),
        "confusion": pd.crosstab(
            pd.Series(truth, name="true"), pd.Series(predicted, name="predicted")
        ).to_dict(),
    }
    print(
        f"{len(frames)} frames never learnt, {result['frames_per_second']:.1f} frames/s "
        f"({1000 * result['seconds_per_frame_mean']:.0f} ms/frame, "
        f"{result['cells_per_frame']:.1f} cells/frame)"
    )
    print(
        f"WBC subtype accuracy {result['wbc_subtype_accuracy']:.3f} on {len(hits)} boxes: "
        f"{per_class}"
    )
    print(
        f"novelty > 1 per cell type: {result['novelty_per_cell_type']} "
        f"(warning: {result['novelty_warning'] or 'none'})"
    )
    write_result("end_to_end", result)


if __name__ == "__main__":
    main()
