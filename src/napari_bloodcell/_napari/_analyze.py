"""The Analyze widget: segment and classify one frame (or the current frame of a stack)."""

from __future__ import annotations

from collections.abc import Iterator

from ._compute import AnalysisJob, frame_steps
from ._widgets_common import AnalysisWidget


class AnalyzeWidget(AnalysisWidget):
    """Analyse the selected image layer's current frame into instance labels, class labels
    and class-coloured points; a second run updates the same layers."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._model_classes: list[str] = []

    def current_frame(self, job: AnalysisJob) -> int:
        """Index of the frame the viewer shows (0 for a single frame)."""
        if "T" not in job.layout.axes:
            return 0
        layer = self.image.value
        position = layer.world_to_data(self._viewer.dims.point)
        t = int(round(float(position[job.layout.layer_axes.index("T")])))
        return min(max(t, 0), job.layout.n_frames - 1)

    def _steps(self, job: AnalysisJob) -> tuple[Iterator, int]:
        self._model_classes = job.model_classes
        return frame_steps(job, self.current_frame(job)), 0

    def _apply(self, item: list[tuple]) -> None:
        table = item[-1][1]["features"]
        self._show_layers(item, table, self._model_classes, f"{len(table)} cells")
