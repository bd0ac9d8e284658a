"""The computations behind the widgets, without Qt: generators that yield progress and
results, and plain functions that run them to the end (what the tests call).

Like stardist-napari: the widget wraps a generator in ``thread_worker`` and handles its
yields; expected failures arrive as :class:`Failure` yields (shown as a notification),
never as tracebacks; an unexpected exception too (its traceback goes to the log), so a
widget stays usable whatever a frame does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, partial

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import BloodcellError, InputImageError
from ..pipeline import AnalysisSettings, analyze_frame, concat_tables
from ..reading import (
    check_frame_pixels,
    image_from_array,
    infer_axes,
    lazy_image_from_array,
    normalise_axes,
)
from ._label_frames import CompressedLabelFrames, LabelFramesView
from ._layers import Placement, all_classes, class_ids, class_label_image, result_layers


@dataclass(frozen=True)
class ImageLayout:
    """Axes of an image layer's data (e.g. ``"YXC"``, ``"TYX"``, ``"TCYX"``) and its shape."""

    axes: str
    shape: tuple[int, ...]
    rgb: bool = False
    typed: bool = False
    """Whether the user typed the axes (then a varying 4th channel is a channel)."""

    @property
    def n_frames(self) -> int:
        return self.shape[self.axes.index("T")] if "T" in self.axes else 1

    @property
    def n_channels(self) -> int:
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[self.axes.index("Y")], self.shape[self.axes.index("X")]

    @property
    def layer_axes(self) -> str:
        """Axes that napari gives a scale to (all but the colour axis of an RGB layer)."""
        return self.axes[:-1] if self.rgb else self.axes

    def placement(
        self,
        scale,
        translate,
        letters: str,
        frame: int | None = None,
        transform: dict | None = None,
    ) -> Placement:
        """Scale / translate of the layer for outputs with axes ``letters`` (``"TYX"`` or
        ``"YX"``, of ``frame``): the layer's other axes become size-1 extra axes of the
        outputs (see :class:`Placement`) — a channel axis stretched over the channels, the
        time axis placed at ``frame``, a singleton axis as it is; the layer's ``transform``
        (units, rotation …) applies as it is."""
        scale = [float(s) for s in scale]
        transform = dict(transform or {})
        extra = tuple(i for i, a in enumerate(self.layer_axes) if a not in letters)
        shift = np.zeros(len(scale))  # where the outputs' plane 0 sits, in scaled units
        for i in extra:
            if self.layer_axes[i] == "C":  # one plane centred on, and as wide as, all channels
                shift[i] = (self.n_channels - 1) / 2 * scale[i]
                scale[i] *= self.n_channels
            elif self.layer_axes[i] == "T" and frame is not None:
                shift[i] = frame * scale[i]
        # napari rotates and shears scaled coordinates before translating them
        shift = rotation_and_shear(transform, len(scale)) @ shift
        translate = np.asarray(translate, dtype=float) + shift
        return Placement(tuple(scale), tuple(translate.tolist()), extra, transform)


def calibrated_pixel_size_um(layout: ImageLayout, scale, units) -> float | None:
    """µm per pixel from an image layer's Y and X ``scale`` when their ``units`` (pint
    units, as napari's ``layer.units``) are lengths, else None (napari's default unit,
    pixel, is no length). Raises :class:`InputImageError` for pixels that are not square,
    as for a file's calibration."""
    height, width = (
        _calibrated_step(layout, scale, units, axis, "[length]", "micrometer") for axis in "YX"
    )
    if height is None or width is None:
        return None
    width, height = abs(width), abs(height)  # a negative scale flips the layer
    if abs(width - height) > 0.01 * width:
        raise InputImageError(
            f"the layer's pixels are {width:g} µm wide and {height:g} µm high (its scale); "
            f"lengths and areas in µm need square pixels"
        )
    return width


def calibrated_frame_interval_s(layout: ImageLayout, scale, units) -> float | None:
    """Seconds between frames from an image layer's T ``scale`` when its unit is a time
    (e.g. a stack opened with its time calibration), else None; a negative scale (a
    flipped time axis) counts as its size."""
    interval = _calibrated_step(layout, scale, units, "T", "[time]", "second")
    return abs(interval) if interval is not None else None


