"""Labelled crop folders: loading, preparing and splitting without leakage.

A data folder holds one sub-folder per class (``neutrophil/``, ``Platelet/`` …),
each with image files of single cells at any size or magnification. Class names
are matched case-insensitively. Every image is re-cropped and colour-normalised
exactly as ``analyze`` crops cells (:func:`napari_bloodcell.crops.crop_single_cell_image`).

Images in sub-folders of a class folder belong to that class.

Source images: files whose name contains ``__`` were cut from one source frame,
named by the part before ``__`` (``BloodImage_00012__3.png`` → ``BloodImage_00012``);
any other file is its own source. A source id is ``<data folder name>/<source>``.
Splits never put one source in two parts, nor sources of one name in two data folders
(crops of one frame filed in two folders).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..reading import IMAGE_SUFFIXES

SOURCE_SEPARATOR = "__"


@dataclass
class CropDataset:
    """Prepared crops with labels.

    images : (N, S, S, 3) uint8 normalised crops.
    labels : (N,) int class indices into ``classes``.
    classes : class names (lower case).
    sources : (N,) source-image ids (``<data folder>/<source>``), the unit of splitting.
    domains : (N,) index of the data folder each item came from.
    files : (N,) file paths.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    sources: np.ndarray
    domains: np.ndarray
    files: np.ndarray

    def subset(self, index: np.ndarray) -> CropDataset:
        return CropDataset(
            self.images[index],
            self.labels[index],
            self.classes,
            self.sources[index],
            self.domains[index],
            self.files[index],
        )


