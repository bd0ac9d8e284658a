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

import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..classes import UNCERTAIN, class_key
from ..errors import DatasetError
from ..reading import IMAGE_SUFFIXES

SOURCE_SEPARATOR = "__"


@dataclass
class CropDataset:
    """Prepared crops with labels.

    images : (N, S, S, 3) uint8 normalised crops; None until read (:func:`with_images`).
    labels : (N,) int class indices into ``classes``.
    classes : class names (lower case).
    sources : (N,) source-image ids (``<data folder>/<source>``), the unit of splitting.
    domains : (N,) index of the data folder each item came from.
    files : (N,) file paths.
    """

    images: np.ndarray | None
    labels: np.ndarray
    classes: list[str]
    sources: np.ndarray
    domains: np.ndarray
    files: np.ndarray

    def subset(self, index: np.ndarray) -> CropDataset:
        return CropDataset(
            None if self.images is None else self.images[index],
            self.labels[index],
            self.classes,
            self.sources[index],
            self.domains[index],
            self.files[index],
        )


def _class_dirs(data_dir: Path) -> list[Path]:
    """The class sub-folders of a data folder (hidden ones left out), sorted."""
    return sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def other_class_folders(data_dirs: list[Path], classes: list[str]) -> dict[str, int]:
    """The class folders of ``data_dirs`` that are none of ``classes`` (those that
    ``ignore_unknown`` leaves out), each with its number of images."""
    counts = {
        str(class_dir): len(image_files_under(class_dir))
        for data_dir in data_dirs
        for class_dir in _class_dirs(Path(data_dir))
        if class_key(class_dir.name) not in classes
    }
    return {folder: n for folder, n in counts.items() if n}


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
    skipped: list[str] = []  # class folders of other classes (ignore_unknown)
    given: dict[Path, Path] = {}
    for domain, data_dir in enumerate(data_dirs):
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise DatasetError(f"{data_dir}: not a folder (expected one sub-folder per class)")
        if data_dir.resolve() in given:  # its images would count twice
            raise DatasetError(
                f"{data_dir} and {given[data_dir.resolve()]} are the same folder; give it once"
            )
        given[data_dir.resolve()] = data_dir
        class_dirs = _class_dirs(data_dir)
        if not class_dirs:
            raise DatasetError(
                f"{data_dir}: no class sub-folders (expected e.g. neutrophil/, platelet/)"
            )
        for class_dir in class_dirs:
            name = class_key(class_dir.name)
            if name == UNCERTAIN and classes is None:  # (a model's classes never hold it)
                raise DatasetError(
                    f"{class_dir}: {UNCERTAIN!r} is the answer of a classifier that should "
                    f"not decide, not a class to learn; rename the folder (e.g. unclassified)"
                )
            if classes is not None and name not in classes:
                if ignore_unknown:
                    skipped.append(class_dir.name)
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
    if not found and skipped:
        raise DatasetError(
            f"none of the class folders ({', '.join(sorted(set(skipped)))}) of "
            f"{', '.join(map(str, data_dirs))} is one of the model's classes "
            f"({', '.join(classes)})"
        )
    if not found:
        raise DatasetError(f"no image files found in {', '.join(map(str, data_dirs))}")
    names = classes if classes is not None else sorted({c for _, c, _ in found})
    return found, list(names)


def image_files_under(folder: Path) -> list[Path]:
    """Image files in ``folder`` and its sub-folders, linked ones included (hidden files and
    folders skipped; a folder reached twice is read once), sorted."""
    files, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree, or a second link to one folder
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [
            Path(root, name)
            for name in names
            if not name.startswith(".")
            and Path(name).suffix.lower() in IMAGE_SUFFIXES
            and Path(root, name).is_file()
        ]
    return sorted(files)


def load_crop_dataset(
    data_dirs: list[Path],
    *,
    size: int,
    scale: float,
    classes: list[str] | None = None,
    ignore_unknown: bool = False,
    workers: int = 2,
) -> CropDataset:
    """Read and prepare every labelled crop of the data folders (see :func:`prepare_crop_files`)."""
    found = find_crop_dataset(data_dirs, classes, ignore_unknown=ignore_unknown)
    return with_images(found, size=size, scale=scale, workers=workers)


