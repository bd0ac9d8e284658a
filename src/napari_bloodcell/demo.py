"""``napari-bloodcell demo``: the whole pipeline on generated data with known answers.

Needs no data at hand: a synthetic smear frame and a synthetic fluorescence
time-lapse are generated (with ground-truth labels), written to ``out/inputs``,
analysed exactly as ``napari-bloodcell analyze`` would (default model), and the
segmentation is scored against the ground truth (IoU ≥ 0.5 matching).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from .batch import analyze_files
from .errors import OutputExistsError
from .metrics import detection_by_type
from .pipeline import AnalysisSettings
from .synthetic import make_smear, make_timelapse

SMEAR_NAME = "synthetic_smear.png"
TIMELAPSE_NAME = "synthetic_timelapse.tif"


def run_demo(
    out: Path, *, seed: int = 0, overwrite: bool = False, model: str | None = "default"
) -> str:
    """Generate inputs, analyse them into ``out`` and return a printable report.

    Also writes ``out/demo_report.json`` with the detection scores per cell type.
    """
    out = Path(out)
    report_path = out / "demo_report.json"
    if report_path.exists() and not overwrite:
        raise OutputExistsError(f"{out} already holds a demo run; pass --overwrite to replace it")
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    smear = make_smear(seed=seed)
    movie = make_timelapse(n_frames=10, seed=seed)
    smear_path, movie_path = inputs / SMEAR_NAME, inputs / TIMELAPSE_NAME
    import imageio.v3 as iio

    iio.imwrite(smear_path, smear.image)
    tifffile.imwrite(movie_path, movie.image, metadata={"axes": "TYXS"})

    summary = analyze_files(
        [smear_path, movie_path],
        out,
        AnalysisSettings(modality="auto"),
        model=model,
        overwrite=True,  # results of the inputs just written, even of an interrupted demo
    )
    table = summary.table
    predicted_smear = tifffile.imread(out / "labels" / f"{smear_path.stem}.tif")
    predicted_movie = tifffile.imread(out / "labels" / f"{movie_path.stem}.tif")

    smear_scores = detection_by_type(
        smear.labels,
        _types(smear.cells, "label"),
        predicted_smear,
        _types(table[table.source == SMEAR_NAME], "label"),
    )
    movie_truth_types = dict(zip(movie.tracks.track_id, movie.tracks.cell_type, strict=False))
    movie_scores = sum(
        detection_by_type(
            movie.labels[t],
            movie_truth_types,
            predicted_movie[t],
            _types(table[(table.source == TIMELAPSE_NAME) & (table.frame == t)], "label"),
        )[["tp", "fp", "fn"]]
        for t in range(movie.labels.shape[0])
    )
    movie_scores = _with_rates(movie_scores)
    smear_scores, movie_scores = _present_types(smear_scores), _present_types(movie_scores)
    classes = table[table.source == SMEAR_NAME].query("cell_type == 'wbc'")["cell_class"].tolist()
    truth_classes = smear.cells.query("cell_type == 'wbc'")["wbc_class"].tolist()
    report = {
        "smear": {
            "modality": summary.modalities.get(str(smear_path)),
            "detection": smear_scores.round(3).reset_index().to_dict("records"),
            "wbc_classes_predicted": classes,
            "wbc_classes_true": truth_classes,
        },
        "timelapse": {
            "modality": summary.modalities.get(str(movie_path)),
            "frames": int(movie.labels.shape[0]),
            "detection": movie_scores.round(3).reset_index().to_dict("records"),
        },
        "seconds": round(summary.seconds, 2),
        "failures": summary.failures,
    }
    report_path.write_text(json.dumps(report, indent=2))
    return _format(report, out, smear_scores, movie_scores)


def _types(cells: pd.DataFrame, label_column: str) -> dict[int, str]:
    return dict(zip(cells[label_column].astype(int), cells["cell_type"], strict=True))


def _present_types(scores: pd.DataFrame) -> pd.DataFrame:
    """The rows of cell types that were drawn or detected, and "all" (the red cells of a
    fluorescence movie scored a perfect 0 of 0)."""
    counted = scores[["tp", "fp", "fn"]].sum(axis=1) > 0
    return scores[counted | (scores.index == "all")]


def _with_rates(counts: pd.DataFrame) -> pd.DataFrame:
    counts = counts.astype(int)
    detected = counts["tp"] + counts["fp"]
    present = counts["tp"] + counts["fn"]
    counts["precision"] = np.where(
        detected > 0, counts["tp"] / detected.where(detected > 0, 1), 1.0
    )
    counts["recall"] = np.where(present > 0, counts["tp"] / present.where(present > 0, 1), 1.0)
    total = counts["precision"] + counts["recall"]
    counts["f1"] = np.where(
        total > 0, 2 * counts["precision"] * counts["recall"] / total.where(total > 0, 1), 0.0
    )
    return counts


def _format(report: dict, out: Path, smear_scores: pd.DataFrame, movie_scores: pd.DataFrame) -> str:
    columns = ["tp", "fp", "fn", "precision", "recall", "f1"]
    lines = [
        "napari-bloodcell demo: segmentation scored against generated ground truth (IoU ≥ 0.5)",
        f"\nSmear frame ({report['smear']['modality']}):",
        smear_scores[columns].round(3).to_string(),
        f"WBC classes: predicted {report['smear']['wbc_classes_predicted']}, "
        f"drawn as {report['smear']['wbc_classes_true']} (synthetic cells: a classifier check "
        f"needs real crops, see docs/benchmarks.md)",
        f"\nTime-lapse, {report['timelapse']['frames']} frames "
        f"({report['timelapse']['modality']}):",
        movie_scores[columns].round(3).to_string(),
        f"\nAnalysis took {report['seconds']} s. Results: {out}/cells.csv, {out}/labels/, "
        f"{out}/overlays/, report: {out}/demo_report.json",
    ]
    return "\n".join(lines)
