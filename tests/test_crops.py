"""Crops: centred, scale-normalised, reflect-padded at borders, colour-normalised."""

import numpy as np
import pytest
from skimage.draw import disk

from napari_bloodcell.crops import crop_cells, crop_single_cell_image, normalise_colour


def _frame_with_disk(shape, centre, radius):
    frame = np.full((*shape, 3), 0.9, dtype=np.float32)
    frame[disk(centre, radius, shape=shape)] = (0.35, 0.2, 0.6)
    return frame


def test_crop_side_follows_cell_size_so_scales_match():
    """The same cell drawn at two magnifications gives nearly the same crop."""
    small = _frame_with_disk((200, 200), (100, 100), 10)
    large = _frame_with_disk((800, 800), (400, 400), 40)
    crop_small = crop_cells(small, [[100, 100]], [20], size=32)[0]
    crop_large = crop_cells(large, [[400, 400]], [80], size=32)[0]
    assert crop_small.shape == (32, 32, 3)
    assert np.abs(crop_small - crop_large).mean() < 0.05


def test_crop_is_centred_on_the_cell():
    frame = _frame_with_disk((200, 300), (60, 220), 12)
    crop = crop_cells(frame, [[60, 220]], [24], size=33)[0]
    dark = crop.sum(axis=-1) < crop.sum(axis=-1).mean()
    ys, xs = np.nonzero(dark)
    assert abs(ys.mean() - 16) < 1.5 and abs(xs.mean() - 16) < 1.5


