"""What the widgets share: the classifier worker processes, model choices, adding or
updating layers, plots, the legend, table export and the base of the analysis widgets."""

from __future__ import annotations

import atexit
import warnings
import weakref
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import replace
from functools import partial, wraps
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
)
from pandas import CategoricalDtype
from psygnal import Signal

from ..classification.model_files import (
    DEFAULT_MODEL_NAME,
    packaged_models_dir,
    read_metadata,
    resolve_model_path,
    user_models_dir,
)
from ..classification.remote import RemoteClassifier
from ..errors import BloodcellError, InputImageError
from ..pipeline import AnalysisSettings
from ..segmentation import PIXEL_SIZE_RANGE_UM
from ._compute import (
    NO_CHANNEL,
    AnalysisJob,
    Failure,
    ImageLayout,
    calibrated_frame_interval_s,
    calibrated_pixel_size_um,
    channel_mapping,
    check_channels,
    guarded,
    image_layout,
)
from ._layers import (
    HAND_ADDED_LABEL,
    METADATA_KEY,
    cells_table,
    layer_key,
    legend_html,
    transform_of,
)
from ._writer import export_table

NO_MODEL = "none (segmentation only)"
PIXEL_SIZE_DECIMALS = 4
"""Digits of the pixel size field (µm per pixel; 100× objectives give ~0.03–0.07)."""
THRESHOLD_DECIMALS = 3
"""Digits of the uncertain-below field (a model's threshold of 0.375 must not show as 0.38)."""


class SharedClassifiers:
    """One :class:`RemoteClassifier` (one TensorFlow worker process) per model file,
    shared by every widget using that model and closed when none uses it any more."""

    def __init__(self) -> None:
        self._classifiers: dict[tuple[str, int], RemoteClassifier] = {}
        self._users: dict[tuple[str, int], set[str]] = {}

    def acquire(self, user: str, model: str) -> RemoteClassifier:
        """The classifier of ``model`` for ``user`` (who then holds no other model)."""
        path = resolve_model_path(model)
        key = (str(path.resolve()), path.stat().st_mtime_ns)  # a retrained file is a new model
        self.release(user, keep=key)
        if key not in self._classifiers:
            self._classifiers[key] = RemoteClassifier(path)
        self._users.setdefault(key, set()).add(user)
        return self._classifiers[key]

    def release(self, user: str, keep: tuple[str, int] | None = None) -> None:
        """Drop ``user``'s hold on every model but ``keep``; close unused classifiers."""
        for key in list(self._users):
            if key != keep:
                self._users[key].discard(user)
            if not self._users[key]:
                del self._users[key]
                self._classifiers.pop(key).close()

    def users(self) -> set[str]:
        """Who holds a classifier now."""
        return set().union(*self._users.values()) if self._users else set()

    def close_all(self) -> None:
        for classifier in self._classifiers.values():
            classifier.close()
        self._classifiers.clear()
        self._users.clear()


CLASSIFIERS = SharedClassifiers()
atexit.register(CLASSIFIERS.close_all)


class _ModelEvents:
    """Emitted when a model is added to the user models folder (e.g. after training)."""

    changed = Signal()


MODEL_EVENTS = _ModelEvents()


def model_choices(_widget=None) -> list[tuple[str, str | None]]:
    """The packaged default model (if installed), the user's models, and no model."""
    names = []
    if (packaged_models_dir() / f"{DEFAULT_MODEL_NAME}.keras").is_file():
        names.append(DEFAULT_MODEL_NAME)
    folder = user_models_dir()
    if folder.is_dir():
        names += sorted(
            p.stem
            for p in folder.glob("*.keras")
            if not p.name.startswith(".") and p.stem != DEFAULT_MODEL_NAME  # never saved so
        )
    return [(name, name) for name in names] + [(NO_MODEL, None)]


