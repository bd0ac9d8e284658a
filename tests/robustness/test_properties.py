"""Property-based: random shapes, dtypes and values through the core stages either give a
consistent result or raise the documented InputImageError — nothing else, no hang."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_bloodcell.crops import crop_cells
from napari_bloodcell.errors import InputImageError
from napari_bloodcell.pipeline import AnalysisSettings, analyze_frame
from napari_bloodcell.reading import image_from_array
from napari_bloodcell.segmentation import detect_modality, segment_frame

FAST = settings(
    max_examples=25, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
DTYPES = st.sampled_from(
    [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64, np.bool_]
)


def arrays(min_dims: int = 2, max_dims: int = 5, max_side: int = 40):
    """Arrays of any supported dtype, with NaN/inf and extreme values among the floats."""
    return DTYPES.flatmap(
        lambda dtype: hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side),
            elements=hnp.from_dtype(
                np.dtype(dtype), allow_nan=True, allow_infinity=True, allow_subnormal=False
            ),
        )
    )


def frames():
    """(Y, X, C) float frames in [0, 1] of 1–4 channels, smooth blobs plus noise."""
    return st.tuples(
        st.integers(8, 48), st.integers(8, 48), st.integers(1, 4), st.integers(0, 2**16)
    ).map(_blobs)


def _blobs(spec) -> np.ndarray:
    height, width, channels, seed = spec
    rng = np.random.default_rng(seed)
    frame = rng.random((height, width, channels)).astype(np.float32) * 0.2
    yy, xx = np.mgrid[:height, :width]
    for _ in range(rng.integers(0, 4)):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(2, 10)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        frame[inside] = rng.uniform(0, 1, channels)
    return 1.0 - frame if rng.random() < 0.5 else frame


def assert_consistent(labels: np.ndarray, table: pd.DataFrame, shape: tuple[int, int]) -> None:
    """Labels 1..N, one row per label, boxes inside the frame."""
    assert labels.shape == shape
    values = sorted(set(np.unique(labels)) - {0})
    assert values == list(range(1, len(values) + 1))
    assert sorted(table["label"]) == values
    assert (table["bbox_y0"] >= 0).all() and (table["bbox_x0"] >= 0).all()
    assert (table["bbox_y1"] <= shape[0]).all() and (table["bbox_x1"] <= shape[1]).all()


@FAST
@given(arrays())
def test_image_from_array_gives_canonical_floats_or_an_input_image_error(array):
    try:
        image = image_from_array(array)
    except InputImageError:
        return
    assert image.data.ndim == 4 and image.data.dtype == np.float32
    assert np.isfinite(image.data).all() and image.data.min() >= 0 and image.data.max() <= 1


@FAST
@given(arrays(min_dims=1, max_dims=4))
def test_segment_frame_labels_consistently_or_raises_an_input_image_error(array):
    try:
        result = segment_frame(array)
    except InputImageError:
        return
    assert_consistent(result.labels, result.cells, array.shape[:2])


@FAST
@given(frames(), st.sampled_from(["auto", "fluorescence"]))
def test_segment_frame_labels_usable_frames_consistently(frame, modality):
    """(Random arrays above are almost never usable frames: this one always reaches the
    check.)"""
    try:
        result = segment_frame(frame, modality)
    except InputImageError:  # a bright grey frame is a smear without its colours
        assert modality == "auto" and frame.shape[-1] != 3 and detect_modality(frame) == "smear"
        return
    assert_consistent(result.labels, result.cells, frame.shape[:2])


@FAST
@given(frames(), st.sampled_from(["auto", "smear", "fluorescence"]))
def test_analyze_frame_without_a_classifier_gives_a_consistent_table(frame, modality):
    try:
        result = analyze_frame(frame, None, AnalysisSettings(modality=modality))
    except InputImageError:  # a smear, asked for or detected (a bright grey frame), needs RGB
        assert frame.shape[-1] != 3
        assert modality == "smear" or detect_modality(frame) == "smear"
        return
    assert_consistent(result.labels, result.table, frame.shape[:2])
    if result.modality == "smear":  # no CNN: the class repeats the type
        assert (result.table["cell_class"] == result.table["cell_type"]).all()


@FAST
@given(
    frames(),
    hnp.arrays(np.float64, st.tuples(st.integers(0, 6), st.just(2)), elements=st.floats(0, 1)),
    st.floats(0, 60),
    st.integers(4, 24),
)
def test_crop_cells_gives_finite_crops_of_the_model_size_anywhere_in_the_frame(
    frame, where, diameter, size
):
    centres = where * (np.array(frame.shape[:2]) - 1)  # segmented centroids lie in the frame
    crops = crop_cells(frame, centres, np.full(len(centres), diameter), size=size)
    assert crops.shape == (len(centres), size, size, frame.shape[-1])
    assert np.isfinite(crops).all() and crops.min(initial=0) >= 0 and crops.max(initial=1) <= 1
