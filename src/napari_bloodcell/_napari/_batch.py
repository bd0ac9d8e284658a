"""The Batch widget: analyse every frame of a time-lapse, frame by frame, cancellable."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from magicgui.widgets import LineEdit

from ..table import frame_counts
from ._compute import AnalysisJob, StackProgress, stack_steps
from ._layers import class_colours
from ._widgets_common import AnalysisWidget, PlotCanvas


class BatchWidget(AnalysisWidget):
    """Analyse a T × Y × X (× C) image layer (also dask-backed) into T × Y × X label layers
    and a points layer with a ``frame`` column; a plot shows cells per class and frame.

    Cancelling keeps the finished frames: the layers then hold exactly those frames.
    """

    keep_results_after_cancel = True

    def __init__(self, napari_viewer):
        self.axes = LineEdit(
            label="axes", value="", tooltip="axis order of the layer data, e.g. TYXC or TCYX; "
            "empty = inferred (RGB layers: TYXC)",
        )  # fmt: skip
        super().__init__(napari_viewer, extra_inputs=(self.axes,))
        self.plot = PlotCanvas("frame", "cells")
        self.native.layout().addWidget(self.plot.canvas)

    def _axes(self) -> str:
        return self.axes.value

    def _steps(self, job: AnalysisJob) -> tuple[Iterator, int]:
        return stack_steps(job), job.layout.n_frames

    def _apply(self, item: StackProgress) -> None:
        classes = list(item.layers[-1][1]["face_color_cycle"])
        summary = f"{item.frames_done}/{item.n_frames} frames, {len(item.table)} cells"
        if item.empty_frames:
            summary += f" (empty frames: {', '.join(map(str, item.empty_frames))})"
        self._show_layers(item.layers, item.table, classes, summary)
        self.plot_counts(item.table, classes)

    def plot_counts(self, table, classes: list[str]) -> None:
        """Cells per class and frame."""
        counts = frame_counts(table)
        colours = class_colours(classes)
        self.plot.plot(
            {
                name: (counts.index.to_numpy(), counts[name].to_numpy(), colours.get(name))
                for name in counts.columns
                if np.any(counts[name])
            }
        )
