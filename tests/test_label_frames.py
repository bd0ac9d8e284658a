"""Compressed label stacks of the batch widget: same values as an array, bounded memory."""

import numpy as np
import pytest

from napari_bloodcell._napari._label_frames import CompressedLabelFrames, WithChannelAxis


@pytest.fixture
def stack() -> np.ndarray:
    rng = np.random.default_rng(0)
    labels = np.zeros((5, 40, 60), np.uint32)
    for t in range(5):
        for label in range(1, 4):
            y, x = rng.integers(0, 30, 2)
            labels[t, y : y + 8, x : x + 8] = label + 10 * t
    return labels


def _store(stack: np.ndarray) -> CompressedLabelFrames:
    frames = CompressedLabelFrames(stack.shape[1:])
    for frame in stack:
        frames.append(frame)
    return frames


def test_views_index_like_the_array(stack):
    view = _store(stack).view(4)
    assert view.shape == (4, 40, 60) and view.dtype == np.uint32 and view.ndim == 3
    np.testing.assert_array_equal(np.asarray(view), stack[:4])
    pixels = (np.array([0, 3, 3]), np.array([1, 5, 6]), np.array([2, 7, 8]))  # napari's reads
    keys = [2, -1, (1, slice(5, 20), 7), np.s_[1:3], np.s_[::2, 3], np.s_[..., 5], [0, 3]]
    for key in [*keys, np.array([0, 3]), pixels]:
        np.testing.assert_array_equal(view[key], stack[:4][key])
    with pytest.raises(IndexError, match="frame 4 out of range"):
        view[4]


def test_frames_are_stored_compressed(stack):
    frames = _store(stack)
    assert frames.nbytes_compressed < stack.nbytes / 20


def test_painting_writes_into_the_view_s_frames(stack):
    frames = _store(stack)
    view = frames.view()
    view[2, 0:3, 0:3] = 99  # a fill of a frame region
    expected = stack.copy()
    expected[2, 0:3, 0:3] = 99
    # napari's paint: per-pixel coordinates over several frames
    t, y, x = np.array([0, 0, 4]), np.array([1, 2, 3]), np.array([5, 6, 7])
    view[(t, y, x)] = np.array([7, 8, 9])
    expected[(t, y, x)] = [7, 8, 9]
    np.testing.assert_array_equal(np.asarray(view), expected)
    view[1:3, 0, :2] = np.array([[4, 5], [6, 7]])  # napari's undo: a region
    expected[1:3, 0, :2] = [[4, 5], [6, 7]]
    np.testing.assert_array_equal(np.asarray(view), expected)
    np.testing.assert_array_equal(view[(t, y, x)], [7, 8, 9])  # napari's reads: edited too
    assert view.nbytes_compressed > frames.nbytes_compressed  # the edited copies count
    with pytest.raises(TypeError, match="edited by frame number"):
        view[np.array([True, False, True, False, True])] = 0


def test_views_of_one_store_never_share_their_edits(stack):
    """A batch shows each redraw as a new view of one store: a layer painted by hand
    mid-batch (handed to the user) and the layer the batch showed next shared every edit
    both ways."""
    frames = _store(stack[:2])
    users = frames.view()
    users[0, 5, 5] = 999  # painted by hand
    frames.append(stack[2])  # the batch goes on …
    batch = frames.view()  # … and shows its next frames in a new layer
    assert batch[0][5, 5] == stack[0, 5, 5] != 999
    batch[0, 10, 10] = 123
    assert users[0][10, 10] == stack[0, 10, 10] and users[0][5, 5] == 999


def test_frames_read_are_copies(stack):
    view = _store(stack).view()
    frame = view[1]
    frame[:] = 5
    np.testing.assert_array_equal(view[1], stack[1])


def test_wrong_frame_shape_is_refused(stack):
    with pytest.raises(ValueError, match="expected"):
        _store(stack).append(np.zeros((3, 3), np.uint32))


@pytest.mark.parametrize("value", [2**32 + 5, -1, 1.5, np.nan])
def test_label_values_the_store_cannot_hold_are_refused_not_wrapped(stack, value):
    frame = np.zeros(stack.shape[1:], np.float64 if isinstance(value, float) else np.int64)
    frame[0, 0] = value  # was stored as 5 (merged with label 5), as 4294967295, or as 1
    with pytest.raises(ValueError, match="whole numbers that uint32 holds"):
        _store(stack).append(frame)
    _store(stack).append(np.nan_to_num(frame).clip(0, 7).round())  # values that fit: fine


@pytest.mark.parametrize("axis", [1, 3])  # T C Y X and T Y X C layers
def test_a_channel_axis_reads_and_paints_the_frames_underneath(stack, axis):
    frames = _store(stack)
    view = WithChannelAxis(frames.view(), axis)
    expected = np.expand_dims(stack, axis)
    assert view.shape == expected.shape and view.ndim == 4 and view.dtype == np.uint32
    np.testing.assert_array_equal(np.asarray(view), expected)
    own = [np.s_[..., 5], (3, 0)] if axis == 1 else [np.s_[..., 0], np.s_[..., 5, :], (3, 4, 5, 0)]
    for key in [2, np.s_[1:3], *own]:
        np.testing.assert_array_equal(view[key], expected[key])
    # napari's paint: one integer array per axis, the channel's all 0
    t, y, x = np.array([0, 4]), np.array([1, 2]), np.array([5, 6])
    pixel = (t, np.zeros(2, int), y, x) if axis == 1 else (t, y, x, np.zeros(2, int))
    view[pixel] = 77
    np.testing.assert_array_equal(view[pixel], [77, 77])
    frames_underneath = view._data
    assert frames_underneath[0][1, 5] == frames_underneath[4][2, 6] == 77
    view[(2, slice(None), slice(0, 2), slice(0, 2)) if axis == 1 else np.s_[2, 0:2, 0:2, :]] = 5
    assert (frames_underneath[2][0:2, 0:2] == 5).all()
    with pytest.raises(TypeError, match="one integer array per axis"):
        view[[0, 3]]  # a list among slices: numpy would move axes; not napari's way
