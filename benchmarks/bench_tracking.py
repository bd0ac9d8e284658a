"""Tracking benchmark: CTC DET/TRA on synthetic time-lapses, class vote, timing, flowcatchR.

For each difficulty (easy / medium / hard) and seed, a synthetic fluorescence time-lapse
driven by the real celltrackR neutrophil tracks (random walks if absent) is

* segmented and tracked by the real pipeline (``iter_analyze_stack`` → ``track_table``), and
* tracked from its ground-truth detections (perfect segmentation),

and both are scored against the CTC-style ground truth with py-ctcmetrics (DET, TRA), all
objects together and the leukocytes alone (two thirds of the objects are adherent
platelets, which any tracker links: the pooled TRA mostly measures them).
The class vote is scored with per-frame leukocyte classes that are right with probability
0.85. A timing run tracks 1,000 frames x 200 cells of synthetic detections; a smoke test
runs the pipeline on the real flowcatchR mesentery sequence and reports the recall of
flowcatchR's automatic platelet detections. Writes ``benchmarks/results/tracking.json``.

    python benchmarks/bench_tracking.py [--seeds 0 1] [--frames 30] [--skip-timing]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, write_result  # noqa: E402

from napari_bloodcell.metrics import match_centroids  # noqa: E402
from napari_bloodcell.pipeline import AnalysisSettings, analyze_stack  # noqa: E402
from napari_bloodcell.synthetic_tracks import (  # noqa: E402
    DIFFICULTIES,
    FRAME_INTERVAL_S,
    PIXEL_SIZE_UM,
    detections_from_ground_truth,
    make_tracking_timelapse,
    simulate_tracks,
    write_ground_truth_ctc,
)
from napari_bloodcell.tracking import ctc_scores, track_table, write_ctc  # noqa: E402

CHANNELS = {"neutrophil": 1, "platelet": 0}
CLASS_ACCURACY = 0.85


def score_tracks(
    timelapse, labels: np.ndarray, tracks: pd.DataFrame, cell_type: str | None = None
) -> dict[str, float]:
    """CTC DET/TRA of ``tracks`` (``frame, label, track_id`` into ``labels``) vs the truth,
    of the objects of ``cell_type`` alone when given (in the truth and in ``tracks``)."""
    if cell_type is not None:
        tracks = tracks[tracks["cell_type"] == cell_type]
    with tempfile.TemporaryDirectory() as tmp:
        write_ground_truth_ctc(timelapse, Path(tmp) / "gt", cell_type)
        write_ctc(Path(tmp) / "res", labels, tracks)
        return ctc_scores(Path(tmp) / "gt", Path(tmp) / "res")


def class_vote_accuracy(truth: pd.DataFrame, tracks: pd.DataFrame) -> dict[str, float]:
    """Accuracy of leukocyte classes per frame and per track (``label`` = true track id).

    A track's true class is that of the ground-truth object it follows in most frames;
    ``detection_weighted`` scores the track class at every detection against that
    detection's own true class (so wrongly joined tracks count against it).
    """
    wbc = tracks[tracks["cell_type"] == "wbc"]
    true_class = truth.drop_duplicates("track_id").set_index("track_id")["cell_class"]
    expected = wbc["label"].map(true_class)
    followed = wbc.groupby("track_id")["label"].agg(lambda labels: labels.mode().iloc[0])
    per_track = wbc.groupby("track_id")["track_class"].first() == followed.map(true_class)
    length = wbc.groupby("track_id").size()
    return {
        "per_frame_accuracy": float((wbc["cell_class"] == expected).mean()),
        "track_accuracy": float(per_track.mean()),
        "track_accuracy_5_frames_or_more": float(per_track[length >= 5].mean()),
        "detection_weighted_track_accuracy": float((wbc["track_class"] == expected).mean()),
        "n_tracks": int(len(per_track)),
    }


def bench_synthetic(difficulty: str, seed: int, n_frames: int) -> dict:
    """Scores of one synthetic time-lapse: pipeline, ground-truth detections, class vote."""
    timelapse = make_tracking_timelapse(difficulty, n_frames=n_frames, seed=seed)
    units = {"pixel_size_um": PIXEL_SIZE_UM, "frame_interval_s": FRAME_INTERVAL_S}
    started = time.perf_counter()
    settings = AnalysisSettings("fluorescence", CHANNELS, pixel_size_um=PIXEL_SIZE_UM)
    labels, cells = analyze_stack(timelapse.image.astype(np.float32) / 255.0, None, settings)
    segmented = time.perf_counter()
    pipeline = track_table(cells, **units)
    tracked = time.perf_counter()
    truth = detections_from_ground_truth(timelapse.tracks, seed=seed)
    from_truth = track_table(truth, **units)
    noisy = detections_from_ground_truth(timelapse.tracks, class_accuracy=CLASS_ACCURACY, seed=seed)
    vote = class_vote_accuracy(timelapse.tracks, track_table(noisy, **units).tracks)
    return {
        "difficulty": difficulty,
        "seed": seed,
        "trajectories": Path(timelapse.trajectory_source).name,
        "gt_tracks": int(timelapse.tracks["track_id"].nunique()),
        "pipeline": score_tracks(timelapse, labels, pipeline.tracks),
        "pipeline_leukocytes": score_tracks(timelapse, labels, pipeline.tracks, "wbc"),
        "pipeline_tracks": int(pipeline.tracks["track_id"].nunique()),
        "pipeline_contact_events": len(pipeline.interactions),
        "segmentation_s": segmented - started,
        "tracking_s": tracked - segmented,
        "ground_truth_detections": score_tracks(timelapse, timelapse.labels, from_truth.tracks),
        "ground_truth_detections_leukocytes": score_tracks(
            timelapse, timelapse.labels, from_truth.tracks, "wbc"
        ),
        "class_vote": vote,
    }


def bench_timing(n_frames: int = 1000, n_cells: int = 200, seed: int = 0) -> dict:
    """Seconds to track ``n_frames`` x ~``n_cells`` synthetic detections (half platelets)."""
    half = n_cells // 2
    side = int(256 * np.sqrt(half / DIFFICULTIES["medium"].n_leukocytes))
    tracks, source = simulate_tracks(
        "medium",
        n_frames=n_frames,
        shape=(side, side),
        seed=seed,
        n_leukocytes=half,
        n_platelets=n_cells - half,
    )
    cells = detections_from_ground_truth(tracks, seed=seed)
    started = time.perf_counter()
    result = track_table(cells, PIXEL_SIZE_UM, FRAME_INTERVAL_S)
    return {
        "n_frames": n_frames,
        "detections": len(cells),
        "cells_per_frame": len(cells) / n_frames,
        "trajectories": Path(source).name,
        "seconds": time.perf_counter() - started,
        "tracks": int(result.tracks["track_id"].nunique()),
        "target_s": 60,
    }


def bench_timing_fragmented(n_frames: int = 50, per_frame: int = 800, seed: int = 0) -> dict:
    """Seconds to track ``n_frames`` x ``per_frame`` platelet detections placed at random
    in a 2,000 px field: nearly every track is a piece of one frame, the worst case of gap
    closing (flowing platelets and noisy detections come close: on the flowcatchR movie 80 %
    of the tracks are one frame long)."""
    rng = np.random.default_rng(seed)
    n = n_frames * per_frame
    cells = pd.DataFrame(
        {
            "frame": np.repeat(np.arange(n_frames), per_frame),
            "centroid_y": rng.uniform(0, 2000, n),
            "centroid_x": rng.uniform(0, 2000, n),
            "cell_type": "platelet",
            "diameter_px": 6.0,
        }
    )
    started = time.perf_counter()
    result = track_table(cells, PIXEL_SIZE_UM, FRAME_INTERVAL_S)
    return {
        "n_frames": n_frames,
        "detections": n,
        "seconds": time.perf_counter() - started,
        "tracks": int(result.tracks["track_id"].nunique()),
    }


def bench_flowcatchr(radius_px: float = 3.0) -> dict | None:
    """Pipeline + tracking on the real flowcatchR sequence; recall of its platelet candidates."""
    folder = DEFAULT_DATA / "flowcatchr_mesentery"
    if not folder.is_dir():
        return None
    stack = tifffile.imread(folder / "mesentery_TYXC.tif").astype(np.float32) / 255.0
    candidates = pd.read_csv(folder / "flowcatchr_candidate_platelets.csv")
    settings = AnalysisSettings("fluorescence", CHANNELS)
    _, cells = analyze_stack(stack, None, settings, source="mesentery")
    result = track_table(cells)
    platelets = result.tracks[result.tracks["cell_type"] == "platelet"]
    tp = fp = fn = 0
    for frame in range(len(stack)):
        ours = platelets[platelets["frame"] == frame]
        theirs = candidates[candidates["frame"] == frame]
        match = match_centroids(
            theirs[["y", "x"]].to_numpy(), ours[["centroid_y", "centroid_x"]].to_numpy(), radius_px
        )
        tp, fp, fn = tp + match["tp"], fp + match["fp"], fn + match["fn"]
    lengths = result.summary.groupby("cell_type")["n_detections"]
    return {
        "frames": len(stack),
        "platelet_recall_vs_flowcatchr": tp / max(tp + fn, 1),
        "platelet_precision_vs_flowcatchr": tp / max(tp + fp, 1),
        "match_radius_px": radius_px,
        "tracks_by_type": lengths.size().to_dict(),
        "median_track_length_by_type": lengths.median().to_dict(),
        "contact_events": len(result.interactions),
    }


def summarise(rows: list[dict]) -> pd.DataFrame:
    flat = pd.DataFrame(
        {
            "difficulty": r["difficulty"],
            "seed": r["seed"],
            "DET": r["pipeline"]["DET"],
            "TRA": r["pipeline"]["TRA"],
            "DET_gt_det": r["ground_truth_detections"]["DET"],
            "TRA_gt_det": r["ground_truth_detections"]["TRA"],
            "DET_wbc": r["pipeline_leukocytes"]["DET"],
            "TRA_wbc": r["pipeline_leukocytes"]["TRA"],
            "TRA_wbc_gt_det": r["ground_truth_detections_leukocytes"]["TRA"],
            "frame_acc": r["class_vote"]["per_frame_accuracy"],
            "track_acc": r["class_vote"]["track_accuracy"],
            "track_acc_5+": r["class_vote"]["track_accuracy_5_frames_or_more"],
            "det_w_acc": r["class_vote"]["detection_weighted_track_accuracy"],
        }
        for r in rows
    )
    return flat.groupby("difficulty", sort=False).mean(numeric_only=True).drop(columns="seed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args(argv)

    rows = [
        bench_synthetic(difficulty, seed, args.frames)
        for difficulty in DIFFICULTIES
        for seed in args.seeds
    ]
    table = summarise(rows)
    print(table.round(3).to_string())
    timing = None if args.skip_timing else bench_timing()
    fragmented = None if args.skip_timing else bench_timing_fragmented()
    for name, measured in (("timing", timing), ("fragmented", fragmented)):
        if measured:
            print(f"{name}: {measured['detections']} detections in {measured['seconds']:.1f} s")
    flowcatchr = bench_flowcatchr()
    if flowcatchr:
        print(f"flowcatchR: {flowcatchr}")
    write_result(
        "tracking",
        {
            "by_difficulty": table.reset_index().to_dict(orient="records"),
            "runs": rows,
            "timing_1000x200": timing,
            "timing_fragmented_50x800": fragmented,
            "flowcatchr_smoke": flowcatchr,
            "class_accuracy_per_frame_simulated": CLASS_ACCURACY,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
