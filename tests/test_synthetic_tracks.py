"""Tests of the synthetic tracking time-lapses (napari_bloodcell.synthetic_tracks)."""

import numpy as np
import pandas as pd
import pytest

from napari_bloodcell.errors import InputImageError
from napari_bloodcell.synthetic_tracks import (
    default_trajectories_path,
    detections_from_ground_truth,
    make_tracking_timelapse,
    write_ground_truth_ctc,
)

SMALL = {"n_frames": 6, "shape": (64, 64)}


def test_generator_is_deterministic_per_seed():
    first, again, other = (
        make_tracking_timelapse("medium", **SMALL, seed=s, trajectories=None) for s in (3, 3, 4)
    )
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    pd.testing.assert_frame_equal(first.tracks, again.tracks)
    assert not np.array_equal(first.image, other.image)


def test_visible_objects_are_painted_with_their_track_id():
    timelapse = make_tracking_timelapse("hard", **SMALL, seed=1, trajectories=None)
    assert timelapse.image.shape == (6, 64, 64, 3) and timelapse.image.dtype == np.uint8
    for row in timelapse.tracks.itertuples():
        painted = bool(np.any(timelapse.labels[row.frame] == row.track_id))
        assert painted == row.visible
    assert not timelapse.tracks.loc[~timelapse.tracks["in_focus"], "visible"].any()


def test_real_trajectories_from_an_explicit_csv(tmp_path):
    csv = tmp_path / "tracks.csv"
    steps = pd.DataFrame(
        {"track_id": 1, "t_s": 24.0 * np.arange(8), "x_um": 3.0 * np.arange(8), "y_um": 0.0}
    )
    steps.to_csv(csv, index=False)
    timelapse = make_tracking_timelapse("easy", **SMALL, seed=0, trajectories=csv)
    assert timelapse.trajectory_source == str(csv)
    wbc = timelapse.tracks[timelapse.tracks["cell_type"] == "wbc"]
    step = np.hypot(*wbc.groupby("track_id")[["centroid_y", "centroid_x"]].diff().dropna().T.values)
    np.testing.assert_allclose(step, 0.75 * 3.0 / 0.75)  # easy: speed x 0.75, 0.75 µm/px
    with pytest.raises(InputImageError, match="not found"):
        make_tracking_timelapse("easy", **SMALL, trajectories=tmp_path / "missing.csv")


@pytest.mark.skipif(not default_trajectories_path().is_file(), reason="shared data absent")
def test_shared_neutrophil_trajectories_are_used_when_present():
    timelapse = make_tracking_timelapse("easy", **SMALL, seed=0)
    assert timelapse.trajectory_source.endswith("Neutrophils.csv")


def test_smear_style_and_bad_requests():
    smear = make_tracking_timelapse("easy", **SMALL, style="smear", trajectories=None)
    assert smear.image.mean() > 150  # pale background
    with pytest.raises(InputImageError, match="difficulty"):
        make_tracking_timelapse("extreme", **SMALL)
    with pytest.raises(InputImageError, match="style"):
        make_tracking_timelapse("easy", **SMALL, style="phase")


def test_ground_truth_ctc_files(tmp_path):
    timelapse = make_tracking_timelapse("hard", n_frames=8, shape=(64, 64), trajectories=None)
    folder = write_ground_truth_ctc(timelapse, tmp_path)
    assert sorted(p.name for p in folder.glob("*.tif"))[0] == "man_track000.tif"
    lbep = np.loadtxt(folder / "man_track.txt", dtype=int, ndmin=2)
    assert (lbep[:, 1] <= lbep[:, 2]).all()
    assert set(lbep[:, 3]) <= set(lbep[:, 0]) | {0}


def test_detections_with_class_noise():
    timelapse = make_tracking_timelapse("hard", n_frames=20, shape=(128, 128), trajectories=None)
    exact = detections_from_ground_truth(timelapse.tracks)
    assert len(exact) == int(timelapse.tracks["visible"].sum())
    noisy = detections_from_ground_truth(timelapse.tracks, class_accuracy=0.85, seed=1)
    wbc = noisy["cell_type"] == "wbc"
    accuracy = (noisy.loc[wbc, "cell_class"] == exact.loc[wbc, "cell_class"]).mean()
    assert 0.78 < accuracy < 0.92