def test_border_crops_are_reflect_padded_not_black():
    frame = _frame_with_disk((100, 100), (2, 97), 8)
    crop = crop_cells(frame, [[2, 97]], [16], size=32)[0]
    assert crop.shape == (32, 32, 3)
    dark = crop.sum(axis=-1) < 1.5
    # The frame edge (row 0) falls at crop row ~14; above it, reflection mirrors the cell.
    assert dark[:12].sum() > 0.5 * dark[17:].sum() > 0
    corners = crop[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.min() > 0.5  # bright background everywhere, no black padding


@pytest.mark.parametrize("length", [1, 2, 5, 17])
def test_windows_are_reflected_as_numpy_pads_the_frame(length):
    """Crops used to pad the whole frame (a copy of it per frame); windows now read the
    same pixels straight from it, even windows larger than the frame."""
    from napari_bloodcell.crops import reflected

    axis = np.arange(length) * 1.5
    for margin in (1, 3, 40):
        padded = np.pad(axis, margin, mode="reflect")
        np.testing.assert_array_equal(
            axis[reflected(np.arange(-margin, length + margin), length)], padded
        )


def test_no_cells_gives_an_empty_batch():
    frame = _frame_with_disk((50, 50), (25, 25), 5)
    assert crop_cells(frame, np.zeros((0, 2)), np.zeros(0), size=16).shape == (0, 16, 16, 3)


def test_colour_normalisation_removes_gain_and_tint_but_keeps_hue():
    rng = np.random.default_rng(0)
    crop = _frame_with_disk((40, 40), (20, 20), 8)[None] + rng.normal(0, 0.01, (1, 40, 40, 3))
    tinted = np.clip(crop * np.array([0.7, 0.8, 0.6]), 0, 1)
    a, b = normalise_colour(crop), normalise_colour(tinted)
    assert np.abs(a - b).mean() < 0.03
    centre = a[0, 20, 20]
    assert centre[2] > centre[1]  # the purple nucleus stays bluer than green


def test_single_cell_images_are_recropped_around_the_stained_object():
    image = _frame_with_disk((240, 240), (100, 140), 30)
    crop = crop_single_cell_image(image, size=32)
    dark = crop.sum(axis=-1) < crop.sum(axis=-1).mean()
    ys, xs = np.nonzero(dark)
    assert abs(ys.mean() - 15.5) < 2 and abs(xs.mean() - 15.5) < 2
    # the nucleus fills about 1 / 2.2 of the side
    assert dark.sum() == pytest.approx(np.pi * (32 / 2.2 / 2) ** 2, rel=0.35)


@pytest.mark.parametrize(
    ("centre", "diameter", "message"),
    [
        ((120.0, 10.0), 8.0, "not inside"),
        ((np.nan, 5.0), 8.0, "not inside"),
        ((10.0, 10.0), -1.0, "non-negative"),
    ],
)
def test_impossible_cells_are_refused_clearly(centre, diameter, message):
    from napari_bloodcell.errors import InputImageError

    frame = _frame_with_disk((100, 100), (50, 50), 8)
    with pytest.raises(InputImageError, match=message):
        crop_cells(frame, [centre], [diameter], size=16)


@pytest.mark.parametrize("diameter", [9.3, 10.4, 8.0, 11.0])
def test_the_window_is_centred_on_the_centroid_within_half_a_pixel(diameter):
    """The window started at round(centre - side / 2): its middle lay half a pixel up and
    left of the centroid on average, and up to 1.25 px (a 9.3 px window: 1 px)."""
    frame = _frame_with_disk((40, 40), (20, 20), 3)
    side = int(round(diameter))
    crop = crop_cells(frame, [[20, 20]], [diameter], size=side, scale=1.0)[0]
    dark = crop.sum(axis=-1) < crop.sum(axis=-1).mean()
    ys, xs = np.nonzero(dark)
    middle = (side - 1) / 2
    assert abs(ys.mean() - middle) <= 0.5 and abs(xs.mean() - middle) <= 0.5


@pytest.mark.parametrize(
    ("frame_shape", "kwargs", "message"),
    [
        ((20, 20, 3), {"size": 0}, "crop size must be a positive whole number"),
        ((20, 20, 3), {"size": 16.0}, "crop size must be a positive whole number"),
        ((20, 20, 3), {"size": 16, "scale": 0.0}, "crop scale"),
        ((20, 20, 3), {"size": 16, "scale": float("nan")}, "crop scale"),
        ((20, 20), {"size": 16}, r"expected a \(Y, X, C\) image"),
    ],
)
def test_impossible_crop_requests_are_refused_clearly(frame_shape, kwargs, message):
    """A zero, negative or float size and a grey (Y, X) frame failed deep in numpy /
    scikit-image (OverflowError, TypeError, a broadcast error); scale 0 cut 8 px windows."""
    from napari_bloodcell.errors import InputImageError

    with pytest.raises(InputImageError, match=message):
        crop_cells(np.full(frame_shape, 0.5, np.float32), [[10.0, 10.0]], [5.0], **kwargs)


def test_crops_become_the_classifier_s_bytes_rounded_and_clipped():
    from napari_bloodcell.crops import as_bytes

    bytes_ = as_bytes(np.array([0.0, 0.2, 1.0, 1.002, -0.002], np.float32))
    assert bytes_.dtype == np.uint8
    assert bytes_.tolist() == [0, 51, 255, 255, 0]  # never wrapped to the other extreme


def test_a_frame_with_nan_is_refused_and_a_boolean_one_cropped():
    """One NaN pixel blanked its whole crop silently (crop_single_cell_image: a ValueError
    from inside Otsu's threshold), and a boolean frame failed in scikit-image."""
    from napari_bloodcell.crops import crop_single_cell_image
    from napari_bloodcell.errors import InputImageError

    frame = np.full((20, 20, 3), 0.5, np.float32)
    frame[3, 3] = np.nan
    with pytest.raises(InputImageError, match="NaN"):
        crop_cells(frame, [[10.0, 10.0]], [5.0], size=16)
    with pytest.raises(InputImageError, match="NaN"):
        crop_single_cell_image(frame, size=16)
    mask = np.zeros((20, 20, 1), bool)
    mask[8:12, 8:12] = True
    crop = crop_cells(mask, [[10.0, 10.0]], [5.0], size=16)[0]
    assert crop.shape == (16, 16, 1) and crop.max() == 1.0 and crop.min() == 0.0
