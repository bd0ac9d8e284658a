"""The Batch widget: analyse every frame of a time-lapse, frame by frame, cancellable."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from functools import partial

import numpy as np
from magicgui.widgets import FloatSpinBox, PushButton

from ..errors import BloodcellError
from ..table import frame_counts
from ._compute import AnalysisJob, StackProgress, stack_steps
from ._layers import (
    METADATA_KEY,
    all_classes,
    cells_table,
    class_colours,
    placement_of,
    stack_keys,
    tracks_key,
    tracks_layers,
)
from ._widgets_common import (
    AnalysisWidget,
    PlotCanvas,
    own_layers,
    release_layer,
    upsert_layers,
    while_open,
)

RUNNING = "running"
"""Marks the layers of a re-run until it finishes (the earlier result's stay as they are)."""


class BatchWidget(AnalysisWidget):
    """Analyse a T × Y × X (× C) image layer (also dask-backed) into T × Y × X label layers
    and a points layer with a ``frame`` column; a plot shows cells per class and frame.

    Cancelling keeps the finished frames: the layers then hold exactly those frames. A
    re-run of an image with result layers writes into new layers, ``… (running)``, until
    it finishes: then it updates the earlier result's layers; cancelled or failed, it
    leaves them as they were (its own layers stay, ``… (cancelled run)``).
    **Track cells** links the cells of the result over frames (``tracking.track_table``)
    into a Tracks layer coloured by track class; the tracking tables are exported next to
    the cells table.
    """

    keep_results_after_cancel = True
    cells_role = "stack-cells"
    display_interval_s = 0.5
    """Results are shown at most this often (and when the batch ends or is cancelled):
    building the layers and the plot costs more the longer the table grows."""
    redraw_spacing = 4.0
    """A redraw is followed by at least this many times its own duration without one, so
    that a long batch leaves the viewer most of its time however slow its redraws get."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.frame_interval = FloatSpinBox(
            label="frame interval (s)", value=0.0, min=0.0, max=3600.0, step=1.0,
            tooltip="seconds between frames, for speeds in µm/min; 0 = the image layer's time "
            "scale when its unit is a time, else unknown (per frame)",
        )  # fmt: skip
        self.max_speeds = {
            cell: FloatSpinBox(
                label=f"{name} max speed",
                value=0.0,
                min=0.0,
                max=1e6,
                step=1.0,
                tooltip=f"largest speed of a {name} link: µm/min; µm/frame with a pixel size "
                f"but no frame interval, px/min with a frame interval but no pixel size, "
                f"px/frame with neither. 0 = default: {default} µm/min with both, else "
                f"{diameters} per frame. Raise it for cells that flow",
            )  # fmt: skip
            for cell, name, default, diameters in (
                ("wbc", "leukocyte", 50, "1 median leukocyte diameter"),
                ("platelet", "platelet", 5, "0.5 median platelet diameters"),
            )
        }
        self.track_button = PushButton(text="Track cells")
        # tracking before the export: the export writes the tracking tables too
        at = self.index(self.export_file)
        for offset, widget in enumerate(
            [self.frame_interval, *self.max_speeds.values(), self.track_button]
        ):
            self.insert(at + offset, widget)
        self.track_button.clicked.connect(self.track)
        self.tracking = None
        self._tracked_cells = None  # (layer, cells table) the last tracking linked
        self._state["track_worker"] = None  # while cells are being tracked (see track_worker)
        self._latest: StackProgress | None = None  # the run's last result …
        self._shown: StackProgress | None = None  # … and the last one shown
        self._shown_at = -np.inf  # when the last redraw ended …
        self._redraw_gap = 0.0  # … and how long the next waits at least
        self._state["rerun_of"] = None  # the image (id) whose earlier result a run keeps
        self._state["on_close"] = partial(_hand_over_running_layers, self._viewer, self._state)
        self.plot = PlotCanvas("frame", "cells")
        self.native.layout().addWidget(self.plot.canvas)

    @property
    def track_worker(self):
        """The worker tracking cells now (None when not tracking); closing the widget
        stops it, like the batch's."""
        return self._state["track_worker"]

    def run(self) -> None:
        """Start a batch, unless cells are being tracked (their tracks would be taken for
        the new result's)."""
        from napari.utils.notifications import show_warning

        if self.track_worker is not None:
            show_warning("cells are being tracked: run the batch again when tracking has ended")
            return
        super().run()

    def _steps(self, job: AnalysisJob) -> tuple[Iterator, int]:
        steps = stack_steps(job)
        self._latest = self._shown = None
        earlier = own_layers(self._viewer, stack_keys(job.image_id))
        self._state["rerun_of"] = job.image_id if earlier else None
        if not earlier:  # (a re-run forgets the earlier tracking only if it finishes)
            self._forget_tracking(job.image_id)
        elif self._tracked_image_id() != job.image_id:  # another image's: not the kept one's
            self.tracking = self._tracked_cells = None
        return steps, job.layout.n_frames

    def _tracked_image_id(self) -> str | None:
        """The image (id) whose cells the last tracking linked, if any."""
        if self._tracked_cells is None:
            return None
        return self._tracked_cells[0].metadata.get(METADATA_KEY, {}).get("image_id")

    def _forget_tracking(self, image_id: str) -> None:
        """The tracks of an earlier result are not the new result's, nor is their layer."""
        self.tracking = self._tracked_cells = None
        self._release_tracks_layer(image_id)

    def _release_tracks_layer(self, image_id: str) -> None:
        """Keep the tracks layer of image ``image_id``, named ``… (earlier run)``, but never
        update it again (a user's copy of it is not touched)."""
        for layer in own_layers(self._viewer, {tracks_key(image_id)}):
            if release_layer(layer):
                layer.name = f"{layer.name} (earlier run)"

    def _apply(self, item: StackProgress) -> None:
        self._latest = item
        gap = max(self.display_interval_s, self._redraw_gap)
        if time.monotonic() - self._shown_at >= gap:
            self._show(item)

    @while_open
    def _on_finished(self) -> None:
        if self._state["rerun_of"] is not None:
            self._end_rerun()
        elif self._latest is not self._shown:  # the frames finished since the last display
            self._show(self._latest)
        super()._on_finished()

    def _end_rerun(self) -> None:
        """A finished re-run replaces the earlier result (and its tracking) in its layers
        and drops its own; a cancelled or failed one keeps its frames in its own layers,
        handed to the user, and the earlier result keeps its tracking."""
        ended = self._state["cancelled"] or self._state["failed"]
        if ended and self._latest is not self._shown:
            self._show(self._latest)  # into its own layers
        if ended:
            _hand_over_running_layers(
                self._viewer, self._state, "cancelled" if self._state["cancelled"] else "failed"
            )
            summary = self._state["summary"] or "no results"
            self._state["summary"] = f"{summary}; the earlier result is kept"
            self._keep_earlier_result()  # what Export and Track cells act on
            return
        image_id, self._state["rerun_of"] = self._state["rerun_of"], None
        running = own_layers(self._viewer, {running_key(key) for key in stack_keys(image_id)})
        self._forget_tracking(image_id)
        if self._latest is not None:
            self._show(self._latest)  # into the earlier result's layers
        for layer in running:
            self._viewer.layers.remove(layer)

    def _show(self, item: StackProgress) -> None:
        if self._state.get("image_removed"):  # no more results for an image no longer there
            return
        started = time.monotonic()
        classes = all_classes(item.table, item.model_classes)
        summary = f"{item.frames_done}/{item.n_frames} frames, {len(item.table)} cells"
        if item.empty_frames:
            summary += f" (empty frames: {', '.join(map(str, item.empty_frames))})"
        layers = item.layers if self._state["rerun_of"] is None else running_layers(item.layers)
        self._show_layers(layers, item.table, classes, summary)
        self.plot_counts(item.table, classes, item.frames_done)
        self._shown, self._shown_at = item, time.monotonic()
        self._redraw_gap = self.redraw_spacing * (self._shown_at - started)

    def plot_counts(self, table, classes: list[str], n_frames: int) -> None:
        """Cells per class and frame of the first ``n_frames`` (a frame without cells: 0)."""
        counts = frame_counts(table, n_frames)
        colours = class_colours(classes)
        self.plot.plot(
            {
                name: (counts.index.to_numpy(), counts[name].to_numpy(), colours.get(name))
                for name in counts.columns
                if np.any(counts[name])
            }
        )

    def track(self) -> None:
        """Link the cells of the last batch result into tracks in a worker thread (napari
        stays responsive) and show them as a Tracks layer when done."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_warning

        from ..tracking import TrackingParams, track_table

        layer = self._cells_layer
        if self.track_worker is not None:
            return
        if self.worker is not None:
            show_warning("the batch is still running: track its cells when it has finished")
            return
        if layer is None or layer not in self._viewer.layers or not len(layer.features):
            show_warning("no cells to track yet: run the batch first")
            return
        try:
            table = cells_table(layer.data, layer.features, layer.metadata)
        except BloodcellError as exc:
            self._show_error(f"cannot track {layer.name!r}: {exc}")
            return
        own = layer.metadata.get(METADATA_KEY, {})
        parameters = own.get("parameters", {})
        image_id = own.get("image_id", str(layer.unique_id))  # metadata replaced by hand
        placement = placement_of(layer)
        worker = create_worker(
            track_table,
            table,
            parameters.get("pixel_size_um"),
            self.frame_interval.value or parameters.get("frame_interval_s"),
            TrackingParams(
                **{f"{cell}_max_speed": box.value or None for cell, box in self.max_speeds.items()}
            ),
            _progress={"desc": "napari-bloodcell: tracking"},
            _start_thread=False,
            _connect={  # an "errored" handler of ours: superqt re-raises errors otherwise
                "returned": partial(
                    self._show_tracks, placement, parameters, image_id, layer, table
                ),
                "errored": self._tracking_failed,
                "finished": self._tracking_finished,
            },
        )
        self._state["track_worker"] = worker
        self.track_button.enabled = False
        self.status.value = "tracking…"
        worker.start()

    @while_open
    def _show_tracks(
        self, placement, parameters: dict, image_id: str, cells, table, result
    ) -> None:
        source = parameters.get("source", cells.name)
        if result.tracks.empty:  # napari cannot make a Tracks layer without points
            self._release_tracks_layer(image_id)  # not this tracking's tracks
            self.tracking, self._tracked_cells = result, (cells, table)  # empty tables
            self.status.value = "no leukocytes or platelets to track"
            return
        try:
            layer_data = tracks_layers(result.tracks, source, image_id, placement, parameters)
            upsert_layers(self._viewer, layer_data)
        except BloodcellError as exc:
            self._show_error(str(exc))
            return
        self.tracking, self._tracked_cells = result, (cells, table)
        counts = result.summary["track_class"].value_counts()
        by_class = ", ".join(f"{n} {name}" for name, n in counts.items())
        self.status.value = (
            f"{len(result.summary)} tracks ({by_class}), {len(result.interactions)} contact events"
        )

    @while_open
    def _tracking_failed(self, exc: Exception) -> None:
        if not isinstance(exc, BloodcellError):
            logging.getLogger(__name__).error("tracking failed", exc_info=exc)
        self._show_error(f"tracking failed: {exc}")

    @while_open
    def _tracking_finished(self) -> None:
        self._state["track_worker"] = None
        self.track_button.enabled = True

    def export(self) -> bool:
        """The cells table, and the tracking tables (``<table stem>_tracking/``) if tracked;
        the tracking tables only once the cells table is written, never over a folder."""
        from pathlib import Path

        from napari.utils.notifications import show_info, show_warning

        from ..tracking import write_tracking

        tracked = self._tracking_of_shown_cells()
        if tracked is None:
            return super().export()
        table = Path(self.export_file.value)
        folder = table.with_name(f"{table.stem}_tracking") if table.name else None
        if folder is not None and folder.exists():
            show_warning(f"{folder} already exists; nothing written (choose another table name)")
            return False
        if not super().export():
            return False
        try:
            write_tracking(tracked, folder)
        except (BloodcellError, OSError) as exc:
            show_warning(f"the cells table is written, the tracking tables are not: {exc}")
            return False
        show_info(f"wrote the tracking tables to {folder}")
        return True

    def _tracking_of_shown_cells(self):
        """The last tracking result, if the cells layer still holds the cells it linked
        (else None, with a warning: cells edited since are tracked again on demand)."""
        from napari.utils.notifications import show_warning

        if self.tracking is None:
            return None
        cells, table = self._tracked_cells
        try:
            shown = cells_table(cells.data, cells.features, cells.metadata)
        except BloodcellError:
            return None  # the cells table is refused too, with the reason
        if cells is not self._cells_layer or not shown.equals(table):
            show_warning(
                "the cells changed since they were tracked: their tracking tables are not "
                "exported (press Track cells again to export them too)"
            )
            return None
        return self.tracking


def _hand_over_running_layers(viewer, state: dict, outcome: str = "cancelled") -> None:
    """End a re-run that did not finish (``outcome``: cancelled or failed; also when its
    widget closes): its layers, as they are, become the user's, named ``… (<outcome>
    run)``; the earlier result stays as it was. (Left running, a later re-run of the image
    adopted and removed them.)"""
    image_id, state["rerun_of"] = state["rerun_of"], None
    if image_id is None:
        return
    for layer in own_layers(viewer, {running_key(key) for key in stack_keys(image_id)}):
        release_layer(layer)
        layer.name = layer.name.replace(f"({RUNNING})", f"({outcome} run)")


def running_key(key: str) -> str:
    """The key of a running re-run's layer standing for the result layer of ``key``."""
    return f"{RUNNING}-{key}"


def running_layers(layer_data: list[tuple]) -> list[tuple]:
    """The layers of a running re-run: named ``… (running)``, with keys of their own."""
    running = []
    for data, meta, layer_type in layer_data:
        own = meta["metadata"][METADATA_KEY]
        metadata = {METADATA_KEY: {**own, "key": running_key(own["key"])}}
        meta = {**meta, "name": f"{meta['name']} ({RUNNING})", "metadata": metadata}
        running.append((data, meta, layer_type))
    return running
