"""Analysing files into an output folder: labels, overlays and the per-cell table.

Layout of ``out``::

    cells.csv               one row per cell per frame (and cells.parquet with pyarrow)
    labels/<stem>.tif       uint32 instance labels, (Y, X) or (T, Y, X) like the input
    overlays/<stem>[_tNNNN].png   outlines coloured by class (first frames of a stack)
    run.json                parameters, model, timings and failures

Every file is written under a temporary name and renamed, so ``out`` never holds
a half-written file. Existing results are never replaced unless ``overwrite``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .errors import BloodcellError, InputImageError, OutputExistsError
from .overlays import save_overlay_png
from .pipeline import AnalysisSettings, concat_tables, iter_analyze_stack
from .reading import read_image
from .table import write_table

MAX_OVERLAYS_PER_INPUT = 10


@dataclass
class BatchSummary:
    """What a batch run did: per-input outcome, the table, timings."""

    out: Path
    table: pd.DataFrame
    processed: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    modalities: dict[str, str] = field(default_factory=dict)
    n_frames: int = 0
    seconds: float = 0.0
    written: list[Path] = field(default_factory=list)

    @property
    def seconds_per_frame(self) -> float:
        return self.seconds / self.n_frames if self.n_frames else float("nan")


def planned_outputs(inputs: list[Path], out: Path) -> list[Path]:
    """Files a run over ``inputs`` would create (used to refuse overwriting)."""
    paths = [out / "cells.csv", out / "cells.parquet", out / "run.json"]
    paths += [out / "labels" / f"{p.stem}.tif" for p in inputs]
    return paths


def check_inputs_and_output(inputs: list[Path], out: Path, overwrite: bool) -> None:
    """Refuse colliding input names and existing results (unless ``overwrite``)."""
    if not inputs:
        raise InputImageError("no input files given")
    stems: dict[str, Path] = {}
    for path in inputs:
        if path.stem in stems:
            raise InputImageError(
                f"{stems[path.stem]} and {path} share the name {path.stem!r}; their results would "
                f"overwrite each other: analyse them into different --out folders"
            )
        stems[path.stem] = path
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    existing = [p for p in planned_outputs(inputs, out) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out} already holds results ({', '.join(p.name for p in existing[:3])}"
            f"{' …' if len(existing) > 3 else ''}); pass --overwrite to replace them"
        )


def analyze_files(
    inputs: list[Path],
    out: Path,
    settings: AnalysisSettings,
    *,
    model: str | Path | None = "default",
    axes: str | None = None,
    overwrite: bool = False,
    max_overlays: int = MAX_OVERLAYS_PER_INPUT,
    on_frame: Callable[[str, int, int], None] | None = None,
) -> BatchSummary:
    """Analyse every input file into ``out``; a bad input is reported and skipped.

    ``on_frame(source, frame_index, n_frames)`` is called after each frame.
    """
    inputs = [Path(p) for p in inputs]
    out = Path(out)
    check_inputs_and_output(inputs, out, overwrite)
    classifier = _load_classifier(model)
    started = time.perf_counter()
    summary = BatchSummary(out=out, table=pd.DataFrame())
    tables = []
    for path in inputs:
        try:
            table, n_frames, modality, written = _analyze_one(
                path, out, settings, classifier, axes, max_overlays, on_frame
            )
        except BloodcellError as exc:
            summary.failures[str(path)] = str(exc)
            continue
        tables.append(table)
        summary.processed.append(str(path))
        summary.modalities[str(path)] = modality
        summary.n_frames += n_frames
        summary.written += written
    summary.seconds = time.perf_counter() - started
    summary.table = concat_tables(tables) if tables else pd.DataFrame()
    if summary.processed:
        summary.written += _write_tables(summary, settings, classifier, out)
    return summary


def _load_classifier(model):
    if model is None:
        return None
    from .classification.inference import CellClassifier

    return CellClassifier(model)


def _analyze_one(path, out, settings, classifier, axes, max_overlays, on_frame):
    """Read, analyse and write one input; returns (table, n_frames, modality, files written)."""
    image = read_image(path, axes=axes)
    if settings.pixel_size_um is None and image.pixel_size_um is not None:
        settings = AnalysisSettings(**{**asdict(settings), "pixel_size_um": image.pixel_size_um})
    labels = np.zeros(image.data.shape[:3], dtype=np.uint32)
    tables, modalities, overlays = [], set(), []
    frames = iter_analyze_stack(image.data, classifier, settings, source=path.name)
    for t, result in enumerate(frames):
        labels[t] = result.labels
        tables.append(result.table)
        modalities.add(result.modality)
        if t < max_overlays:
            overlays.append((t, result))
        if on_frame is not None:
            on_frame(path.name, t, image.n_frames)
    written = [_write_labels(out / "labels" / f"{path.stem}.tif", labels)]
    for t, result in overlays:
        suffix = f"_t{t:04d}" if image.n_frames > 1 else ""
        target = out / "overlays" / f"{path.stem}{suffix}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(save_overlay_png(target, image.data[t], result.labels, result.table))
    return concat_tables(tables), image.n_frames, "+".join(sorted(modalities)), written


def _write_labels(path: Path, labels: np.ndarray) -> Path:
    """uint32 labels as (Y, X) for a single frame or (T, Y, X), written atomically."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    data = labels[0] if labels.shape[0] == 1 else labels
    tmp = path.with_name(f".{path.name}.tmp.tif")
    tifffile.imwrite(
        tmp, data, compression="zlib", metadata={"axes": "YX" if data.ndim == 2 else "TYX"}
    )
    tmp.replace(path)
    return path


def _write_tables(summary: BatchSummary, settings, classifier, out: Path) -> list[Path]:
    written = [write_table(summary.table, out / "cells.csv")]
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        written.append(write_table(summary.table, out / "cells.parquet"))
    run = {
        "napari_bloodcell_version": __version__,
        "command": " ".join(sys.argv),
        "settings": {
            "modality": settings.modality,
            "channels": dict(settings.channels) if settings.channels else None,
            "pixel_size_um": settings.pixel_size_um,
            "uncertain_threshold": settings.uncertain_threshold
            if settings.uncertain_threshold is not None
            else (classifier.metadata.uncertain_threshold if classifier else None),
        },
        "model": None
        if classifier is None
        else {
            "path": str(classifier.path),
            "name": classifier.name,
            "version": classifier.metadata.version,
            "classes": classifier.classes,
        },
        "inputs": summary.processed,
        "modalities": summary.modalities,
        "failures": summary.failures,
        "n_frames": summary.n_frames,
        "n_cells": int(len(summary.table)),
        "seconds": round(summary.seconds, 3),
        "seconds_per_frame": round(summary.seconds_per_frame, 4),
    }
    run_path = out / "run.json"
    tmp = run_path.with_name(".run.json.tmp")
    tmp.write_text(json.dumps(run, indent=2))
    tmp.replace(run_path)
    written.append(run_path)
    return written
