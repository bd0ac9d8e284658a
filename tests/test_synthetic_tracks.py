"""Tests of the synthetic tracking time-lapses (napari_bloodcell.synthetic_tracks)."""

import numpy as np
import pandas as pd
import pytest

from napari_bloodcell.errors import InputImageError, OutputExistsError
from napari_bloodcell.synthetic_tracks import (
    default_trajectories_path,
    detections_from_ground_truth,
    load_trajectories,
    make_tracking_timelapse,
    render_timelapse,
    simulate_tracks,
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
    # 128 x 128 px: "easy" puts ~1.5 leukocytes per frame in the field (64 x 64: none)
    timelapse = make_tracking_timelapse("easy", n_frames=6, shape=(128, 128), trajectories=csv)
    assert timelapse.trajectory_source == str(csv)
    wbc = timelapse.tracks[timelapse.tracks["cell_type"] == "wbc"]
    step = np.hypot(*wbc.groupby("track_id")[["centroid_y", "centroid_x"]].diff().dropna().T.values)
    assert step.size >= 3  # the check below is not vacuous
    np.testing.assert_allclose(step, 0.75 * 3.0 / 0.75)  # easy: speed x 0.75, 0.75 µm/px
    with pytest.raises(InputImageError, match="not found"):
        make_tracking_timelapse("easy", **SMALL, trajectories=tmp_path / "missing.csv")


def test_trajectories_with_missing_time_points_keep_one_step_per_frame(tmp_path):
    csv = tmp_path / "raw.csv"
    times = 24.0 * np.array([0, 1, 3, 4, 5])  # the point at 48 s is missing
    pd.DataFrame({"track_id": 1, "t_s": times, "x_um": times / 8.0, "y_um": 0.0}).to_csv(csv)
    (displacements,) = load_trajectories(csv)
    np.testing.assert_allclose(displacements[:, 1], 3.0 * np.arange(6))  # 3 µm per 24 s
    np.testing.assert_allclose(displacements[:, 0], 0.0)


def test_trajectory_csv_without_usable_tracks_is_refused(tmp_path):
    """Not silently replaced by random walks while the CSV is reported as the source."""
    csv = tmp_path / "single_points.csv"
    pd.DataFrame({"track_id": [1, 2], "t_s": 0.0, "x_um": 0.0, "y_um": 0.0}).to_csv(csv)
    with pytest.raises(InputImageError, match="no track has 2 or more time points"):
        make_tracking_timelapse("easy", **SMALL, trajectories=csv)


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
    # a float shape or frame count failed deep in numpy; a huge shape ran on, its object
    # counts growing with the area (~10^14 leukocytes)
    for bad, message in [
        ({"shape": (40.5, 40)}, "whole numbers"),
        ({"n_frames": 2.5}, "n_frames must be a non-negative integer"),
        ({"shape": (10**9, 10**9)}, "exceed the pixel budget"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ]:
        with pytest.raises(InputImageError, match=message):
            make_tracking_timelapse("easy", **{**SMALL, "trajectories": None, **bad})
    assert make_tracking_timelapse("easy", **{**SMALL, "n_frames": 2.0}).image.shape[0] == 2


def test_ground_truth_ctc_files(tmp_path):
    timelapse = make_tracking_timelapse("hard", n_frames=8, shape=(64, 64), trajectories=None)
    folder = write_ground_truth_ctc(timelapse, tmp_path)
    assert sorted(p.name for p in folder.glob("*.tif"))[0] == "man_track000.tif"
    lbep = np.loadtxt(folder / "man_track.txt", dtype=int, ndmin=2)
    assert (lbep[:, 1] <= lbep[:, 2]).all()
    assert set(lbep[:, 3]) <= set(lbep[:, 0]) | {0}
    with pytest.raises(OutputExistsError, match="already holds a CTC export"):
        write_ground_truth_ctc(timelapse, tmp_path)
    assert write_ground_truth_ctc(timelapse, tmp_path, "wbc", overwrite=True) == folder


def test_detections_with_class_noise():
    timelapse = make_tracking_timelapse("hard", n_frames=20, shape=(128, 128), trajectories=None)
    exact = detections_from_ground_truth(timelapse.tracks)
    assert len(exact) == int(timelapse.tracks["visible"].sum())
    noisy = detections_from_ground_truth(timelapse.tracks, class_accuracy=0.85, seed=1)
    wbc = noisy["cell_type"] == "wbc"
    accuracy = (noisy.loc[wbc, "cell_class"] == exact.loc[wbc, "cell_class"]).mean()
    assert 0.78 < accuracy < 0.92


def test_movie_has_the_requested_frames_even_when_the_last_ones_are_empty():
    # 32 x 32 px at "medium" density: no objects at all, so no rows name the last frame
    empty = make_tracking_timelapse("medium", n_frames=5, shape=(32, 32), trajectories=None)
    assert empty.tracks.empty
    assert empty.image.shape == (5, 32, 32, 3) and empty.labels.shape == (5, 32, 32)
    tracks, _ = simulate_tracks(
        n_frames=8, shape=(64, 64), trajectories=None, n_leukocytes=0, n_platelets=1
    )
    early = tracks[tracks["frame"] < 3]
    image, labels, visible = render_timelapse(early, (64, 64), n_frames=8)
    assert image.shape[0] == labels.shape[0] == 8 and len(visible) == len(early)
    assert not labels[3:].any()
    with pytest.raises(InputImageError, match="n_frames"):
        render_timelapse(tracks, (64, 64), n_frames=4)  # tracks reach frame 7


def test_simulate_tracks_rejects_bad_counts():
    with pytest.raises(InputImageError, match="n_platelets"):
        simulate_tracks(trajectories=None, n_platelets=-1)
    with pytest.raises(InputImageError, match="n_leukocytes"):
        simulate_tracks(trajectories=None, n_leukocytes=-3)
    with pytest.raises(InputImageError, match="n_leukocytes"):
        simulate_tracks(trajectories=None, n_leukocytes=2.5)


def test_random_walks_are_as_long_as_the_real_tracks():
    """The fallback walks had 17 time points on average, the real neutrophils 13.3."""
    from napari_bloodcell.synthetic_tracks import _random_walk

    rng = np.random.default_rng(0)
    lengths = [len(_random_walk(rng)) for _ in range(4000)]
    assert np.mean(lengths) == pytest.approx(13.3, abs=0.5) and min(lengths) >= 3


@pytest.mark.parametrize("seed", range(4))
def test_no_platelet_is_drawn_on_a_platelet_outside_its_aggregate(seed):
    """Singles were placed anywhere: two platelets 1.4 px apart, one spot in the image for
    two objects of the ground truth (hard, seed 1)."""
    tracks, _ = simulate_tracks("hard", seed=seed)  # the benchmark's 30 frames
    platelets = tracks[(tracks["cell_type"] == "platelet") & (tracks["frame"] == 0)]
    centres = platelets[["centroid_y", "centroid_x"]].to_numpy()
    diameters = platelets["diameter_px"].to_numpy()
    apart = np.linalg.norm(centres[:, None] - centres[None], axis=2)
    touching = (diameters[:, None] + diameters[None]) / 2
    np.fill_diagonal(apart, np.inf)
    assert (apart > 0.5 * touching).all()  # aggregates touch; nothing lies on another


def test_auto_trajectories_are_the_shared_csv_when_present_else_random_walks(tmp_path, monkeypatch):
    """(The shared-data test skips in CI: there nothing showed what "auto" resolves to.)"""
    from napari_bloodcell import synthetic_tracks

    csv = tmp_path / "Neutrophils.csv"
    pd.DataFrame(
        {"track_id": 1, "t_s": 24.0 * np.arange(8), "x_um": 3.0 * np.arange(8), "y_um": 0.0}
    ).to_csv(csv, index=False)
    monkeypatch.setattr(synthetic_tracks, "default_trajectories_path", lambda: csv)
    assert make_tracking_timelapse("easy", **SMALL).trajectory_source == str(csv)
    monkeypatch.setattr(synthetic_tracks, "default_trajectories_path", lambda: tmp_path / "no")
    assert make_tracking_timelapse("easy", **SMALL).trajectory_source == "random_walk"