def find_labelled_files(
    data_dirs: list[Path], classes: list[str] | None = None, *, ignore_unknown: bool = False
) -> tuple[list[tuple[Path, str, int]], list[str]]:
    """List ``(file, class, domain)`` for class sub-folders of the data folders (images in
    their sub-folders included; a class folder without images is an error).

    With ``classes`` given (e.g. a model's), a folder naming another class is an
    error unless ``ignore_unknown``; otherwise the classes are the sorted union of
    folder names.
    """
    found: list[tuple[Path, str, int]] = []
    for domain, data_dir in enumerate(data_dirs):
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise DatasetError(f"{data_dir}: not a folder (expected one sub-folder per class)")
        class_dirs = sorted(
            p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not class_dirs:
            raise DatasetError(
                f"{data_dir}: no class sub-folders (expected e.g. neutrophil/, platelet/)"
            )
        for class_dir in class_dirs:
            name = class_dir.name.lower()
            if classes is not None and name not in classes:
                if ignore_unknown:
                    continue
                raise DatasetError(
                    f"{class_dir}: class {class_dir.name!r} is not one of the model's classes "
                    f"({', '.join(classes)}); use --ignore-unknown to skip it"
                )
            files = image_files_under(class_dir)
            if not files:
                raise DatasetError(
                    f"{class_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this class "
                    f"folder or its sub-folders"
                )
            found.extend((f, name, domain) for f in files)
    if not found:
        raise DatasetError(f"no image files found in {', '.join(map(str, data_dirs))}")
    names = classes if classes is not None else sorted({c for _, c, _ in found})
    return found, list(names)


def image_files_under(folder: Path) -> list[Path]:
    """Image files in ``folder`` and its sub-folders (hidden ones skipped), sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def load_crop_dataset(
    data_dirs: list[Path],
    *,
    size: int,
    scale: float,
    classes: list[str] | None = None,
    ignore_unknown: bool = False,
    workers: int = 2,
) -> CropDataset:
    """Read and prepare every labelled crop of the data folders (in ``workers`` processes)."""
    data_dirs = [Path(d) for d in data_dirs]
    found, names = find_labelled_files(data_dirs, classes, ignore_unknown=ignore_unknown)
    files = [f for f, _, _ in found]
    return CropDataset(
        images=prepare_crop_files(files, size=size, scale=scale, workers=workers),
        labels=np.array([names.index(c) for _, c, _ in found], dtype=np.int64),
        classes=names,
        sources=np.array([source_id(f, data_dirs[d]) for f, _, d in found]),
        domains=np.array([d for _, _, d in found], dtype=np.int64),
        files=np.array([str(f) for f in files]),
    )


def prepare_crop_files(
    files: list[Path], *, size: int, scale: float, workers: int = 2
) -> np.ndarray:
    """Read single-cell images and crop them as ``analyze`` would: (N, size, size, 3) uint8."""
    jobs = [(str(f), size, scale) for f in files]
    if workers > 1 and len(jobs) > 64:
        with ProcessPoolExecutor(workers) as pool:
            images = list(pool.map(_prepare_file, jobs, chunksize=32))
    else:
        images = [_prepare_file(job) for job in jobs]
    return np.stack(images) if images else np.zeros((0, size, size, 3), dtype=np.uint8)


def source_id(path: Path, data_dir: Path) -> str:
    """The source image a crop file came from (see module docstring)."""
    stem = path.stem.split(SOURCE_SEPARATOR)[0]
    return f"{folder_name(data_dir)}/{stem}"


def folder_name(data_dir: Path) -> str:
    """The name a data folder is recorded by (``.`` is the current folder's name)."""
    return Path(data_dir).resolve().name


def _prepare_file(job: tuple[str, int, float]) -> np.ndarray:
    from ..crops import crop_single_cell_image
    from ..reading import read_image

    path, size, scale = job
    frame = read_image(path).data[0]
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    crop = crop_single_cell_image(frame[..., :3], size=size, scale=scale)
    return np.round(crop * 255).astype(np.uint8)


def split_by_source(
    dataset: CropDataset, fractions: tuple[float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split item indices into train / validation / test by source image, per class.

    ``fractions`` = (validation, test) share of the sources of each class (by the
    class of the source's first item). Seeded; no source is in two parts, and sources of
    one name in several data folders go to the same part.
    """
    rng = np.random.default_rng(seed)
    val_fraction, test_fraction = fractions
    # the unit of splitting: a source name, whatever folder it is in (ordered as the ids)
    names = np.array([s.split("/", 1)[-1] for s in dataset.sources])
    _, first_item = np.unique(dataset.sources, return_index=True)
    unique_names, first_source = np.unique(names[first_item], return_index=True)
    first_source_of_name = np.sort(first_source)
    unit_names = names[first_item][first_source_of_name]
    unit_class = dataset.labels[first_item][first_source_of_name]
    part_of_unit = np.zeros(len(unit_names), dtype=np.int64)  # 0 train, 1 val, 2 test
    for label in np.unique(unit_class):
        members = rng.permutation(np.flatnonzero(unit_class == label))
        n_val = int(round(val_fraction * len(members)))
        n_test = int(round(test_fraction * len(members)))
        part_of_unit[members[:n_val]] = 1
        part_of_unit[members[n_val : n_val + n_test]] = 2
    part_of_name = part_of_unit[np.argsort(unit_names)]  # aligned with unique_names
    part = part_of_name[np.searchsorted(unique_names, names)]
    return tuple(np.flatnonzero(part == k) for k in range(3))


def trained_folder_names(training: dict) -> set[str]:
    """Names of the data folders a model's ``training`` record says it was trained on."""
    names = training.get("data_dir_names")
    if names is None:  # models of version ≤ 5 record the folders' paths only
        names = [Path(d).name for d in training.get("data_dirs", [])]
    return set(names)


def parts_in_model_split(
    found: list[tuple[Path, str, int]], data_dirs: list[Path], training: dict
) -> np.ndarray:
    """For each ``(file, class, domain)`` of :func:`find_labelled_files`, the part of the
    model's split it was in: ``"train"``, ``"validation"`` or ``"test"`` when its data
    folder (by name) is one the model was trained on, else ``"other"``."""
    trained_on = trained_folder_names(training)
    validation = set(training.get("validation_sources", []))
    test = set(training.get("test_sources", []))
    parts = []
    for path, _, domain in found:
        data_dir = Path(data_dirs[domain])
        source = source_id(path, data_dir)
        if folder_name(data_dir) not in trained_on:
            parts.append("other")
        elif source in validation:
            parts.append("validation")
        elif source in test:
            parts.append("test")
        else:
            parts.append("train")
    return np.array(parts, dtype=object)