def _calibrated_step(layout: ImageLayout, scale, units, axis: str, dimension: str, unit_name):
    """The layer's ``scale`` along ``axis`` in ``unit_name`` when its unit has the
    ``dimension`` (pint's, e.g. ``"[length]"``), else None."""
    axes = layout.layer_axes
    if units is None or axis not in axes:
        return None
    unit = units[axes.index(axis)]
    if str(unit.dimensionality) != dimension:
        return None
    return float((scale[axes.index(axis)] * unit).to(unit_name).magnitude)


def rotation_and_shear(transform: dict, ndim: int) -> np.ndarray:
    """The (D, D) linear part napari applies between a layer's scale and its translate:
    ``rotate`` · ``shear`` of ``transform`` (layer arguments of a D-axis layer)."""
    from napari.utils.transforms import Affine

    linear = {name: transform[name] for name in ("rotate", "shear") if name in transform}
    return Affine(ndim=ndim, **linear).linear_matrix


def image_layout(shape: tuple[int, ...], rgb: bool, axes: str = "") -> ImageLayout:
    """The layout of layer data of ``shape``: from ``axes`` if given, else inferred.

    An RGB layer's last axis is its colour axis. Raises :class:`InputImageError` with a
    hint to give the axes when the shape is ambiguous.
    """
    shape = tuple(int(s) for s in shape)
    axes = typed_axes = axes.strip()
    if axes:
        axes = normalise_axes(axes, len(shape))
        if rgb and axes[-1] != "C":
            raise InputImageError(
                f"axes {axes!r}: this is an RGB layer, its last axis is the colour axis (C)"
            )
        check_output_order(axes, rgb)
    elif rgb:
        if len(shape) not in (3, 4):
            raise InputImageError(
                f"an RGB layer of shape {shape}: expected (Y, X, C) or (T, Y, X, C); "
                f"give the axes explicitly"
            )
        axes = "YXC" if len(shape) == 3 else "TYXC"
    else:
        try:
            axes = infer_axes(shape)
        except InputImageError as exc:
            raise InputImageError(f"{exc} in the Axes field") from None
    deep = [a for a, n in zip(axes, shape, strict=True) if a not in "TYXC" and n > 1]
    if deep:
        raise InputImageError(
            f"axes {axes!r}: the {deep[0]} axis has {shape[axes.index(deep[0])]} planes; "
            f"napari-bloodcell analyses 2-D frames over time (T, Y, X and C; other axes of "
            f"size 1 only)"
        )
    layout = ImageLayout(axes, shape, rgb, typed=bool(typed_axes))
    check_frame_pixels(*layout.frame_shape)  # before any frame is read
    return layout


OUTPUT_ORDER = "TYX"
"""The order of the outputs' axes, which napari lines up with the image's axes in order."""


def check_output_order(axes: str, rgb: bool) -> None:
    """Refuse typed ``axes`` whose T, Y and X are not in that order (other axes may sit
    anywhere): the result layers would land on the wrong axes of the image. The message
    shows how to add the layer again with its axes reordered."""
    slots = [i for i, a in enumerate(axes) if a in OUTPUT_ORDER]
    ordered = sorted(slots, key=lambda i: OUTPUT_ORDER.index(axes[i]))
    if ordered == slots:
        return
    order = list(range(len(axes)))
    for slot, i in zip(slots, ordered, strict=True):
        order[slot] = i
    fixed = "".join(axes[i] for i in order)
    raise InputImageError(
        f"axes {axes!r}: the time, row and column axes must come in the order T, Y, X "
        f"(the result layers line up with the image in that order); add the layer again "
        f"with its axes reordered, e.g. viewer.add_image(np.transpose(layer.data, "
        f"{tuple(order)}){', rgb=True' if rgb else ''}), and give the axes {fixed!r}"
    )