def unproxied(obj):
    """The napari object behind the proxy napari gives plugin widgets.

    A widget opened from the Plugins menu gets a ``PublicOnlyProxy`` of the viewer, and
    everything reached through it (``viewer.layers``, each layer, ``add_layer``'s result) is
    a new proxy at every access: identity checks and the weak registries of result layers
    below need the layer itself (a registered proxy died at once, so every run added new
    layers instead of updating its own)."""
    return getattr(obj, "__wrapped__", obj)


def upsert_layers(viewer, layer_data: list[tuple]) -> list:
    """Add the layers, or update the layers of the same plugin key in place (no duplicates).

    ``viewer``: the napari viewer itself, not a plugin's proxy of it (see :func:`unproxied`).
    If adding fails half-way, the layers added by this call are removed again.
    """
    from napari.layers import Layer

    layers, added = [], []
    try:
        for data, meta, layer_type in layer_data:
            key = layer_key(meta["metadata"])
            existing = next(
                (
                    layer
                    for layer in viewer.layers
                    if layer in _RESULT_LAYERS  # not a duplicate, which copies the key
                    and layer_key(layer.metadata) == key
                    and layer._type_string == layer_type
                    and layer.ndim == len(meta["scale"])
                ),
                None,
            )
            if existing is not None and _features_edited(existing):
                adopt_layer(existing)
                existing = None
            if existing is None:
                settings = {k: v for k, v in meta.items() if k not in _SET_AFTER_CREATION}
                existing = viewer.add_layer(Layer.create(data, settings, layer_type))
                for attribute in _SET_AFTER_CREATION.intersection(meta):
                    setattr(existing, attribute, meta[attribute])
                watch_user_edits(existing)
                _RESULT_LAYERS.add(existing)
                added.append(existing)
            else:
                _update_layer(existing, data, meta)
            if hasattr(existing, "features"):
                _FEATURES_AS_SHOWN[existing] = existing.features.copy()
            layers.append(existing)
    except Exception:
        for layer in added:
            viewer.layers.remove(layer)
        raise
    return layers


_SET_AFTER_CREATION = {"contour"}  # display settings layer constructors do not take

_UPDATED_ATTRIBUTES = (
    "scale",
    "translate",
    "units",
    "rotate",
    "shear",
    "affine",
    "metadata",
    "features",
    "colormaps_dict",
    "color_by",
    "colormap",
    "face_color_cycle",
    "face_color",
    "border_color",
    "border_width",
    "size",
)


def own_layers(viewer, keys: set[str]) -> list:
    """The result layers this plugin made whose key is in ``keys`` (not duplicates, not
    layers handed to the user)."""
    return [
        layer
        for layer in viewer.layers
        if layer in _RESULT_LAYERS and layer_key(layer.metadata) in keys
    ]


def _update_layer(layer, data, meta: dict) -> None:
    """New data and display settings for an existing layer (its name stays the user's)."""
    _UPDATING.add(layer)
    try:
        with warnings.catch_warnings():
            # Tracks drop their features with new data until ``features`` is set below
            warnings.filterwarnings("ignore", message="Previous color_by key")
            layer.data = data
        for attribute in _UPDATED_ATTRIBUTES:
            if attribute in meta:
                setattr(layer, attribute, meta[attribute])
    finally:
        _UPDATING.discard(layer)


_RESULT_LAYERS: weakref.WeakSet = weakref.WeakSet()
"""The result layers this plugin made (and watches for edits)."""

_UPDATING: weakref.WeakSet = weakref.WeakSet()
"""Result layers whose data the plugin is replacing now (their data events are not edits)."""

_FEATURES_AS_SHOWN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Each result layer's ``features`` as the plugin last set them."""


def _features_edited(layer) -> bool:
    """Whether the user changed the layer's ``features`` in place since the plugin set them
    (napari's features table widget edits without an event)."""
    shown = _FEATURES_AS_SHOWN.get(layer)
    return shown is not None and not layer.features.equals(shown)


def watch_user_edits(layer) -> None:
    """Hand a result layer to the user once they edit it — paint or erase its labels, add,
    delete or move its points: the next run then adds new layers instead of replacing
    their work (:func:`adopt_layer`)."""
    from napari.layers import Labels, Points

    if isinstance(layer, Labels):
        layer.events.paint.connect(_on_edit)
    elif isinstance(layer, Points):
        layer.events.data.connect(_on_edit)
        layer.events.data.connect(_mark_added_points)


