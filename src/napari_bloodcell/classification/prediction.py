"""Classifying loose single-cell crop images (``napari-bloodcell predict``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import InputImageError
from .datasets import image_files_under, prepare_crop_files
from .inference import CellClassifier


def collect_image_files(inputs: list[Path]) -> list[Path]:
    """Image files given directly or found (recursively, hidden folders skipped) in given
    folders, sorted."""
    files: list[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            files += image_files_under(path)
        elif path.is_file():
            files.append(path)
        else:
            raise InputImageError(f"{path}: no such file or folder")
    if not files:
        raise InputImageError(f"no image files in {', '.join(map(str, inputs))}")
    return files


def predict_files(
    inputs: list[Path], model: str | Path = "default", uncertain_threshold: float | None = None
) -> pd.DataFrame:
    """One row per crop image: ``file``, ``cell_class``, ``confidence``, ``novelty``,
    ``p_<class>`` (see :meth:`.CellClassifier.classify`)."""
    classifier = CellClassifier(model)
    files = collect_image_files(inputs)
    crops = prepare_crop_files(files, size=classifier.input_size, scale=classifier.crop_scale)
    table = classifier.classify(crops, uncertain_threshold)
    table.insert(0, "file", [str(f) for f in files])
    return table
