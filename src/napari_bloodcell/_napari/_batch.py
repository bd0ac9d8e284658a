"""The Batch widget: analyse every frame of a time-lapse, frame by frame, cancellable."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
from magicgui.widgets import FloatSpinBox, PushButton

from ..errors import BloodcellError
from ..table import frame_counts
from ._compute import AnalysisJob, StackProgress, stack_steps
from ._layers import Placement, class_colours, tracks_layers
from ._widgets_common import AnalysisWidget, PlotCanvas, upsert_layers


class BatchWidget(AnalysisWidget):
    """Analyse a T × Y × X (× C) image layer (also dask-backed) into T × Y × X label layers
    and a points layer with a ``frame`` column; a plot shows cells per class and frame.

    Cancelling keeps the finished frames: the layers then hold exactly those frames.
    **Track cells** links the cells of the result over frames (``tracking.track_table``)
    into a Tracks layer coloured by track class; the tracking tables are exported next to
    the cells table.
    """

    keep_results_after_cancel = True
    display_interval_s = 0.5
    """Results are shown at most this often (and when the batch ends or is cancelled):
    building the layers and the plot costs more the longer the table grows."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.frame_interval = FloatSpinBox(
            label="frame interval (s)", value=0.0, min=0.0, max=3600.0, step=1.0,
            tooltip="seconds between frames, for speeds in µm/min; 0 = unknown (per frame)",
        )  # fmt: skip
        self.track_button = PushButton(text="Track cells")
        self.extend([self.frame_interval, self.track_button])
        self.track_button.clicked.connect(self.track)
        self.tracking = None
        self._channel_axis: int | None = None  # of the last result's layers (see Placement)
        self._latest: StackProgress | None = None
        self._shown_at = -np.inf
        self.plot = PlotCanvas("frame", "cells")
        self.native.layout().addWidget(self.plot.canvas)

    def _steps(self, job: AnalysisJob) -> tuple[Iterator, int]:
        self.tracking = None  # the tracks of an earlier result are not this run's
        return stack_steps(job), job.layout.n_frames

    def _apply(self, item: StackProgress) -> None:
        self._latest = item
        if time.monotonic() - self._shown_at >= self.display_interval_s:
            self._show(item)

    def _on_finished(self) -> None:
        if self._latest is not None:  # the frames finished since the last display
            self._show(self._latest)
        super()._on_finished()

    def _show(self, item: StackProgress) -> None:
        self._latest, self._shown_at = None, time.monotonic()
        self._channel_axis = item.placement.channel_axis
        classes = list(item.layers[-1][1]["face_color_cycle"])
        summary = f"{item.frames_done}/{item.n_frames} frames, {len(item.table)} cells"
        if item.empty_frames:
            summary += f" (empty frames: {', '.join(map(str, item.empty_frames))})"
        self._show_layers(item.layers, item.table, classes, summary)
        self.plot_counts(item.table, classes, item.frames_done)

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
        """Link the cells of the last batch result into tracks and show them as a layer."""
        from napari.utils.notifications import show_error, show_warning

        from ..tracking import track_table

        layer = self._cells_layer
        if layer is None or layer not in self._viewer.layers or not len(layer.features):
            show_warning("no cells to track yet: run the batch first")
            return
        parameters = layer.metadata.get("napari_bloodcell", {}).get("parameters", {})
        source = parameters.get("source", layer.name)
        try:
            self.tracking = track_table(
                layer.features,
                parameters.get("pixel_size_um"),
                self.frame_interval.value or None,
            )
            placement = Placement(tuple(layer.scale), tuple(layer.translate), self._channel_axis)
            upsert_layers(
                self._viewer, tracks_layers(self.tracking.tracks, source, placement, parameters)
            )
        except BloodcellError as exc:
            show_error(str(exc))
            return
        counts = self.tracking.summary["track_class"].value_counts()
        by_class = ", ".join(f"{n} {name}" for name, n in counts.items())
        self.status.value = (
            f"{len(self.tracking.summary)} tracks ({by_class}), "
            f"{len(self.tracking.interactions)} contact events"
        )

    def export(self) -> bool:
        """The cells table, and the tracking tables (``<table stem>_tracking/``) if tracked;
        the tracking tables only once the cells table is written, never over a folder."""
        from pathlib import Path

        from napari.utils.notifications import show_info, show_warning

        from ..tracking import write_tracking

        if self.tracking is None:
            return super().export()
        table = Path(self.export_file.value)
        folder = table.with_name(f"{table.stem}_tracking") if table.name else None
        if folder is not None and folder.exists():
            show_warning(f"{folder} already exists; nothing written (choose another table name)")
            return False
        if not super().export():
            return False
        write_tracking(self.tracking, folder)
        show_info(f"wrote the tracking tables to {folder}")
        return True