def _mark_added_points(event) -> None:
    """Give the rows of points added by hand the label :data:`HAND_ADDED_LABEL`: napari
    copies the selected point's row (or, in a layer without points, blank values) into a new
    point's features, a deleted cell's row too, which :func:`cells_table` could not tell
    from the cell's own."""
    layer = event.source
    if layer in _UPDATING or str(getattr(event, "action", "")) != "added":
        return
    if "label" in layer.features and len(layer.data):
        rows = np.asarray(event.data_indices, dtype=int) % len(layer.data)
        layer.features.iloc[rows, layer.features.columns.get_loc("label")] = HAND_ADDED_LABEL


def _on_edit(event) -> None:
    layer = event.source
    action = str(getattr(event, "action", "painted"))
    if layer not in _UPDATING and action in ("painted", "added", "removed", "changed"):
        adopt_layer(layer)


def adopt_layer(layer) -> None:
    """Drop the plugin key of a result layer (keeping its parameters for export): no run
    updates it any more."""
    from napari.utils.notifications import show_info

    if release_layer(layer):
        show_info(
            f"{layer.name!r} was edited by hand and is yours now: a new run adds new result "
            f"layers and leaves it as it is"
        )


def check_image_layer(layer) -> None:
    """Refuse anything but a single-scale image layer."""
    from napari.layers import Image

    if layer is None:
        raise InputImageError("no image layer selected: open an image first")
    if not isinstance(layer, Image):
        raise InputImageError(
            f"layer {layer.name!r} is a {type(layer).__name__} layer; choose an image layer"
        )
    if layer.multiscale:
        raise InputImageError(f"layer {layer.name!r} is multiscale; open one resolution level")


class PlotCanvas:
    """A small matplotlib figure (FigureCanvas) to embed in a dock widget."""

    def __init__(self, xlabel: str, ylabel: str, height_in: float = 2.2):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.5, height_in), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(int(height_in * 60))
        self.axes = self.figure.add_subplot()
        self._labels = (xlabel, ylabel)
        self.plot({})

    def plot(self, series: dict[str, tuple[np.ndarray, np.ndarray, str | None]]) -> None:
        """Redraw with one line per name: ``(x, y, colour)``."""
        from matplotlib.ticker import MaxNLocator

        self.axes.clear()
        for name, (x, y, colour) in series.items():
            self.axes.plot(x, y, marker=".", label=name, color=colour)
        self.axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # frames, epochs: no 2.5
        self.axes.set_xlabel(self._labels[0])
        self.axes.set_ylabel(self._labels[1])
        if series:
            self.axes.legend(fontsize="x-small")
        self.canvas.draw()


MIN_CHANNEL_CHOICES = 8
"""Channels 0–7 are offered at least (also when the image's channel count is unknown); a
channel the image does not have is refused, with its channel count, when a run starts."""


def channel_choices(n_channels: int | None) -> list[tuple[str, int | None]]:
    """The choices: default, none and each channel of an image of ``n_channels`` channels
    (None: unknown), at least :data:`MIN_CHANNEL_CHOICES`."""
    n = max(n_channels or 0, MIN_CHANNEL_CHOICES)
    return [("default", None), ("none", NO_CHANNEL)] + [(str(i), i) for i in range(n)]


def while_open(handler):
    """A worker-signal handler (method) that does nothing once its widget is closed
    (``self._state["closed"]``): results arriving after napari closed must not touch the
    deleted viewer and buttons (PyQt aborts on an error in a slot outside napari)."""

    @wraps(handler)
    def handler_while_open(self, *args):
        if self._state.get("closed"):
            return None
        return handler(self, *args)

    return handler_while_open