def read_frame(data, layout: ImageLayout, t: int = 0, source: str = "<array>") -> np.ndarray | None:
    """Frame ``t`` as float32 (Y, X, C) in [0, 1], or None for a constant (empty) frame.

    A frame of a stack gets the stack's intensity mapping, as in a batch (from the same
    bounded sample of frames, see :func:`~napari_bloodcell.reading.lazy_image_from_array`),
    so that it is segmented as the batch segments it; dask-backed data stay lazy.
    """
    index = tuple(t if a == "T" else slice(None) for a in layout.axes)
    raw = np.asarray(data[index])
    if raw.size and raw.min() == raw.max():
        return None
    frame_axes = layout.axes.replace("T", "")
    alone = partial(
        image_from_array,
        raw,
        axes=frame_axes,
        source=source,
        channels_named=layout.typed,
        colour=layout.rgb,
    )
    if "T" not in layout.axes:
        return alone().data[0]
    try:
        stack = lazy_image_from_array(
            data, layout.axes, source=source, channels_named=layout.typed, colour=layout.rgb
        ).data
    except InputImageError:  # the stack's frame sample is unusable (NaN in another frame …)
        return alone().data[0]  # this frame on its own terms (a batch would refuse the stack)
    return np.asarray(stack[t].compute(scheduler="sync"))


NO_CHANNEL = -1
"""A channel choice meaning: leave this cell type out."""


def channel_mapping(choices: dict[str, int | None], n_channels: int) -> dict[str, int] | None:
    """Cell role → channel from the widgets' choices for an image of ``n_channels`` channels.

    A choice is None ("default": the role's default channel, see
    :func:`~napari_bloodcell.segmentation.fluorescence.default_channels`),
    :data:`NO_CHANNEL` ("none": the role is left out) or a channel index. A role left at
    "default" whose default channel was chosen for the other role takes the channel the
    other role's default leaves free (the defaults swap), so that two roles never share a
    channel unasked. None when every choice is "default" (the pipeline's own defaults);
    refused when every role is left out.
    """
    from ..segmentation.fluorescence import default_channels

    if all(choice is None for choice in choices.values()):
        return None
    defaults = default_channels(n_channels)
    chosen = {role: c for role, c in choices.items() if c is not None and c != NO_CHANNEL}
    channels = dict(chosen)
    for role, choice in choices.items():
        if choice is not None or role not in defaults:
            continue
        channel = defaults[role]
        if channel in chosen.values():
            freed = [defaults[r] for r in chosen if defaults.get(r) not in (None, *chosen.values())]
            if not freed:
                raise InputImageError(
                    f"the {role} channel is left at 'default' ({channel}), the channel chosen "
                    f"for another cell type; choose the {role} channel too"
                )
            channel = freed[0]
        channels[role] = channel
    if not channels:
        raise InputImageError(
            "no cell type is left to segment: choose a channel (or 'default') for the "
            "leukocytes or the platelets"
        )
    return channels


def check_channels(settings: AnalysisSettings, layout: ImageLayout) -> None:
    """Refuse a channel mapping that names a channel the image does not have."""
    for role, index in (settings.channels or {}).items():
        if not 0 <= index < layout.n_channels:
            raise InputImageError(
                f"the {role} channel is {index} but the image has {layout.n_channels} "
                f"channel(s) (0–{layout.n_channels - 1})"
            )


