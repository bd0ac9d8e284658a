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

from .batch import PARTS_FOLDER, analyze_files
from .errors import BloodcellError, OutputExistsError
from .metrics import detection_by_type, match_instances, scores_from_counts
from .pipeline import AnalysisSettings
from .synthetic import SyntheticSmear, SyntheticTimelapse, make_smear, make_timelapse

SMEAR_NAME = "synthetic_smear.png"
TIMELAPSE_NAME = "synthetic_timelapse.tif"


DEMO_OUTPUTS = frozenset(
    {
        "inputs",
        "labels",
        "overlays",
        "tables",
        "cells.csv",
        "cells.parquet",
        "run.json",
        PARTS_FOLDER,
    }
)
"""What a demo run writes into its folder (its report last)."""


def _earlier_demo(out: Path) -> bool:
    """Whether ``out`` holds an interrupted demo: its inputs (nothing else in ``inputs/``)
    and nothing but what a demo writes, or only an empty ``inputs/`` (stopped before its
    first input; a user's cells.csv beside an empty ``inputs/`` folder is no demo)."""
    inputs = out / "inputs"
    if not inputs.is_dir():
        return False
    names = {p.name for p in inputs.iterdir()}
    if not names:
        return [p.name for p in out.iterdir()] == ["inputs"]
    return names <= {SMEAR_NAME, TIMELAPSE_NAME} and all(
        p.name in DEMO_OUTPUTS for p in out.iterdir()
    )


def run_demo(
    out: Path, *, seed: int = 0, overwrite: bool = False, model: str | None = "default"
) -> str:
    """Generate inputs, analyse them into ``out`` and return a printable report.

    Also writes ``out/demo_report.json`` with the detection scores per cell type. Without
    ``overwrite``, ``out`` must be new, empty or an interrupted demo (no report yet).
    """
    out = Path(out)
    report_path = out / "demo_report.json"
    inputs = out / "inputs"
    if not overwrite and report_path.exists():
        raise OutputExistsError(f"{out} already holds a demo run; pass --overwrite to replace it")
    if not overwrite and out.is_dir() and any(out.iterdir()) and not _earlier_demo(out):
        raise OutputExistsError(
            f"{out} holds other files, not an earlier demo; choose a new or empty folder, or "
            "pass --overwrite to write the demo's results among them"
        )
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
    if summary.failures:  # labels/ may hold stale results of an earlier run: score nothing
        raise BloodcellError(f"the demo's analysis failed: {summary.failures}")
    table = summary.table
    smear_cells = table[table.source == SMEAR_NAME]
    predicted_smear = tifffile.imread(out / "labels" / f"{smear_path.stem}.tif")
    predicted_movie = tifffile.imread(out / "labels" / f"{movie_path.stem}.tif")

    smear_scores = detection_by_type(
        smear.labels, _types(smear.cells, "label"), predicted_smear, _types(smear_cells, "label")
    )
    movie_scores = _movie_scores(movie, predicted_movie, table[table.source == TIMELAPSE_NAME])
    smear_scores, movie_scores = _present_types(smear_scores), _present_types(movie_scores)
    report = {
        "smear": {
            "modality": summary.modalities.get(str(smear_path)),
            "detection": smear_scores.round(3).reset_index().to_dict("records"),
            "wbc_classes": _wbc_classes(smear, predicted_smear, smear_cells),
        },
        "timelapse": {
            "modality": summary.modalities.get(str(movie_path)),
            "frames": int(movie.labels.shape[0]),
            "detection": movie_scores.round(3).reset_index().to_dict("records"),
        },
        "seconds": round(summary.seconds, 2),
    }
    report_path.write_text(json.dumps(report, indent=2))
    return _format(report, out, smear_scores, movie_scores)


def _types(cells: pd.DataFrame, label_column: str) -> dict[int, str]:
    return dict(zip(cells[label_column].astype(int), cells["cell_type"], strict=True))


def _movie_scores(
    movie: SyntheticTimelapse, predicted: np.ndarray, cells: pd.DataFrame
) -> pd.DataFrame:
    """Detection counts per cell type summed over the frames of ``predicted`` (T, Y, X)
    labels, with precision, recall and F1 of the sums; ``cells``: the movie's table."""
    truth_types = dict(zip(movie.tracks.track_id, movie.tracks.cell_type, strict=False))
    counts = sum(
        detection_by_type(
            movie.labels[t], truth_types, predicted[t], _types(cells[cells.frame == t], "label")
        )[["tp", "fp", "fn"]]
        for t in range(movie.labels.shape[0])
    )
    return scores_from_counts(counts)


def _wbc_classes(
    smear: SyntheticSmear, predicted: np.ndarray, cells: pd.DataFrame
) -> list[dict[str, object]]:
    """Per drawn WBC: its ``label``, ``true`` class and the ``predicted`` class of the cell
    matched to it (IoU >= 0.5; None when missed). ``cells``: the smear's table."""
    matched = {g: p for g, p, _ in match_instances(smear.labels, predicted)["matches"]}
    predicted_class = dict(zip(cells["label"].astype(int), cells["cell_class"], strict=True))
    return [
        {
            "label": int(row.label),
            "true": row.wbc_class,
            "predicted": predicted_class.get(matched.get(int(row.label))),
        }
        for row in smear.cells[smear.cells.cell_type == "wbc"].itertuples()
    ]


def _present_types(scores: pd.DataFrame) -> pd.DataFrame:
    """The rows of cell types that were drawn or detected, and "all" (the red cells of a
    fluorescence movie scored a perfect 0 of 0)."""
    counted = scores[["tp", "fp", "fn"]].sum(axis=1) > 0
    return scores[counted | (scores.index == "all")]


def _format(report: dict, out: Path, smear_scores: pd.DataFrame, movie_scores: pd.DataFrame) -> str:
    columns = ["tp", "fp", "fn", "precision", "recall", "f1"]
    lines = [
        "napari-bloodcell demo: segmentation scored against generated ground truth (IoU ≥ 0.5)",
        f"\nSmear frame ({report['smear']['modality']}):",
        smear_scores[columns].round(3).to_string(),
        "WBC classes, drawn → predicted: "
        + ", ".join(
            f"{c['true']} → {c['predicted'] or 'missed'}" for c in report["smear"]["wbc_classes"]
        )
        + " (synthetic cells: a classifier check needs real crops, see docs/benchmarks.md)",
        f"\nTime-lapse, {report['timelapse']['frames']} frames "
        f"({report['timelapse']['modality']}):",
        movie_scores[columns].round(3).to_string(),
        f"\nAnalysis took {report['seconds']} s. Results: {out}/cells.csv, {out}/labels/, "
        f"{out}/overlays/, report: {out}/demo_report.json",
    ]
    return "\n".join(lines)