class AnalysisWidget(Container):
    """Base of the Analyze and Batch widgets: inputs, run / cancel in a ``thread_worker``,
    results as layers (added or updated), legend and table export.

    Subclasses implement :meth:`_steps` and :meth:`_apply`.
    """

    keep_results_after_cancel = False
    cells_role = "cells"
    """The role in the key of the cells layer of a result (see ``layer_metadata``)."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        napari_viewer = unproxied(napari_viewer)  # its layers themselves (see unproxied)
        self._viewer = napari_viewer
        self._owner = f"{type(self).__name__}-{id(self)}"
        self._state: dict = {"worker": None, "cancelled": False, "failed": False, "summary": ""}
        self._cells_layer = None
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.axes = LineEdit(
            label="axes", value="", tooltip="axis order of the layer data, e.g. YXC, TYXC or "
            "TCYX; empty = inferred (RGB layers: (T)YXC)",
        )  # fmt: skip
        self.modality = ComboBox(label="modality", choices=["auto", "smear", "fluorescence"])
        self.leukocyte_channel = ComboBox(label="leukocyte channel", choices=self._channels)
        self.platelet_channel = ComboBox(label="platelet channel", choices=self._channels)
        self.model = ComboBox(label="model", choices=model_choices)
        refresh_when_opened(self.model)
        self.pixel_size = FloatSpinBox(
            label="pixel size (µm)", value=0.0, min=0.0, max=100.0, step=0.01,
            tooltip="µm per pixel; 0 = the image layer's scale when its units are lengths "
            "(e.g. µm), else unknown: the scale of BCCD's frames for smears, of flowcatchR's "
            "for fluorescence",
        )  # fmt: skip
        self.pixel_size.native.setDecimals(PIXEL_SIZE_DECIMALS)  # 0.065 µm must not become 0.07
        self.uncertain_threshold = FloatSpinBox(
            label="uncertain below", value=0.5, min=0.0, max=1.0, step=0.05,
            tooltip="confidence below which a cell's class is 'uncertain' (the model's own "
            "threshold unless you change it)",
        )  # fmt: skip
        self.uncertain_threshold.native.setDecimals(THRESHOLD_DECIMALS)
        self._threshold_edited = False  # else runs use the model file's own threshold
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)  # "finished: 20/20 frames, 697 cells (empty …"
        self.legend = Label(value="")
        self.export_file = FileEdit(label="table file", mode="w", filter="Tables (*.csv *.parquet)")
        self.export_button = PushButton(text="Export table")
        self.extend(
            [
                self.image,
                self.axes,
                self.modality,
                self.leukocyte_channel,
                self.platelet_channel,
                self.model,
                self.pixel_size,
                self.uncertain_threshold,
                self.run_button,
                self.cancel_button,
                self.status,
                self.legend,
                self.export_file,
                self.export_button,
            ]
        )
        self.model.changed.connect(self._on_model_changed)
        self.image.changed.connect(self._reset_channel_choices)
        self.axes.changed.connect(self._reset_channel_choices)
        self.uncertain_threshold.changed.connect(self._on_threshold_edited)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(self.export)
        signals = (
            napari_viewer.layers.events.inserted,
            napari_viewer.layers.events.removed,
            napari_viewer.layers.events.renamed,
            MODEL_EVENTS.changed,
        )
        connections = [(signal, self.reset_choices) for signal in signals]
        connections.append((napari_viewer.layers.events.removed, self._cancel_if_image_removed))
        for signal, callback in connections:
            signal.connect(callback)
        closing = partial(_stop_and_release, self._owner, self._state, connections)
        self.native.destroyed.connect(closing)
        self._dock_watcher = DockWatcher(self.native, closing)
        self._on_model_changed(self.model.value)

    # ------------------------------------------------------------------ inputs

    def reset_choices(self, *_args) -> None:
        """Refresh the lists (image layers, models), each in its order and keeping its choice
        while it is offered: magicgui keeps the old items and appends new ones ("none" was
        no longer the last model) and a renamed layer is a new item (the choice was lost)."""
        for widget in self:
            if isinstance(widget, ComboBox):
                _rebuild_choices(widget)

    def _image_layers(self, _widget=None) -> list:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _channels(self, _widget=None) -> list[tuple[str, int | None]]:
        """The channel choices for the chosen image layer and axes."""
        layer, n_channels = self.image.value, None
        with suppress(BloodcellError):  # axes unknown or unusable: a run says why
            if layer is not None:
                n_channels = image_layout(layer.data.shape, layer.rgb, self.axes.value).n_channels
        return channel_choices(n_channels)

    def _reset_channel_choices(self, *_args) -> None:
        for combo in (self.leukocyte_channel, self.platelet_channel):
            _rebuild_choices(combo)

    def _on_model_changed(self, model: str | None) -> None:
        if model is None:
            return
        try:
            self._show_model_threshold(read_metadata(resolve_model_path(model)).uncertain_threshold)
        except BloodcellError as exc:
            self._show_error(str(exc))

    def _on_threshold_edited(self, _value: float) -> None:
        self._threshold_edited = True

    def _show_model_threshold(self, threshold: float) -> None:
        """Show a model's own threshold, which runs then use (until the user edits it)."""
        with self.uncertain_threshold.changed.blocked():
            self.uncertain_threshold.value = threshold
        self._threshold_edited = False

    def settings(self, n_channels: int) -> AnalysisSettings:
        """The analysis settings for an image of ``n_channels`` channels."""
        choices = {
            "leukocyte": self.leukocyte_channel.value,
            "platelet": self.platelet_channel.value,
        }
        return AnalysisSettings(
            modality=self.modality.value,
            channels=channel_mapping(choices, n_channels),
            pixel_size_um=self.pixel_size.value or None,
            # None: the model file's own, exact and read again when the file is rewritten
            uncertain_threshold=self.uncertain_threshold.value if self._threshold_edited else None,
        )

    def job(self) -> AnalysisJob:
        """The analysis request from the current inputs (raises BloodcellError if unusable)."""
        layer = self.image.value
        check_image_layer(layer)
        layout: ImageLayout = image_layout(layer.data.shape, layer.rgb, self.axes.value)
        settings = self.settings(layout.n_channels)
        if settings.pixel_size_um is None:  # the field left at 0: the layer's calibration
            calibrated = calibrated_pixel_size_um(layout, layer.scale, layer.units)
            try:
                settings = replace(settings, pixel_size_um=calibrated)
            except InputImageError:
                low, high = PIXEL_SIZE_RANGE_UM
                raise InputImageError(
                    f"layer {layer.name!r}: its scale gives {calibrated:g} µm per pixel, not "
                    f"a microscope's ({low:g}–{high:g} µm): enter the pixel size (µm)"
                ) from None
        check_channels(settings, layout)
        classifier = None
        if self.model.value is not None:
            classifier = CLASSIFIERS.acquire(self._owner, self.model.value)
            if not self._threshold_edited:  # the file may have been recalibrated since
                self._show_model_threshold(classifier.metadata.uncertain_threshold)
        else:  # no TensorFlow worker kept for a model this widget no longer uses
            CLASSIFIERS.release(self._owner)
        return AnalysisJob(
            data=layer.data,
            layout=layout,
            settings=settings,
            classifier=classifier,
            source=layer.name,
            image_id=str(layer.unique_id),
            scale=tuple(layer.scale),
            translate=tuple(layer.translate),
            transform=transform_of(layer),
            frame_interval_s=calibrated_frame_interval_s(layout, layer.scale, layer.units),
        )

    # ------------------------------------------------------------------ running

    def _steps(self, job: AnalysisJob) -> tuple[Iterator, int]:
        """The generator to run and its number of yields (0: unknown)."""
        raise NotImplementedError

    def _apply(self, item) -> None:
        """Show one yielded result in the viewer."""
        raise NotImplementedError

    @property
    def worker(self):
        return self._state["worker"]

    def run(self) -> None:
        """Check the inputs and start the analysis in a worker thread."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            return
        try:
            job = self.job()
            steps, total = self._steps(job)
        except BloodcellError as exc:
            self._show_error(str(exc))
            return
        worker = create_worker(
            guarded,
            steps,
            _progress={"total": total, "desc": f"napari-bloodcell: {type(self).__name__}"},
            _start_thread=False,
        )
        worker.yielded.connect(self._on_yielded)
        worker.finished.connect(self._on_finished)
        self._state.update(worker=worker, cancelled=False, failed=False, summary="")
        # Export (and a batch's Track) act on this run's result, or on none
        self._state.update(image_id=job.image_id, image_removed=False)
        self._cells_layer, self.legend.value = None, ""
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "running…"
        worker.start()

    def cancel(self) -> None:
        """Stop after the current frame."""
        if self.worker is not None:
            self._state["cancelled"] = True
            self.status.value = "cancelling…"
            self.worker.quit()

    def _cancel_if_image_removed(self, event) -> None:
        """Stop the analysis of an image layer the user removed (its results would be
        added for an image no longer there)."""
        from napari.utils.notifications import show_info

        if self.worker is not None and str(event.value.unique_id) == self._state["image_id"]:
            show_info(f"{event.value.name!r} was removed: its analysis is cancelled")
            self._state["image_removed"] = True  # a batch shows no more (Analyze: cancelled)
            self.cancel()

    def _keep_earlier_result(self) -> None:
        """After a run that showed no result of its own (it failed or was cancelled before
        its first), or a re-run whose earlier result is kept: Export (and Track) act on the
        earlier result of the same image again, if the plugin's cells layer is still there."""
        key = f"{self.cells_role}:{self._state['image_id']}"
        for layer in own_layers(self._viewer, {key}):
            cell_class = layer.features.get("cell_class")
            if cell_class is None:  # its table edited by hand: Export says what is missing
                self._cells_layer = layer
                continue
            categorical = isinstance(cell_class.dtype, CategoricalDtype)
            classes = list(cell_class.cat.categories) if categorical else []
            self._cells_layer, self.legend.value = layer, legend_html(layer.features, classes)

    @while_open
    def _on_yielded(self, item) -> None:
        if isinstance(item, Failure):
            self._state["failed"] = True
            self._show_error(item.message)
        elif self.keep_results_after_cancel or not self._state["cancelled"]:
            self._apply(item)

    @while_open
    def _on_finished(self) -> None:
        self._state["worker"] = None
        if self._cells_layer is None:
            self._keep_earlier_result()
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        if self._state["failed"]:  # the results of the frames before the failure stay
            outcome = "failed (see the notification)"
        else:
            outcome = "cancelled" if self._state["cancelled"] else "finished"
            self._warn_if_novel()
        self.status.value = f"{outcome}: {self._state['summary'] or 'no results'}"

    def _warn_if_novel(self) -> None:
        """Warn when many cells look unlike the model's training images (another microscope)."""
        from napari.utils.notifications import show_warning

        from ..classification.novelty import novelty_warning, white_cell_novelty

        if self._cells_layer is not None:
            features = self._cells_layer.features
            message = novelty_warning(white_cell_novelty(features), "white cells")
            if message:
                show_warning(message)

    def _show_layers(
        self, layer_data: list[tuple], table, model_classes: list[str], summary: str
    ) -> None:
        layers = upsert_layers(self._viewer, layer_data)
        self._state["summary"] = summary
        self.status.value = summary
        self._cells_layer = layers[-1]
        self.legend.value = legend_html(table, model_classes)

    def _show_error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.value = "error (see notification)"
        show_error(message)

    # ------------------------------------------------------------------ export

    def export(self) -> bool:
        """Write the cells table of the last result (never over an existing file); whether
        it was written."""
        from napari.utils.notifications import show_info, show_warning

        layer = self._cells_layer
        if layer is None or layer not in self._viewer.layers:
            show_warning("no results to export yet: run the analysis first")
            return False
        path = Path(self.export_file.value)
        if path.suffix.lower() not in (".csv", ".parquet") or path.name in ("", "."):
            show_warning("choose a table file name ending in .csv or .parquet")
            return False
        parameters = layer.metadata.get(METADATA_KEY, {}).get("parameters", {})
        try:
            table = cells_table(layer.data, layer.features, layer.metadata)
            written = export_table(path, table, parameters)
        except BloodcellError as exc:
            show_warning(str(exc))
            return False
        except OSError as exc:  # no permission, disk full, name too long …
            show_warning(f"cannot write the table to {path}: {exc.strerror or exc}")
            return False
        show_info(f"wrote {', '.join(p.name for p in written)} to {written[0].parent}")
        return True


