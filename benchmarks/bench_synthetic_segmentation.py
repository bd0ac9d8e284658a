"""Segmentation accuracy on synthetic data with exact ground truth.

Segments ``make_smear`` frames and every frame of ``make_timelapse`` movies over several seeds
and scores each cell type two ways:

* ``iou``: instance F1 at IoU ≥ 0.5 (:func:`napari_bloodcell.metrics.detection_by_type`);
* ``centroid``: detection F1 by centre distance (:func:`napari_bloodcell.metrics.
  match_centroids`): a ground-truth object is found by one predicted object of the same type
  whose centroid lies within max(3 px, 0.5 × the object's equivalent diameter) of the
  ground-truth centroid (both from the visible pixels).

Usage: ``python benchmarks/bench_synthetic_segmentation.py [--smear-seeds N] [--movie-seeds N]
[--frames T] [--out JSON]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import skimage
from scipy import ndimage as ndi

from napari_bloodcell.metrics import detection_by_type, match_centroids, scores_from_counts
from napari_bloodcell.segmentation import Segmentation, segment_frame
from napari_bloodcell.synthetic import make_smear, make_timelapse

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "synthetic_segmentation.json"
MIN_MATCH_DISTANCE_PX = 3.0
MATCH_DIAMETER_FRACTION = 0.5
COUNTS = ("tp", "fp", "fn")


def ground_truth_centres(labels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) centroids (px) and (n,) equivalent diameters (px) of the visible pixels of
    ``ids`` in the (Y, X) ``labels``; objects without pixels are dropped."""
    areas = np.bincount(labels.ravel(), minlength=int(ids.max(initial=0)) + 1)[ids]
    ids = ids[areas > 0]
    centres = np.asarray(ndi.center_of_mass(np.ones_like(labels), labels, ids)).reshape(-1, 2)
    return centres, np.sqrt(4.0 * areas[areas > 0] / np.pi)


def score_frame(
    gt_labels: np.ndarray, gt_types: dict[int, str], segmentation: Segmentation
) -> dict[str, dict[str, int]]:
    """Per cell type counts ``{iou_tp, iou_fp, iou_fn, centroid_tp, ...}`` of one frame."""
    cells = segmentation.cells
    pred_types = dict(zip(cells.label, cells.cell_type, strict=True))
    pred_labels = segmentation.labels.astype(np.int64)
    by_iou = detection_by_type(gt_labels.astype(np.int64), gt_types, pred_labels, pred_types)
    present = set(np.unique(gt_labels).tolist()) - {0}
    counts: dict[str, dict[str, int]] = {}
    for cell_type in sorted(set(gt_types.values())):
        ids = np.array(
            [label for label, kind in gt_types.items() if kind == cell_type and label in present],
            dtype=np.int64,
        )
        centres, diameters = ground_truth_centres(gt_labels, ids)
        predicted = cells.loc[cells.cell_type == cell_type, ["centroid_y", "centroid_x"]]
        radius = np.maximum(MIN_MATCH_DISTANCE_PX, MATCH_DIAMETER_FRACTION * diameters)
        by_centre = match_centroids(centres, predicted.to_numpy(), radius)
        counts[cell_type] = {
            **{f"iou_{key}": int(by_iou.loc[cell_type, key]) for key in COUNTS},
            **{f"centroid_{key}": int(by_centre[key]) for key in COUNTS},
        }
    return counts


def bench_smears(seeds: list[int]) -> tuple[list[dict], list[float]]:
    """Per-frame, per-type count rows and times (ms) for ``make_smear(seed=s)``."""
    rows, times = [], []
    for seed in seeds:
        smear = make_smear(seed=seed)
        rgb = smear.image.astype(np.float32) / 255.0
        start = time.perf_counter()
        segmentation = segment_frame(rgb, "smear")
        times.append(1000.0 * (time.perf_counter() - start))
        gt_types = dict(zip(smear.cells.label, smear.cells.cell_type, strict=True))
        frame_counts = score_frame(smear.labels, gt_types, segmentation)
        rows += [
            {"modality": "smear", "seed": seed, "frame": 0, "cell_type": kind, **values}
            for kind, values in frame_counts.items()
        ]
    return rows, times


def bench_timelapses(seeds: list[int], n_frames: int) -> tuple[list[dict], list[float]]:
    """Per-frame, per-type count rows and times (ms) for ``make_timelapse(seed=s)``."""
    rows, times = [], []
    for seed in seeds:
        movie = make_timelapse(n_frames=n_frames, seed=seed)
        gt_types = dict(zip(movie.tracks.track_id, movie.tracks.cell_type, strict=False))
        for frame in range(n_frames):
            rgb = movie.image[frame].astype(np.float32) / 255.0
            start = time.perf_counter()
            segmentation = segment_frame(rgb, "fluorescence")
            times.append(1000.0 * (time.perf_counter() - start))
            frame_counts = score_frame(movie.labels[frame], gt_types, segmentation)
            rows += [
                {"modality": "fluorescence", "seed": seed, "frame": frame, "cell_type": k, **v}
                for k, v in frame_counts.items()
            ]
    return rows, times


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Pooled precision / recall / F1 per modality and cell type, for both matching rules."""
    totals = rows.groupby(["modality", "cell_type"], sort=False).sum(numeric_only=True)
    summary = pd.DataFrame(index=totals.index)
    for rule in ("iou", "centroid"):
        counts = totals[[f"{rule}_{key}" for key in COUNTS]].set_axis(list(COUNTS), axis=1)
        scores = scores_from_counts(counts)
        summary["n_true"] = scores["tp"] + scores["fn"]
        for score in ("precision", "recall", "f1"):
            summary[f"{rule}_{score}"] = scores[score].round(3)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smear-seeds", type=int, default=6, help="smears: seeds 0..N-1")
    parser.add_argument("--movie-seeds", type=int, default=4, help="time-lapses: seeds 0..N-1")
    parser.add_argument("--frames", type=int, default=10, help="frames per time-lapse")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)

    smear_rows, smear_times = bench_smears(list(range(args.smear_seeds)))
    movie_rows, movie_times = bench_timelapses(list(range(args.movie_seeds)), args.frames)
    summary = summarise(pd.DataFrame(smear_rows + movie_rows))
    with pd.option_context("display.width", 160):
        print(summary.to_string())
    timing = {
        "smear_ms_per_frame": round(float(np.mean(smear_times)), 1),
        "fluorescence_ms_per_frame": round(float(np.mean(movie_times)), 1),
    }
    print(timing)

    results = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "scikit_image": skimage.__version__,
        "smear_seeds": args.smear_seeds,
        "movie_seeds": args.movie_seeds,
        "frames_per_movie": args.frames,
        "match_rule": {
            "iou_threshold": 0.5,
            "centroid_max_distance_px": f"max({MIN_MATCH_DISTANCE_PX}, "
            f"{MATCH_DIAMETER_FRACTION} x GT equivalent diameter)",
        },
        "scores": [
            {"modality": modality, "cell_type": cell_type, **values}
            for (modality, cell_type), values in summary.to_dict("index").items()
        ],
        **timing,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