def find_crop_dataset(
    data_dirs: list[Path], classes: list[str] | None = None, *, ignore_unknown: bool = False
) -> CropDataset:
    """The labelled crops of the data folders, their images not read yet (None)."""
    data_dirs = [Path(d) for d in data_dirs]
    found, names = find_labelled_files(data_dirs, classes, ignore_unknown=ignore_unknown)
    return CropDataset(
        images=None,
        labels=np.array([names.index(c) for _, c, _ in found], dtype=np.int64),
        classes=names,
        sources=np.array([source_id(f, data_dirs[d]) for f, _, d in found]),
        domains=np.array([d for _, _, d in found], dtype=np.int64),
        files=np.array([str(f) for f, _, _ in found]),
    )


def with_images(
    dataset: CropDataset,
    *,
    size: int,
    scale: float,
    workers: int = 2,
    stop_requested: Callable[[], bool] | None = None,
    min_contrast: int = 0,
) -> CropDataset:
    """``dataset`` with its files read and cropped (see :func:`prepare_crop_files`)."""
    images = prepare_crop_files(
        list(dataset.files),
        size=size,
        scale=scale,
        workers=workers,
        stop_requested=stop_requested,
        min_contrast=min_contrast,
    )
    return replace(dataset, images=images)


def prepare_crop_files(
    files: list[Path],
    *,
    size: int,
    scale: float,
    workers: int = 2,
    stop_requested: Callable[[], bool] | None = None,
    min_contrast: int = 0,
) -> np.ndarray:
    """Read single-cell images and crop them as ``analyze`` would: (N, size, size, 3) uint8.

    ``min_contrast``: a crop spanning fewer grey levels is unusable (training passes
    :data:`MIN_CROP_CONTRAST`; classifying a blank crop is the user's choice).

    Every file is tried; files that cannot be used (unreadable, constant …) are listed
    together in one :class:`DatasetError`. ``stop_requested()`` is asked after every
    image: when true, the images not started are dropped, the worker processes end, and
    :class:`LoadingStopped` is raised.
    """
    jobs = [(str(f), size, scale, min_contrast) for f in files]
    stop_requested = stop_requested or (lambda: False)
    results = []
    if workers > 1 and len(jobs) > 64:
        pool = _worker_pool(workers)
        try:
            for result in pool.map(_prepare_file, jobs, chunksize=32):
                results.append(result)
                if stop_requested():
                    raise LoadingStopped
        finally:  # on an error or a stop too: no worker outlives the call
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        for job in jobs:
            results.append(_prepare_file(job))
            if stop_requested():
                raise LoadingStopped
    problems = [result for result in results if isinstance(result, str)]
    if problems:
        listed = "; ".join(problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        raise DatasetError(
            f"{len(problems)} of {len(jobs)} files cannot be used as single-cell crops "
            f"(move or fix them): {listed}{f'; and {more} more' if more > 0 else ''}"
        )
    return np.stack(results) if results else np.zeros((0, size, size, 3), dtype=np.uint8)


def _worker_pool(workers: int) -> Executor:
    """Forked worker processes on Linux (quick, and a script needs no main guard), else
    threads: once TensorFlow is loaded (forking a process with TensorFlow's threads running
    can deadlock the child), and on macOS and Windows, whose processes are spawned (a
    script without the main guard broke the pool); as fast here."""
    if "tensorflow" in sys.modules or not sys.platform.startswith("linux"):
        return ThreadPoolExecutor(workers)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


MAX_LISTED_PROBLEMS = 5
"""How many unusable files :func:`prepare_crop_files` names in its error."""


class LoadingStopped(Exception):
    """Reading crop files was stopped on request (:func:`prepare_crop_files`)."""


def source_id(path: Path, data_dir: Path) -> str:
    """The source image a crop file came from (see module docstring)."""
    return f"{folder_name(data_dir)}/{source_name(path)}"


def source_name(path: Path) -> str:
    """The name of the source image a crop file came from, without its folder."""
    return path.stem.split(SOURCE_SEPARATOR)[0]


def folder_name(data_dir: Path) -> str:
    """The name a data folder is recorded by (``.`` is the current folder's name)."""
    return Path(data_dir).resolve().name


CROP_IMAGES = "a crop must be a grey or RGB(A) image of one cell, e.g. a PNG"

MIN_CROP_CONTRAST = 32
"""Grey levels (of 255) a normalised training crop must span: a blank image with a speck
became an all-black crop (every PBC and BCCD crop spans all 255)."""


def _prepare_file(job: tuple[str, int, float, int]) -> np.ndarray | str:
    """One file's crop (size, size, 3) uint8, or what makes the file unusable."""
    from ..crops import as_bytes, crop_single_cell_image
    from ..errors import BloodcellError
    from ..reading import VaryingAlphaError, read_image

    path, size, scale, min_contrast = job
    try:
        try:
            stack = read_image(path).data
        except VaryingAlphaError:  # a cut-out cell: its transparent part is slide background
            rgba = read_image(path, axes="YXC").data
            stack = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])  # over white
        if len(stack) > 1:
            return f"{path}: holds {len(stack)} frames; a crop is one image (one file per cell)"
        frame = stack[0]
        if frame.shape[-1] not in (1, 3):
            return f"{path}: {frame.shape[-1]} channels; {CROP_IMAGES}"
        if frame.shape[-1] == 1:
            frame = np.repeat(frame, 3, axis=-1)
        crop = crop_single_cell_image(frame, size=size, scale=scale)
    except BloodcellError as exc:
        message = str(exc) if path in str(exc) else f"{path}: {exc}"
        return f"{message} ({CROP_IMAGES})" if "give them explicitly" in message else message
    crop = as_bytes(crop)
    if int(crop.max()) - int(crop.min()) < min_contrast:
        return f"{path}: nearly uniform (no cell left after colour normalisation)"
    return crop


