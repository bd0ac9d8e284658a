"""Tests of the synthetic smear and time-lapse generators (napari_bloodcell.synthetic)."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_bloodcell.errors import InputImageError
from napari_bloodcell.synthetic import (
    WBC_CLASSES,
    _SmearCanvas,
    _Sprite,
    make_smear,
    make_timelapse,
)

SMEAR_KW = {"shape": (240, 320), "n_rbc": 6, "n_wbc": 1, "n_platelets": 3}


@pytest.fixture(scope="module")
def smear():
    return make_smear(seed=1)


@pytest.fixture(scope="module")
def timelapse():
    return make_timelapse(12, (96, 160), n_leukocytes=3, n_platelets=8, seed=2, step_px=3.0)


def test_smear_is_deterministic_per_seed():
    first, again, other = (make_smear(**SMEAR_KW, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.cells.equals(again.cells)
    assert not np.array_equal(first.image, other.image)
    assert not np.array_equal(first.labels, other.labels)


def test_smear_shapes_and_dtypes(smear):
    assert smear.image.shape == (480, 640, 3) and smear.image.dtype == np.uint8
    assert smear.labels.shape == (480, 640) and smear.labels.dtype == np.uint32
    small = make_smear(**SMEAR_KW)
    assert small.image.shape == (240, 320, 3) and small.labels.shape == (240, 320)


def test_smear_table_matches_labels(smear):
    cells = smear.cells
    n = len(cells)
    assert list(cells.columns) == ["label", "cell_type", "wbc_class", "centroid_y", "centroid_x"]
    assert cells["label"].tolist() == list(range(1, n + 1))
    assert set(np.unique(smear.labels)) == set(range(n + 1))  # consecutive, all visible
    counts = cells["cell_type"].value_counts().to_dict()
    assert counts == {"rbc": 30, "wbc": 2, "platelet": 6}
    wbc = cells["cell_type"] == "wbc"
    assert set(cells.loc[wbc, "wbc_class"]) <= set(WBC_CLASSES)
    assert (cells.loc[~wbc, "wbc_class"] == "").all()
    centroids = ndi.center_of_mass(np.ones_like(smear.labels), smear.labels, cells["label"])
    np.testing.assert_allclose(cells[["centroid_y", "centroid_x"]], centroids)


def test_smear_requested_counts_are_all_visible():
    result = make_smear(**SMEAR_KW, seed=3)
    assert result.cells["cell_type"].value_counts().to_dict() == {"rbc": 6, "platelet": 3, "wbc": 1}
    areas = np.bincount(result.labels.ravel())[1:]
    by_type = dict(zip(result.cells["cell_type"], areas, strict=True))
    assert areas.min() > 0
    assert by_type["wbc"] > 10_000 and by_type["rbc"] > 2_000


def test_smear_looks_stained(smear):
    """Objects absorb light; WBC nuclei are blue-violet; the glass between cells is pale."""
    image = smear.image.astype(float)
    brightness = image.mean(axis=-1)
    glass = ndi.binary_erosion(smear.labels == 0, iterations=4)
    assert 185 < np.median(brightness[glass]) < 225
    for row in smear.cells.itertuples():
        pixels = image[smear.labels == row.label]
        assert pixels.mean() < np.median(brightness[glass]) - 5
        if row.cell_type == "wbc":
            blue_minus_green = pixels[:, 2] - pixels[:, 1]
            assert np.percentile(blue_minus_green, 90) > 40
        if row.cell_type == "rbc":
            assert np.median(pixels[:, 0] - pixels[:, 1]) > 10


def test_later_objects_occlude_earlier_and_protected_ones_stay_on_top():
    yy, xx = np.mgrid[:21, :21]
    disc = (yy - 10) ** 2 + (xx - 10) ** 2 <= 100
    sprite = _Sprite(disc, np.zeros((21, 21, 3), np.float32), (10.0, 10.0))
    canvas = _SmearCanvas((40, 60), 3)
    place = {"protected_below": 1, "min_visible_fraction": 0.3, "max_under_protected": 0.5}
    assert canvas.try_place(sprite, (20, 15), 1, **{**place, "protected_below": 0})
    assert canvas.try_place(sprite, (20, 27), 2, **place)  # under label 1 where they overlap
    assert canvas.try_place(sprite, (20, 39), 3, **place)  # on top of label 2
    first, second, third = (np.zeros((40, 60), bool) for _ in range(3))
    first[10:31, 5:26], second[10:31, 17:38], third[10:31, 29:50] = disc, disc, disc
    np.testing.assert_array_equal(canvas.labels == 1, first)
    np.testing.assert_array_equal(canvas.labels == 2, second & ~first & ~third)
    np.testing.assert_array_equal(canvas.labels == 3, third)
    assert canvas.visible[1:].tolist() == [
        first.sum(),
        (second & ~first & ~third).sum(),
        disc.sum(),
    ]
    # a fourth copy exactly over the third would hide it: refused
    assert not canvas.try_place(sprite, (20, 39), 2, **place)


def test_smear_rejects_impossible_requests():
    with pytest.raises(InputImageError, match="fewer cells"):
        make_smear((100, 100), n_rbc=40, n_wbc=0, n_platelets=0)
    with pytest.raises(InputImageError, match="n_rbc"):
        make_smear(n_rbc=-1)
    with pytest.raises(InputImageError, match="shape"):
        make_smear((10, 10))
    with pytest.raises(InputImageError, match="too small for object 1"):  # was a ValueError
        make_smear((120, 160), n_rbc=3, n_wbc=1, seed=4)


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [  # each failed deep in numpy (a NaN count, a float shape, a negative seed) or, for
        # 480.7 px, was silently cut to 480
        (make_smear, {"n_rbc": float("nan")}, "n_rbc must be a non-negative integer"),
        (make_smear, {"n_rbc": float("inf")}, "n_rbc must be a non-negative integer"),
        (make_smear, {"shape": (480.7, 640)}, "shape must be .Y, X. whole numbers"),
        (make_smear, {"shape": (float("nan"), 640)}, "shape must be .Y, X. whole numbers"),
        (make_smear, {"seed": -1}, "seed must be a non-negative integer"),
        (make_smear, {"seed": 1.5}, "seed must be a non-negative integer"),
        (make_timelapse, {"seed": -1}, "seed must be a non-negative integer"),
        (make_timelapse, {"step_px": "2"}, "step_px must be a non-negative number"),
        (make_timelapse, {"shape": (10**6, 10**6)}, "exceed the pixel budget"),
    ],
)
def test_generators_refuse_unusable_arguments_clearly(make, kwargs, message):
    with pytest.raises(InputImageError, match=message):
        make(**kwargs)


def test_empty_smear():
    result = make_smear((120, 160), n_rbc=0, n_wbc=0, n_platelets=0)
    assert result.cells.empty and not result.labels.any()


def test_timelapse_is_deterministic_per_seed():
    first, again, other = (make_timelapse(4, (64, 96), seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.tracks.equals(again.tracks)
    assert not np.array_equal(first.image, other.image)


def test_timelapse_shapes_and_table(timelapse):
    assert timelapse.image.shape == (12, 96, 160, 3) and timelapse.image.dtype == np.uint8
    assert timelapse.labels.shape == (12, 96, 160) and timelapse.labels.dtype == np.uint32
    tracks = timelapse.tracks
    assert list(tracks.columns) == [
        "track_id",
        "frame",
        "centroid_y",
        "centroid_x",
        "cell_type",
        "visible",
    ]
    assert len(tracks) == 12 * 11
    assert tracks.groupby("track_id")["cell_type"].first().value_counts().to_dict() == {
        "platelet": 8,
        "wbc": 3,
    }
    for frame, rows in tracks.groupby("frame"):
        present = set(np.unique(timelapse.labels[frame])) - {0}
        assert present == set(rows.loc[rows["visible"], "track_id"])
    assert tracks["visible"].mean() > 0.8


def test_timelapse_labels_follow_their_track(timelapse):
    """Each track id's pixels sit around that track's true centre in every frame."""
    tracks = timelapse.tracks[timelapse.tracks["visible"]]
    distances = []
    for row in tracks.itertuples():
        mask = timelapse.labels[row.frame] == row.track_id
        centroid = ndi.center_of_mass(mask)
        distances.append(np.hypot(centroid[0] - row.centroid_y, centroid[1] - row.centroid_x))
    assert np.median(distances) < 1.0
    assert np.max(distances) < 8.0


def test_timelapse_motion(timelapse):
    tracks = timelapse.tracks.sort_values(["track_id", "frame"])
    steps = np.hypot(
        tracks.groupby("track_id")["centroid_y"].diff(),
        tracks.groupby("track_id")["centroid_x"].diff(),
    )
    leukocyte = tracks["cell_type"] == "wbc"
    assert np.nanmean(steps[leukocyte]) == pytest.approx(3.0, rel=0.2)
    assert np.nanmean(steps[~leukocyte]) < 1.0


def test_timelapse_colours(timelapse):
    image = timelapse.image.astype(float)
    tracks = timelapse.tracks.groupby("track_id")["cell_type"].first()
    platelet = np.isin(timelapse.labels, tracks.index[tracks == "platelet"])
    leukocyte = np.isin(timelapse.labels, tracks.index[tracks == "wbc"])
    background = timelapse.labels == 0
    assert image[background].mean() < 40
    assert image[platelet][:, 0].mean() > 2 * image[platelet][:, 1].mean()
    assert image[leukocyte][:, 1].mean() > image[leukocyte][:, 0].mean()
    assert image[leukocyte][:, 1].mean() > image[background][:, 1].mean() + 10
    assert image[..., 2].mean() < 20