def _rebuild_choices(combo: ComboBox) -> None:
    """Set ``combo``'s choices afresh, in their order, keeping its value if still offered
    (``changed`` is emitted only when the value changed)."""
    value = combo.value
    with combo.changed.blocked():
        combo.choices = ()
        combo.reset_choices()
        if value in combo.choices:
            combo.value = value
    if combo.value != value:
        combo.changed.emit(combo.value)


def refresh_when_opened(combo: ComboBox) -> None:
    """Read ``combo``'s choices afresh whenever the user opens it (a click, or a key while it
    has the focus): a model saved meanwhile by ``napari-bloodcell train`` in a terminal, or
    by another napari, is listed (it appeared only after some other event)."""
    from qtpy.QtCore import QEvent, QObject

    opening = (QEvent.Type.MouseButtonPress, QEvent.Type.KeyPress)

    class Filter(QObject):
        def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
            if event.type() in opening:
                _rebuild_choices(combo)
            return False

    combo.native.installEventFilter(Filter(combo.native))  # (kept alive by its parent)


def release_layer(layer) -> bool:
    """Drop the plugin key of a result layer, so that no run updates it; whether it had one."""
    own = layer.metadata.get(METADATA_KEY, {})
    if "key" not in own:
        return False
    layer.metadata = {**layer.metadata, METADATA_KEY: {k: v for k, v in own.items() if k != "key"}}
    return True


