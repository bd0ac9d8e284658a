"""The widgets given corpus-like layers: a notification each time, and still usable after."""

from __future__ import annotations

import numpy as np
import pytest

from napari_bloodcell import pipeline
from napari_bloodcell.reading import MAX_FRAME_PIXELS_ENV

from .corpus import smear_rgb

pytestmark = [pytest.mark.napari, pytest.mark.usefixtures("no_tensorflow_in_this_process")]

WAIT_MS = 60_000
RNG = np.random.default_rng(0)


def _segmentation_bug(*_args, **_kwargs):
    raise RuntimeError("segmentation exploded")


def _nan_frame() -> np.ndarray:
    frame = RNG.random((48, 64)).astype(np.float32)
    frame[3, 4] = np.nan
    return frame


# (layer data, rgb, setup, expected message); setup(monkeypatch) injects a fault
ANALYZE_CASES = {
    "NaN": (_nan_frame(), False, None, "NaN or infinite"),
    "5-D": (RNG.integers(0, 255, (2, 3, 4, 16, 16), np.uint8), False, None, "Axes field"),
    "7 channels": (RNG.random((48, 64, 7)), False, None, "need at least"),
    "over budget": (
        RNG.random((48, 64)),
        False,
        lambda patch: patch.setenv(MAX_FRAME_PIXELS_ENV, "1000"),
        "pixel budget",
    ),
    "segmentation bug": (
        smear_rgb(),
        True,
        lambda patch: patch.setattr(pipeline, "segment_frame", _segmentation_bug),
        "unexpected RuntimeError (segmentation exploded)",
    ),
}


def _run(widget, qtbot) -> None:
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_analyze_widget_notifies_each_bad_layer_and_stays_usable(
    make_napari_viewer, qtbot, notifications, monkeypatch
):
    from napari_bloodcell._napari._analyze import AnalyzeWidget

    viewer = make_napari_viewer()
    widget = AnalyzeWidget(viewer)
    widget.model.value = None
    for name, (data, rgb, setup, message) in ANALYZE_CASES.items():
        with monkeypatch.context() as patch:
            if setup is not None:
                setup(patch)
            widget.image.value = viewer.add_image(data, rgb=rgb, name=name)
            _run(widget, qtbot)
        assert notifications[-1][0] == "error" and message in notifications[-1][1], name
        assert widget.run_button.enabled and widget.worker is None, name
    n_layers = len(viewer.layers)
    widget.image.value = viewer.add_image(smear_rgb(), rgb=True, name="good")
    _run(widget, qtbot)  # still usable: the good frame is analysed
    assert len(viewer.layers) == n_layers + 4 and widget.status.value.startswith("finished")


def test_batch_widget_notifies_a_failing_frame_and_stays_usable(
    make_napari_viewer, qtbot, notifications, monkeypatch
):
    from napari_bloodcell._napari._batch import BatchWidget

    # a smear's green channel, inverted: dark background, like fluorescence (a bright grey
    # frame is refused as a smear without its colours)
    stack = 1 - np.stack([smear_rgb()[..., 1]] * 3).astype(np.float32) / 255
    bad = stack.copy()
    bad[1, 5, 5] = np.inf
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    widget.model.value = None
    widget.axes.value = "TYX"  # 3 planes: frames, not channels
    widget.image.value = viewer.add_image(bad, name="inf in frame 1")
    _run(widget, qtbot)
    assert "NaN or infinite" in notifications[-1][1]  # found in the intensity sample
    assert widget.status.value == "failed (see the notification): no results"
    with monkeypatch.context() as patch:
        segment_frame = pipeline.segment_frame
        calls = iter(range(3))

        def bug_in_frame_1(*args, **kwargs):
            if next(calls) == 1:
                _segmentation_bug()
            return segment_frame(*args, **kwargs)

        patch.setattr(pipeline, "segment_frame", bug_in_frame_1)
        widget.image.value = viewer.add_image(stack, name="bug")
        _run(widget, qtbot)
    assert "unexpected RuntimeError" in notifications[-1][1] and widget.run_button.enabled
    assert widget.status.value.startswith("failed (see the notification): 1/3 frames")
    assert viewer.layers["bug stack instances"].data.shape[0] == 1  # frame 0 is kept
    _run(widget, qtbot)  # the same stack again, without the fault
    assert viewer.layers["bug stack instances"].data.shape == stack.shape
    assert widget.status.value.startswith("finished")
