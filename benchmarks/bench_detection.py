"""Detection benchmark of the segmentation stage on real data.

BCCD smears: segment every frame and compare with the VOC boxes of ``bccd_objects.csv``.
Detections and boxes of one type are matched one to one (a detection may match a box that
holds its centroid; the most pairs): recall = matches / boxes, precision = matches /
detections (a lower bound for platelets and red cells, whose boxes are incomplete:
unboxed cells count as wrong; so do fragments and merged cells beyond one match). Frames
with an even ``image_index`` form the "tune" half (the only one used for tuning), odd ones
the "check" half.
WBC outline: for each VOC WBC box found by a detected WBC, the IoU of that WBC's bounding box
with the VOC box (the best one when several WBC centroids lie in the box); reported as the
median and the share with IoU ≥ 0.5.

flowcatchR fluorescence: platelet recall against flowcatchR's own automatic detections
(candidates and detected platelets within 3 px matched one to one).

Usage: ``python benchmarks/bench_detection.py [--data DIR] [--limit N] [--out JSON]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import skimage
import skimage.io
from scipy.optimize import linear_sum_assignment

from napari_bloodcell.segmentation import segment_frame

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "detection.json"
MATCH_RADIUS_PX = 3.0
GOOD_BOX_IOU = 0.5
BOX_TYPES = {"wbc": "WBC", "platelet": "Platelets", "rbc": "RBC"}


def centroids_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(n_points, n_boxes) bool: point (y, x) lies in box (xmin, ymin, xmax, ymax), inclusive."""
    if len(points) == 0 or len(boxes) == 0:
        return np.zeros((len(points), len(boxes)), dtype=bool)
    y, x = points[:, :1], points[:, 1:]
    xmin, ymin, xmax, ymax = (boxes[:, i][None, :] for i in range(4))
    return (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(n_a, n_b) IoU of half-open pixel boxes (x0, y0, x1, y1)."""
    x0 = np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    y0 = np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    x1 = np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2])
    y1 = np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3])
    overlap = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    return overlap / (area_a[:, None] + area_b[None, :] - overlap)


def wbc_box_ious(cells: pd.DataFrame, objects: pd.DataFrame) -> list[float]:
    """Per found VOC WBC box: best bounding-box IoU of a detected WBC whose centroid is in it.

    VOC corners are inclusive pixels, so a box spans [xmin, xmax + 1) like the half-open
    detection boxes.
    """
    wbcs = cells[cells.cell_type == "wbc"]
    boxes = objects.loc[objects.cell_type == "WBC", ["xmin", "ymin", "xmax", "ymax"]].to_numpy()
    inside = centroids_in_boxes(wbcs[["centroid_y", "centroid_x"]].to_numpy(), boxes)
    if not inside.any():
        return []
    detected = wbcs[["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]].to_numpy(dtype=np.float64)
    voc = boxes.astype(np.float64) + [0, 0, 1, 1]
    ious = np.where(inside, box_iou(detected, voc), -1.0).max(axis=0)
    return [float(iou) for iou in ious[inside.any(axis=0)]]


def one_to_one_matches(allowed: np.ndarray) -> int:
    """Largest number of (row, column) pairs, each row and column used once, among the
    ``allowed`` (n_rows, n_columns) bool pairs (Hungarian algorithm on 0/1 costs)."""
    if not allowed.any():
        return 0
    rows, columns = linear_sum_assignment(~allowed)
    return int(allowed[rows, columns].sum())


def score_frame(cells: pd.DataFrame, objects: pd.DataFrame) -> dict[str, int]:
    """Per-type counts of boxes, detections and matches: a detection matches a box of its
    type that holds its centroid, each box and each detection at most once (one merged
    blob over three red cells finds one of them; two fragments of one cell count once)."""
    counts: dict[str, int] = {}
    for cell_type, voc_type in BOX_TYPES.items():
        detected = cells.loc[cells.cell_type == cell_type, ["centroid_y", "centroid_x"]]
        boxes = objects.loc[objects.cell_type == voc_type, ["xmin", "ymin", "xmax", "ymax"]]
        inside = centroids_in_boxes(detected.to_numpy(), boxes.to_numpy())
        counts[f"{cell_type}_boxes"] = len(boxes)
        counts[f"{cell_type}_detections"] = len(detected)
        counts[f"{cell_type}_matched"] = one_to_one_matches(inside)
    return counts


def summarise(per_frame: pd.DataFrame) -> dict[str, float]:
    """Recall / precision per type, WBC box IoU, RBC count ratio and time per frame."""
    totals = per_frame.sum(numeric_only=True)
    summary: dict[str, float] = {"frames": len(per_frame)}
    for cell_type in BOX_TYPES:
        matched = totals[f"{cell_type}_matched"]
        summary[f"{cell_type}_recall"] = matched / totals[f"{cell_type}_boxes"]
        summary[f"{cell_type}_precision"] = matched / max(totals[f"{cell_type}_detections"], 1)
        summary[f"{cell_type}_boxes"] = int(totals[f"{cell_type}_boxes"])
        summary[f"{cell_type}_detections"] = int(totals[f"{cell_type}_detections"])
    ious = np.asarray([iou for frame_ious in per_frame.wbc_ious for iou in frame_ious])
    summary["wbc_box_iou_n"] = len(ious)
    summary["wbc_box_iou_median"] = float(np.median(ious)) if len(ious) else float("nan")
    summary["wbc_box_iou_share_ge_0_5"] = (
        float(np.mean(ious >= GOOD_BOX_IOU)) if len(ious) else float("nan")
    )
    summary["rbc_count_ratio"] = totals["rbc_detections"] / totals["rbc_boxes"]
    summary["time_ms_mean"] = float(per_frame.time_ms.mean())
    summary["time_ms_median"] = float(per_frame.time_ms.median())
    return {
        key: value if isinstance(value, int) else round(float(value), 4)
        for key, value in summary.items()
    }


def bench_bccd(bccd_dir: Path, limit: int | None) -> tuple[dict, pd.DataFrame]:
    """Segment the BCCD frames and score them against the VOC boxes."""
    objects = pd.read_csv(bccd_dir / "bccd_objects.csv")
    frames = pd.read_csv(bccd_dir / "bccd_frames.csv").sort_values("image_index")
    if limit:
        frames = frames.head(limit)
    rows = []
    for frame_row in frames.itertuples():
        image = skimage.io.imread(bccd_dir / "JPEGImages" / frame_row.image)
        rgb = image[..., :3].astype(np.float32) / 255.0
        start = time.perf_counter()
        segmentation = segment_frame(rgb, "smear")
        elapsed_ms = 1000.0 * (time.perf_counter() - start)
        frame_objects = objects[objects.image == frame_row.image]
        counts = score_frame(segmentation.cells, frame_objects)
        rows.append(
            {
                "image": frame_row.image,
                "half": "tune" if frame_row.image_index % 2 == 0 else "check",
                "time_ms": elapsed_ms,
                **counts,
                "wbc_ious": wbc_box_ious(segmentation.cells, frame_objects),
            }
        )
    per_frame = pd.DataFrame(rows)
    results = {half: summarise(per_frame[per_frame.half == half]) for half in ("tune", "check")}
    results["all"] = summarise(per_frame)
    return results, per_frame


def bench_flowcatchr(flow_dir: Path, channels: dict[str, int] | None = None) -> dict[str, float]:
    """Platelet recall against flowcatchR's automatic candidate detections.

    ``channels``: the role → channel mapping passed to segment_frame (None = its default).
    """
    candidates = pd.read_csv(flow_dir / "flowcatchr_candidate_platelets.csv")
    frames = sorted((flow_dir / "frames").glob("frame_*.png"))
    found = 0
    n_platelets = n_leukocytes = 0
    times = []
    for index, path in enumerate(frames):
        rgb = skimage.io.imread(path)[..., :3].astype(np.float32) / 255.0
        start = time.perf_counter()
        cells = segment_frame(rgb, "fluorescence", channels=channels).cells
        times.append(1000.0 * (time.perf_counter() - start))
        platelets = cells.loc[cells.cell_type == "platelet", ["centroid_x", "centroid_y"]]
        n_platelets += len(platelets)
        n_leukocytes += int((cells.cell_type == "wbc").sum())
        frame_candidates = candidates.loc[candidates.frame == index, ["x", "y"]].to_numpy()
        if len(platelets) and len(frame_candidates):
            distances = np.linalg.norm(
                frame_candidates[:, None, :] - platelets.to_numpy()[None, :, :], axis=2
            )
            found += one_to_one_matches(distances <= MATCH_RADIUS_PX)
    return {
        "frames": len(frames),
        "candidates": len(candidates),
        "platelet_recall": round(found / len(candidates), 4),
        "platelet_detections": n_platelets,
        "wbc_detections": n_leukocytes,
        "time_ms_mean": round(float(np.mean(times)), 2),
    }


def print_table(results: dict) -> None:
    """Print the BCCD halves side by side and the flowcatchR line."""
    halves = [half for half in ("tune", "check", "all") if half in results["bccd"]]
    metrics = results["bccd"]["all"].keys()
    print(f"{'BCCD':<22}" + "".join(f"{half:>10}" for half in halves))
    for metric in metrics:
        print(f"{metric:<22}" + "".join(f"{results['bccd'][h][metric]:>10}" for h in halves))
    for key in ("flowcatchr", "flowcatchr_platelet_channel_only"):
        if key in results:
            print(f"{key}:", results[key])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared/data folder")
    parser.add_argument("--limit", type=int, default=None, help="only the first N BCCD frames")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--per-frame", type=Path, default=None, help="optional per-frame CSV")
    args = parser.parse_args(argv)

    bccd_dir = args.data / "bccd"
    if not (bccd_dir / "bccd_objects.csv").is_file():
        print(f"BCCD data not found under {args.data}; nothing to benchmark.")
        return 0
    bccd_results, per_frame = bench_bccd(bccd_dir, args.limit)
    results = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "scikit_image": skimage.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "bccd": bccd_results,
    }
    flow_dir = args.data / "flowcatchr_mesentery"
    if (flow_dir / "flowcatchr_candidate_platelets.csv").is_file():
        results["flowcatchr"] = bench_flowcatchr(flow_dir)
        # without the leukocyte channel no platelet is lost to an overlapping leukocyte
        results["flowcatchr_platelet_channel_only"] = bench_flowcatchr(flow_dir, {"platelet": 0})
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.per_frame:
        per_frame.to_csv(args.per_frame, index=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