class DockWatcher:
    """Calls ``on_close`` when the dock widget holding ``widget`` is destroyed.

    napari's close button (×) removes and deletes the dock widget but only takes the inner
    widget out of it, alive while anything refers to it — as a running worker's signals
    do: a batch went on to its last frame with no Cancel button left, and the widget's
    classifier process was kept until napari ended."""

    def __init__(self, widget, on_close) -> None:
        from qtpy.QtCore import QEvent, QObject

        watched = (QEvent.Type.ParentChange, QEvent.Type.Show)
        docks = weakref.WeakSet()

        class Filter(QObject):
            def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
                if event.type() in watched:
                    dock = _dock_of(obj)
                    if dock is not None and dock not in docks:
                        docks.add(dock)
                        dock.destroyed.connect(on_close)
                return False

        self._filter = Filter(widget)
        widget.installEventFilter(self._filter)


def _dock_of(widget):
    """The QDockWidget holding ``widget`` (also inside a scroll area), or None."""
    from qtpy.QtWidgets import QDockWidget

    parent = widget.parent()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    return parent


def _stop_and_release(owner: str, state: dict, connections: list, *_args) -> None:
    """When a widget is destroyed: stop its workers (the analysis and a batch's tracking;
    their results are dropped), let it hand its layers over (``state["on_close"]``, if
    any), disconnect it from the viewer and model events, and release its classifier
    processes."""
    if state.get("closed"):  # the dock widget went first (see DockWatcher)
        return
    state["closed"] = True
    for worker in (state["worker"], state.get("track_worker")):
        if worker is not None:
            worker.quit()
    if "on_close" in state:
        state["on_close"]()
    for signal, callback in connections:
        _disconnect(signal, callback)
    CLASSIFIERS.release(owner)


def _disconnect(signal, callback) -> None:
    """``signal.disconnect(callback)``, also for an emitter of a viewer already torn down
    (its ``_callbacks`` gone): an undocked widget can outlive its viewer."""
    try:
        signal.disconnect(callback)
    except AttributeError as exc:
        if exc.name != "_callbacks":
            raise
