"""Screenshot of the Analyze widget on ``make_smear(seed=0)``: docs/images/plugin_analyze.png.

Usage: ``xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_analyze_widget.py
docs/images/plugin_analyze.png`` (a display is needed; the classifier runs in its worker
process, as in napari).
"""

import sys
import time

import napari
from qtpy.QtWidgets import QApplication

from napari_bloodcell._napari._analyze import AnalyzeWidget
from napari_bloodcell.synthetic import make_smear

ANALYSIS_TIMEOUT_S = 300


def _process_events(seconds: float) -> None:
    """Let Qt draw and deliver the worker's results for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.05)


def main(path: str) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 850)
    viewer.add_image(make_smear(seed=0).image, name="smear", rgb=True)
    widget = AnalyzeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyze (napari-bloodcell)", area="right")
    widget.run()
    deadline = time.monotonic() + ANALYSIS_TIMEOUT_S
    while widget.worker is not None and time.monotonic() < deadline:
        _process_events(0.1)
    viewer.reset_view()
    _process_events(2.0)
    viewer.screenshot(path, canvas_only=False, flash=False)
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1])