def split_by_source(
    dataset: CropDataset,
    fractions: tuple[float, float],
    seed: int,
    trained_elsewhere: frozenset[int] = frozenset(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split item indices into train / validation / test by source image, per class.

    ``fractions`` = (validation, test) share of the sources of each class (by the
    class of the source's first item; see :func:`sources_set_aside` for small classes).
    Every class keeps training items: a class whose crops all come from sources drawn for
    validation or test (frames counted under another class's first item) gets one of its
    sources, drawn, back for training — but the classes of ``trained_elsewhere`` (labels
    with training crops outside ``dataset``, e.g. those a model fine-tuned from learnt),
    which keep no source back: one source goes to validation, more may all be set aside.
    Seeded; no source is in two parts, and sources of one name in several data folders go
    to the same part.
    """
    rng = np.random.default_rng(seed)
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
        keep = int(label) not in trained_elsewhere
        n_val, n_test = sources_set_aside(len(members), *fractions, keep_one_to_train=keep)
        part_of_unit[members[:n_val]] = 1
        part_of_unit[members[n_val : n_val + n_test]] = 2
    part_of_name = part_of_unit[np.argsort(unit_names)]  # aligned with unique_names
    part = part_of_name[np.searchsorted(unique_names, names)]
    for label in np.unique(dataset.labels):
        of_class = dataset.labels == label
        if int(label) not in trained_elsewhere and not (part[of_class] == 0).any():
            part[names == rng.choice(np.unique(names[of_class]))] = 0
    return tuple(np.flatnonzero(part == k) for k in range(3))


def sources_set_aside(
    n_sources: int,
    validation_fraction: float,
    test_fraction: float,
    *,
    keep_one_to_train: bool = True,
) -> tuple[int, int]:
    """How many of a class's ``n_sources`` source images go to validation and to test:
    the rounded fractions, but at least one to validation from 2 sources, at least one to
    test (when asked for) from 4, and always at least one left to train on (of the sources
    counted under this class; :func:`split_by_source` sees to classes counted under none).
    Without ``keep_one_to_train`` (a class trained on elsewhere) one source is enough for
    validation and none need be left."""
    kept = 1 if keep_one_to_train else 0
    n_val = round(validation_fraction * n_sources)
    n_test = round(test_fraction * n_sources)
    if n_sources >= 1 + kept and validation_fraction > 0:
        n_val = max(n_val, 1)
    if n_sources >= 4 and test_fraction > 0:
        n_test = max(n_test, 1)
    n_val = min(n_val, max(n_sources - kept, 0))
    n_test = min(n_test, max(n_sources - kept - n_val, 0))
    return n_val, n_test


SPLIT_RECORD_KEYS = (
    "data_dirs",
    "data_dir_names",
    "train_sources",
    "validation_sources",
    "test_sources",
)
"""The keys of a model's training record that say which images it learnt from."""
SPLIT_PARTS = ("other", "test", "validation", "train")
"""Parts of a model's split, from never learnt from to learnt from."""


def split_records(training: dict) -> list[dict]:
    """The split records of a model's ``training`` record: its own, then those of the
    models it was fine-tuned from (``base_models``). Each has ``data_dir_names``,
    ``validation_sources``, ``test_sources`` and, for models of version ≥ 6,
    ``train_sources``; ``legacy`` marks records of older versions, whose source ids use
    the folder's name as given (``.`` → "")."""
    records = []
    for record in [training, *training.get("base_models", [])]:
        legacy = "data_dir_names" not in record
        names = [Path(d).name for d in record.get("data_dirs", [])] if legacy else None
        records.append(
            {
                "data_dir_names": record.get("data_dir_names", names),
                "validation_sources": record.get("validation_sources", []),
                "test_sources": record.get("test_sources", []),
                "train_sources": record.get("train_sources"),
                "legacy": legacy,
            }
        )
    return records


def missing_training_folders(training: dict, data_dirs: list[Path]) -> set[str]:
    """Names of the folders a model's own ``training`` record names that ``data_dirs`` lack."""
    record = split_records(training)[0]
    given = {recorded_folder_name(d, record) for d in data_dirs}
    return set(record["data_dir_names"]) - given


def recorded_folder_name(data_dir: Path, record: dict) -> str:
    """The name a split record knows ``data_dir`` by (see :func:`split_records`)."""
    return Path(data_dir).name if record["legacy"] else folder_name(data_dir)


def parts_in_model_split(
    found: list[tuple[Path, str, int]],
    data_dirs: list[Path],
    training: dict,
    *,
    with_base_models: bool = True,
) -> np.ndarray:
    """For each ``(file, class, domain)`` of :func:`find_labelled_files`, the part of the
    model's split it was in — ``"train"``, ``"validation"``, ``"test"`` — or ``"other"``.

    A data folder is one the model (or a model it was fine-tuned from) was trained on when
    it has that folder's name and holds at least one of its recorded sources (so an
    unrelated folder of the same name is "other"); its images are then matched by source
    id. An image of such a folder that is in none of the recorded parts was added after
    training ("other"), except for models of version ≤ 5, which record no training
    sources ("train"). Across a model and its base models (unless not
    ``with_base_models``) the most learnt part counts.
    """
    rank = np.zeros(len(found), dtype=np.int64)  # index into SPLIT_PARTS
    domains = np.array([d for _, _, d in found], dtype=np.int64)
    records = split_records(training)
    for record in records if with_base_models else records[:1]:
        parts = {
            name: set(record[f"{name}_sources"] or ()) for name in ("train", "validation", "test")
        }
        recorded = set().union(*parts.values())
        for domain, data_dir in enumerate(map(Path, data_dirs)):
            name = recorded_folder_name(data_dir, record)
            members = np.flatnonzero(domains == domain)
            if name not in record["data_dir_names"] or not len(members):
                continue
            sources = [f"{name}/{source_name(found[i][0])}" for i in members]
            if recorded.isdisjoint(sources):
                continue  # another folder of that name
            for item, source in zip(members, sources, strict=True):
                part = next((k for k, v in parts.items() if source in v), None)
                if part is None:
                    part = "train" if record["train_sources"] is None else "other"
                rank[item] = max(rank[item], SPLIT_PARTS.index(part))
    return np.array(SPLIT_PARTS, dtype=object)[rank]


def learnt_source_names(training: dict) -> set[str]:
    """Source names (without folder) of the training and validation images of a model and
    of the models it was fine-tuned from: images of other folders with such a name may be
    crops of frames it learnt from (the split keeps one name's crops together), or share
    the name by chance."""
    return {
        source.split("/", 1)[-1]
        for record in split_records(training)
        for part in ("train", "validation")
        for source in record[f"{part}_sources"] or ()
    }