def run_parameters(
    settings: AnalysisSettings, classifier, source: str, layout: ImageLayout
) -> dict:
    """What a run used, for the layers' metadata and the exported table's sidecar JSON
    (the model file as chosen and the calibration behind its confidences included)."""
    model = None
    threshold = settings.uncertain_threshold
    if classifier is not None:
        meta = classifier.metadata
        modified_ns, size_bytes = classifier.stamp
        model = {
            "name": classifier.name,
            "version": meta.version,
            "path": str(classifier.path),
            "file_modified_ns": int(modified_ns),
            "file_size_bytes": int(size_bytes),
            "classes": list(meta.classes),
            "temperature": float(meta.temperature),
            "test_time_views": int(meta.test_time_views),
            "uncertain_threshold": float(meta.uncertain_threshold),
        }
        threshold = meta.uncertain_threshold if threshold is None else threshold
    return {
        "napari_bloodcell_version": __version__,
        "source": source,
        "axes": layout.axes,
        "modality": settings.modality,
        "channels": dict(settings.channels) if settings.channels else None,
        "pixel_size_um": settings.pixel_size_um,
        "uncertain_threshold": threshold,
        "model": model,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@dataclass(frozen=True)
class Failure:
    """An expected error (bad input, model problem) to show as a notification."""

    message: str


@dataclass(frozen=True)
class StackProgress:
    """Results of the first ``frames_done`` of ``n_frames`` frames.

    Cheap to make after every frame: the label stacks are views of compressed frame
    stores, and the table and layer data are only assembled when asked for (the widget
    asks at most a few times per second).
    """

    frames_done: int
    n_frames: int
    frame_tables: tuple[pd.DataFrame, ...]  # in frame order; older frames merged in blocks
    instances: LabelFramesView
    classes_image: LabelFramesView
    model_classes: list[str]
    source: str
    image_id: str
    placement: Placement
    parameters: dict
    empty_frames: list[int] = field(default_factory=list)

    @cached_property
    def table(self) -> pd.DataFrame:
        return concat_tables(list(self.frame_tables))

    @cached_property
    def layers(self) -> list[tuple]:
        return result_layers(
            self.instances,
            self.classes_image,
            self.table,
            model_classes=self.model_classes,
            source=self.source,
            image_id=self.image_id,
            placement=self.placement,
            parameters=self.parameters,
            role_prefix="stack-",
        )


def guarded(steps: Iterator) -> Iterator:
    """Re-yield ``steps``, turning a :class:`BloodcellError` into a final :class:`Failure`,
    and any other exception too (a bug: its traceback is logged)."""
    try:
        yield from steps
    except BloodcellError as exc:
        yield Failure(str(exc))
    except Exception as exc:
        logging.getLogger(__name__).exception("napari-bloodcell: unexpected error")
        yield Failure(f"unexpected {type(exc).__name__} ({exc}); please report this bug")


@dataclass
class AnalysisJob:
    """One analysis request: the image data and how to analyse it."""

    data: object
    layout: ImageLayout
    settings: AnalysisSettings
    classifier: object
    source: str
    image_id: str
    """The image layer's ``unique_id`` (as text): the key of its result layers, which no
    other image, of the same name or not, updates."""
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    transform: dict = field(default_factory=dict)
    """The layer's units, rotation, shear and affine (see :func:`._layers.transform_of`)."""
    frame_interval_s: float | None = None
    """Seconds between frames, from the layer's calibration (None: unknown)."""

    @property
    def model_classes(self) -> list[str]:
        return list(self.classifier.classes) if self.classifier is not None else []

    def parameters(self) -> dict:
        parameters = run_parameters(self.settings, self.classifier, self.source, self.layout)
        return {**parameters, "frame_interval_s": self.frame_interval_s}

    def empty_result(self, t: int):
        """Analysis of an all-zero frame: no cells, the right columns."""
        shape = (*self.layout.frame_shape, self.layout.n_channels)
        return self.analyze(np.zeros(shape, np.float32), t)

    def analyze(self, frame: np.ndarray, t: int):
        return analyze_frame(
            frame, self.classifier, self.settings, frame_index=t, source=self.source
        )


def frame_steps(job: AnalysisJob, t: int) -> Iterator[list[tuple] | Failure]:
    """Analyse frame ``t``; yield its layer data (Y, X layers), or a :class:`Failure`."""
    frame = read_frame(job.data, job.layout, t, source=job.source)
    if frame is None:
        yield Failure(f"{job.source}: frame {t} is empty (constant): nothing to segment")
        return
    result = job.analyze(frame, t)
    classes = all_classes(result.table, job.model_classes)
    yield result_layers(
        result.labels,
        class_label_image(result.labels, result.table, class_ids(classes)),
        result.table,
        model_classes=job.model_classes,
        source=job.source,
        image_id=job.image_id,
        placement=job.layout.placement(
            job.scale, job.translate, "YX", frame=t, transform=job.transform
        ),
        parameters=job.parameters(),
    )


def stack_steps(job: AnalysisJob) -> Iterator[StackProgress]:
    """Analyse a stack frame by frame, yielding after each frame the results so far.

    The label stacks are filled in place and each yield shows only the finished frames
    (``labels[:frames_done]``), so a stop between frames leaves consistent layers.
    A stack without a time axis is refused at once (before any frame is read).
    """
    if "T" not in job.layout.axes:
        raise InputImageError(
            f"{job.source}: the image has no time axis (axes {job.layout.axes}); "
            f"use the Analyze widget for single frames"
        )
    return _stack_steps(job)


TABLE_BLOCK_FRAMES = 64
"""Frames whose tables a batch merges into one as it goes: a redraw of a 2,000-frame batch
concatenated 2,000 tables on the viewer's thread (0.2–1 s), now ~32 plus the last few."""


MAX_BYTES_PER_READ = 256 * 2**20
"""The most a Batch reads at once (bytes of normalised float32 frames)."""


def _frames_per_read(job: AnalysisJob) -> int:
    """How many frames of ``job``'s data to read at once: those stored together in one
    chunk (chunked data: dask, Zarr; a Zarr chunk of 10 frames was decompressed once per
    frame), within :data:`MAX_BYTES_PER_READ`; 1 for data in memory."""
    chunks = getattr(job.data, "chunks", None)
    if chunks is None:
        return 1
    along_t = chunks[job.layout.axes.index("T")]
    stored_together = max(along_t) if isinstance(along_t, tuple) else int(along_t)
    height, width = job.layout.frame_shape
    frame_bytes = height * width * max(job.layout.n_channels, 3 if job.layout.rgb else 1) * 4
    return max(1, min(int(stored_together), MAX_BYTES_PER_READ // frame_bytes))


def _frames(stack, per_read: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(t, frame)`` of a lazy (T, Y, X, C) stack, ``per_read`` frames computed at once."""
    for start in range(0, stack.shape[0], per_read):
        block = np.asarray(stack[start : start + per_read].compute(scheduler="sync"))
        yield from enumerate(block, start=start)


def _stack_steps(job: AnalysisJob) -> Iterator[StackProgress]:
    n = job.layout.n_frames
    instances = CompressedLabelFrames(job.layout.frame_shape, np.uint32)
    classes_image = CompressedLabelFrames(job.layout.frame_shape, np.uint8)
    blocks: list[pd.DataFrame] = []  # the tables of every TABLE_BLOCK_FRAMES frames, merged
    recent: list[pd.DataFrame] = []  # … and of the frames since
    empty: list[int] = []
    parameters = job.parameters()
    placement = job.layout.placement(job.scale, job.translate, "TYX", transform=job.transform)
    seen_classes: list[str] = list(job.model_classes)
    # one intensity mapping for the whole stack, from a bounded frame sample (as the CLI)
    stack = lazy_image_from_array(
        job.data,
        job.layout.axes,
        source=job.source,
        channels_named=job.layout.typed,
        colour=job.layout.rgb,
    ).data
    for t, frame in _frames(stack, _frames_per_read(job)):
        if frame.min() == frame.max():
            empty.append(t)
            result = job.empty_result(t)
        else:
            result = job.analyze(frame, t)
        recent.append(result.table)
        if len(recent) == TABLE_BLOCK_FRAMES:  # here, in the worker: the viewer's redraws
            blocks.append(concat_tables(recent))  # concatenate few tables, not one per frame
            recent = []
        seen_classes = all_classes(result.table, seen_classes)
        instances.append(result.labels)
        classes_image.append(
            class_label_image(result.labels, result.table, class_ids(seen_classes))
        )
        yield StackProgress(
            frames_done=t + 1,
            n_frames=n,
            frame_tables=(*blocks, *recent),
            instances=instances.view(t + 1),
            classes_image=classes_image.view(t + 1),
            model_classes=seen_classes,
            source=job.source,
            image_id=job.image_id,
            placement=placement,
            parameters={**parameters, "frames": t + 1, "n_frames": n},
            empty_frames=list(empty),
        )


def run_to_end(steps: Iterator):
    """Run a generator of steps to its end and return the last item (tests, scripts)."""
    last = None
    for last in guarded(steps):
        if isinstance(last, Failure):
            raise BloodcellError(last.message)
    return last
