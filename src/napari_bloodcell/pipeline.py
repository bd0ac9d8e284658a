"""The whole pipeline on one frame or a stack: segment → crop → classify → table.

Functions here take canonical arrays (see :mod:`napari_bloodcell.reading`) and
return label images and the per-cell table (:mod:`napari_bloodcell.table`). The
CLI and the napari widgets call them; nothing here knows about files or Qt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._checks import is_real
from .classes import is_platelet_name
from .classification.inference import plausible_class_mask
from .crops import as_bytes, crop_cells
from .errors import InputImageError
from .segmentation import (
    MODALITIES,
    Segmentation,
    check_one_role_per_channel,
    check_pixel_size,
    checked_frame,
    segment_frame,
)
from .table import BASE_COLUMNS, add_physical_units, cell_columns

CNN_CELL_TYPES = ("wbc", "platelet")
"""Cell types whose class comes from the CNN on smears; red cells are labelled ``rbc``."""


@dataclass
class AnalysisSettings:
    """How to analyse frames.

    modality : ``"auto"``, ``"smear"`` or ``"fluorescence"``.
    channels : fluorescence only, cell role → channel index, e.g.
        ``{"neutrophil": 1, "platelet": 0}``. A role named ``platelet`` (or another of
        :data:`~napari_bloodcell.classes.PLATELET_NAMES`) is segmented as platelets, any
        other role as leukocytes (one such role at most); the role name, lower-cased,
        becomes ``cell_class``.
    pixel_size_um : µm per pixel, or None (the modality's reference pixel size: that of
        the BCCD frames for smears, of the flowcatchR frames for fluorescence).
    uncertain_threshold : confidence below which ``cell_class`` is ``"uncertain"``
        (None: the model's own threshold).
    """

    modality: str = "auto"
    channels: Mapping[str, int] | None = None
    pixel_size_um: float | None = None
    uncertain_threshold: float | None = None

    def __post_init__(self) -> None:
        """Refuse (:class:`InputImageError`) settings no frame can be analysed with."""
        if self.modality not in ("auto", *MODALITIES):
            raise InputImageError(
                f"unknown modality {self.modality!r}; expected 'auto', 'smear' or 'fluorescence'"
            )
        for role, index in (self.channels or {}).items():
            if not isinstance(role, str) or not _is_whole(index) or index < 0:
                raise InputImageError(
                    f"channels map a role name to a channel index (an integer >= 0), e.g. "
                    f"{{'neutrophil': 1, 'platelet': 0}}; got {role!r}: {index!r}"
                )
        check_one_role_per_channel(self.channels or {})
        _segmentation_channels(self.channels)  # one leukocyte and one platelet role at most
        check_pixel_size(self.pixel_size_um)
        threshold = self.uncertain_threshold
        if threshold is not None and not (is_real(threshold) and 0 <= threshold <= 1):
            raise InputImageError(
                f"uncertain_threshold is a probability in [0, 1] or None, got {threshold!r}"
            )


def _is_whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass
class FrameResult:
    """Result of one frame: (Y, X) uint32 labels, its table rows, the modality used, seconds."""

    labels: np.ndarray
    table: pd.DataFrame
    modality: str
    seconds: float


def analyze_frame(
    frame: np.ndarray,
    classifier=None,
    settings: AnalysisSettings | None = None,
    *,
    frame_index: int = 0,
    source: str = "",
) -> FrameResult:
    """Segment and classify one (Y, X, C) float frame in [0, 1].

    ``classifier`` is a :class:`~napari_bloodcell.classification.inference.CellClassifier`
    (or anything with ``classes``, ``input_size``, ``crop_scale`` and ``classify``);
    None skips the CNN (``cell_class`` then repeats ``cell_type``).
    """
    settings = settings or AnalysisSettings()
    started = time.perf_counter()
    frame = checked_frame(frame)  # float32: crops are cut from it too
    try:
        segmentation = segment_frame(
            frame,
            settings.modality,
            channels=_segmentation_channels(settings.channels),
            pixel_size_um=settings.pixel_size_um,
        )
    except InputImageError as exc:
        missing = _missing_channel_error(settings.channels, frame.shape[2])
        if missing is None:
            raise
        raise missing from exc
    classes = list(classifier.classes) if classifier is not None else []
    table = _cells_table(segmentation, classes, source, frame_index)
    if segmentation.modality == "fluorescence":
        table["cell_class"] = _fluorescence_classes(segmentation, settings.channels)
    elif classifier is not None:
        _classify_into(table, frame, segmentation, classifier, settings.uncertain_threshold)
    table = add_physical_units(table, settings.pixel_size_um)
    return FrameResult(
        segmentation.labels, table, segmentation.modality, time.perf_counter() - started
    )


def iter_analyze_stack(
    stack,
    classifier=None,
    settings: AnalysisSettings | None = None,
    *,
    source: str = "",
    first_frame: int = 0,
) -> Iterator[FrameResult]:
    """Analyse a (T, Y, X, C) stack frame by frame, yielding each :class:`FrameResult`.

    ``stack`` is a numpy or dask array; a dask stack is computed one frame at a time
    (in this thread), so memory stays bounded by a frame whatever the stack's length.
    ``first_frame`` is the index of ``stack[0]`` in its whole stack (for the table's
    ``frame`` column when ``stack`` is a chunk). Being a generator, the caller can
    report progress or stop between frames.
    """
    if stack.ndim != 4:
        raise InputImageError(
            f"{source or 'stack'}: expected (T, Y, X, C), got shape {stack.shape}"
        )
    for t in range(stack.shape[0]):
        yield analyze_frame(
            _computed_frame(stack, t),
            classifier,
            settings,
            frame_index=first_frame + t,
            source=source,
        )


def _computed_frame(stack, t: int) -> np.ndarray:
    """Frame ``t`` of a numpy or dask stack as a numpy array."""
    frame = stack[t]
    if hasattr(frame, "compute"):  # dask: compute only this frame, here, not on a cluster
        return np.asarray(frame.compute(scheduler="sync"))
    return np.asarray(frame)


def analyze_stack(stack, classifier=None, settings=None, *, source: str = ""):
    """Analyse a (T, Y, X, C) stack: returns (T, Y, X) uint32 labels and the table of all frames."""
    results = list(iter_analyze_stack(stack, classifier, settings, source=source))
    if not results:  # a stack of 0 frames
        return np.zeros((0, *stack.shape[1:3]), dtype=np.uint32), concat_tables([])
    labels = np.stack([r.labels for r in results])
    return labels, concat_tables([r.table for r in results])


def concat_tables(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-frame tables, keeping columns and dtypes when some are empty."""
    non_empty = [t for t in tables if len(t)]
    if not non_empty:
        return tables[0].iloc[0:0] if tables else pd.DataFrame(columns=BASE_COLUMNS)
    return pd.concat(non_empty, ignore_index=True)


def _cells_table(
    segmentation: Segmentation, classes: list[str], source: str, frame_index: int
) -> pd.DataFrame:
    cells = segmentation.cells
    table = pd.DataFrame(
        {
            "source": pd.Series([source] * len(cells), dtype=object),
            "frame": np.full(len(cells), frame_index, dtype=np.int64),
        }
    )
    for column in BASE_COLUMNS[2:]:
        if column in cells:
            table[column] = cells[column].to_numpy()
    table["cell_class"] = cells["cell_type"].to_numpy().astype(object)
    table["confidence"] = np.nan
    table["novelty"] = np.nan
    for name in classes:
        table[f"p_{name}"] = np.nan
    return table[cell_columns(classes)]


def _classify_into(table, frame, segmentation, classifier, uncertain_threshold) -> None:
    """Classify WBC and platelet objects with the CNN, writing class columns in place;
    objects of a type none of the model's classes fits (platelets, for a model of white
    cells only) keep their segmented type as class, like red cells."""
    cell_types = table["cell_type"]
    chosen = np.flatnonzero(
        cell_types.isin(CNN_CELL_TYPES).to_numpy()
        & plausible_class_mask(cell_types, classifier.classes).any(axis=1)
    )
    if len(chosen) == 0:
        return
    cells = segmentation.cells.iloc[chosen]
    crops = crop_cells(
        frame[..., :3],
        cells[["centroid_y", "centroid_x"]].to_numpy(),
        cells["crop_diameter_px"].to_numpy(),
        size=classifier.input_size,
        scale=classifier.crop_scale,
    )
    decided = classifier.classify(as_bytes(crops), uncertain_threshold, cells["cell_type"])
    for column in decided.columns:
        table.loc[table.index[chosen], column] = decided[column].to_numpy()


def _segmentation_channels(channels: Mapping[str, int] | None) -> dict[str, int] | None:
    """User roles (``neutrophil``, ``platelet`` …) → segmentation roles (leukocyte/platelet);
    :class:`InputImageError` when two user roles are segmented alike."""
    if channels is None:
        return None
    mapped: dict[str, int] = {}
    user_role: dict[str, str] = {}
    for role, index in channels.items():
        key = "platelet" if is_platelet_name(role) else "leukocyte"
        if key in mapped:
            raise InputImageError(
                f"channel roles {user_role[key]!r} and {role!r} are both {key}s (a role "
                f"named platelet, platelets, thrombocyte(s) or plt is segmented as "
                f"platelets, any other as leukocytes); "
                f"give one leukocyte role and at most one platelet role"
            )
        mapped[key], user_role[key] = int(index), role
    return mapped


def _missing_channel_error(
    channels: Mapping[str, int] | None, n_channels: int
) -> InputImageError | None:
    """The error naming the user's role whose channel index a frame of ``n_channels``
    channels does not have, or None when every index fits."""
    for role, index in (channels or {}).items():
        if index >= n_channels:
            return InputImageError(
                f"channel {index} of role {role!r} is out of range: the frame has "
                f"{n_channels} channel(s), 0 to {n_channels - 1}"
            )
    return None


def _fluorescence_classes(segmentation: Segmentation, channels: Mapping[str, int] | None):
    """In fluorescence the channel role is the class (e.g. ``neutrophil``, ``platelet``)."""
    leukocyte_role = "leukocyte"
    for role in channels or {}:
        if not is_platelet_name(role):
            leukocyte_role = role.lower()
    return np.where(
        segmentation.cells["cell_type"] == "platelet", "platelet", leukocyte_role
    ).astype(object)
