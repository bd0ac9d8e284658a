"""Tests of napari_bloodcell.tracking: linking, class vote, measures, interactions, outputs."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy.spatial.distance import cdist

from napari_bloodcell.errors import BloodcellError, OutputExistsError, TrackingError
from napari_bloodcell.synthetic import make_timelapse
from napari_bloodcell.tracking import (
    TrackingParams,
    Units,
    ctc_scores,
    ctc_segments,
    track_table,
    tracks_layer_data,
    vote_track_classes,
    write_ctc,
    write_tracking,
)
from napari_bloodcell.tracking.interactions import aggregate_sizes, nearest_platelets


def cells(rows: list[tuple]) -> pd.DataFrame:
    """A cells table from (frame, label, y, x, cell_type) tuples."""
    table = pd.DataFrame(rows, columns=["frame", "label", "centroid_y", "centroid_x", "cell_type"])
    table["cell_class"] = table["cell_type"]
    return table


def test_perfect_detections_give_tra_1(tmp_path):
    pytest.importorskip("ctc_metrics")
    timelapse = make_timelapse(10, (96, 160), n_leukocytes=3, n_platelets=8, seed=2)
    visible = timelapse.tracks[timelapse.tracks["visible"]]
    detections = visible.assign(label=visible["track_id"]).drop(columns=["track_id", "visible"])
    result = track_table(detections)
    truth = visible.assign(label=visible["track_id"])
    write_ctc(tmp_path / "gt", timelapse.labels, truth, ground_truth=True)
    write_ctc(tmp_path / "res", timelapse.labels, result.tracks)
    scores = ctc_scores(tmp_path / "gt", tmp_path / "res")
    assert scores["TRA"] == pytest.approx(1.0)
    assert scores["DET"] == pytest.approx(1.0)


def test_one_missed_frame_is_bridged_by_gap_closing():
    rows = [(t, 1, 10.0 + t, 10.0, "wbc") for t in (0, 1, 3, 4)]
    rows += [(t, 2, 60.0, 60.0 + t, "wbc") for t in range(5)]
    bridged = track_table(cells(rows)).tracks
    assert bridged.groupby("label")["track_id"].nunique().tolist() == [1, 1]
    assert bridged["track_id"].nunique() == 2
    unbridged = track_table(cells(rows), params=TrackingParams(max_gap_frames=0)).tracks
    assert unbridged["track_id"].nunique() == 3


def test_an_aggregate_within_contact_distance_counts_though_a_single_is_nearer():
    # a leukocyte at x = 0 with a single platelet 2 px away and a 3-platelet aggregate 4 px
    # away on the other side; contact distance 10 px
    rows = [(t, 1, 50.0, 50.0, "wbc") for t in range(3)]
    rows += [(t, 2, 50.0, 52.0, "platelet") for t in range(3)]
    rows += [(t, 3 + i, 50.0 + 1.5 * i, 46.0, "platelet") for t in range(3) for i in range(3)]
    params = TrackingParams(contact_distance=10.0, min_contact_frames=2, aggregate_distance=2.0)
    result = track_table(cells(rows), params=params)
    assert result.nearest_platelet["aggregate_in_contact"].all()
    assert result.interactions["with_aggregate"].tolist() == [True]
    far = TrackingParams(contact_distance=3.0, min_contact_frames=2, aggregate_distance=2.0)
    assert track_table(cells(rows), params=far).interactions["with_aggregate"].tolist() == [False]


def test_ctc_segments_split_tracks_at_gaps():
    tracks = pd.DataFrame({"track_id": [7, 7, 7, 9], "frame": [0, 1, 3, 2]})
    labels, lbep = ctc_segments(tracks)
    assert labels.tolist() == [1, 1, 2, 3]
    assert lbep.to_numpy().tolist() == [[1, 0, 1, 0], [2, 3, 3, 1], [3, 2, 2, 0]]


def test_vote_is_confidence_weighted_and_ignores_uncertain():
    rows = [(t, 1, 10.0, 10.0 + t, "wbc") for t in range(4)]
    rows += [(t, 2, 80.0, 10.0 + t, "wbc") for t in range(3)]
    table = cells(rows)
    table["cell_class"] = ["neutrophil", "neutrophil", "lymphocyte", "uncertain"] + [
        "lymphocyte",
        "neutrophil",
        "neutrophil",
    ]
    table["confidence"] = [0.9, 0.8, 0.95, 0.3, 0.99, 0.3, 0.3]
    summary = track_table(table).summary.set_index("track_id")
    first, second = summary.loc[1], summary.loc[2]
    assert first["track_class"] == "neutrophil"
    assert first["track_class_agreement"] == pytest.approx(0.5)
    assert first["track_class_confidence"] == pytest.approx(1.7 / 2.65, rel=1e-6)
    assert second["track_class"] == "lymphocyte"  # 0.99 outweighs 2 x 0.3


def test_vote_gives_uncertain_only_to_tracks_without_a_class():
    table = pd.DataFrame(
        {
            "track_id": [1, 1, 1, 1, 2, 2, 3, 3, 3],
            "cell_class": ["neutrophil"] * 3
            + ["uncertain"]
            + ["uncertain"] * 2
            # a tie of weights: the class of more frames wins, whatever the names
            + ["monocyte", "lymphocyte", "lymphocyte"],
            "confidence": [0.0, 0.0, 0.0, 0.3, 0.2, 0.4, 0.5, 0.25, 0.25],
        }
    )
    votes = vote_track_classes(table)
    assert votes["track_class"].tolist() == ["neutrophil", "uncertain", "lymphocyte"]
    assert votes["track_class_confidence"].tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert votes["track_class_agreement"].tolist() == pytest.approx([0.75, 1.0, 2 / 3])


def test_contact_events_on_a_two_object_scene():
    wbc_x = [10, 6, 5, 4, 10, 10, 6, 10, 4, 5, 10]
    rows = [(t, 1, 0.0, float(x), "wbc") for t, x in enumerate(wbc_x)]
    rows += [(t, 2, 0.0, 5.0, "platelet") for t in range(len(wbc_x))]
    params = TrackingParams(wbc_max_speed=60.0, contact_distance=1.5, min_contact_frames=2)
    result = track_table(cells(rows), frame_interval_s=10.0, params=params)
    events = result.interactions
    platelet_id = result.tracks.loc[result.tracks["cell_type"] == "platelet", "track_id"].iloc[0]
    assert events["start_frame"].tolist() == [1, 8]
    assert events["end_frame"].tolist() == [3, 9]
    assert events["n_frames"].tolist() == [3, 2]
    assert events["duration_s"].tolist() == [30.0, 20.0]
    assert events["min_distance_px"].tolist() == [0.0, 0.0]
    assert (events["platelet_track_id"] == platelet_id).all()
    nearest = result.nearest_platelet
    assert nearest["platelet_distance_px"].tolist() == [abs(x - 5.0) for x in wbc_x]
    assert nearest["t_s"].tolist() == [10.0 * t for t in range(len(wbc_x))]


@pytest.mark.parametrize("missed", ["wbc", "platelet"])
def test_a_contact_survives_either_cell_missed_for_a_frame(missed):
    # a leukocyte sits on one platelet for 10 frames; one of them is out of focus in frame 5
    rows = [(t, 1, 0.0, 5.0, "wbc") for t in range(10) if not (missed == "wbc" and t == 5)]
    rows += [
        (t, 2, 0.0, 5.5, "platelet") for t in range(10) if not (missed == "platelet" and t == 5)
    ]
    params = TrackingParams(contact_distance=2.0)
    result = track_table(cells(rows), frame_interval_s=10.0, params=params)
    events = result.interactions
    assert events[["start_frame", "end_frame", "duration_s"]].values.tolist() == [[0, 9, 100.0]]
    assert events["n_frames"].tolist() == [9 if missed == "wbc" else 10]  # frames it was seen
    nearest = result.nearest_platelet
    assert len(nearest) == (9 if missed == "wbc" else 10) and nearest["in_contact"].all()
    assert nearest["platelet_distance_px"].tolist() == pytest.approx([0.5] * len(nearest))


def test_a_platelet_bridged_over_missed_frames_counts_at_interpolated_positions():
    rows = [(t, 1, 0.0, 0.0, "wbc") for t in range(5)]
    rows += [(t, 2, 0.0, 3.0 + t, "platelet") for t in (0, 1, 4)]  # missed in frames 2 and 3
    nearest = track_table(cells(rows), params=TrackingParams(platelet_max_speed=4.0))
    nearest = nearest.nearest_platelet
    assert nearest["platelet_distance_px"].tolist() == pytest.approx([3.0, 4.0, 5.0, 6.0, 7.0])
    assert (nearest["platelet_track_id"] == nearest["platelet_track_id"].iloc[0]).all()


def test_platelet_aggregates_are_single_linkage_clusters():
    points = np.array([[0.0, 0.0], [0.0, 3.0], [0.0, 6.0], [20.0, 20.0]])
    assert aggregate_sizes(points, 3.5).tolist() == [3, 3, 3, 1]


@pytest.mark.parametrize(
    ("points", "interval_s", "expected", "expected_msd"),
    [
        (  # 10 px per frame along x, at 0.5 µm/px
            [(0.0, 10.0 * t) for t in range(4)],
            30.0,
            {"path": 15.0, "net": 15.0, "speed": 10.0, "straightness": 1.0, "duration": 90.0},
            {1: 25.0, 3: 225.0},
        ),
        (  # bent: (0, 0) → (3, 4) → (3, 0) px, steps 5 and 4 px, net 3 px (y counts too)
            [(0.0, 0.0), (3.0, 4.0), (3.0, 0.0)],
            60.0,
            {"path": 4.5, "net": 1.5, "speed": 2.25, "straightness": 1 / 3, "duration": 120.0},
            {1: (25 + 16) / 2 * 0.25, 2: 9 * 0.25},
        ),
    ],
)
def test_motility_measures_in_physical_units(points, interval_s, expected, expected_msd):
    rows = [(t, 1, y, x, "wbc") for t, (y, x) in enumerate(points)]
    params = TrackingParams(wbc_max_speed=20.0)
    result = track_table(cells(rows), pixel_size_um=0.5, frame_interval_s=interval_s, params=params)
    row = result.summary.iloc[0]
    assert row["path_length_um"] == pytest.approx(expected["path"])
    assert row["net_displacement_um"] == pytest.approx(expected["net"])
    assert row["mean_speed_um_per_min"] == pytest.approx(expected["speed"])
    assert row["straightness"] == pytest.approx(expected["straightness"])
    assert row["duration_s"] == pytest.approx(expected["duration"])
    msd = result.msd.set_index("lag_frames")["msd_um2"]
    for lag, value in expected_msd.items():
        assert msd.loc[lag] == pytest.approx(value)


def test_tracks_layer_data():
    rows = [(t, 1, 5.0, 5.0 + t, "wbc") for t in range(3)]
    rows += [(t, 2, 40.0, 40.0, "platelet") for t in range(2)]
    data, features, properties = tracks_layer_data(track_table(cells(rows)).tracks)
    assert data.shape == (5, 4)
    assert data[:, 0].tolist() == [1, 1, 1, 2, 2] and data[:, 1].tolist() == [0, 1, 2, 0, 1]
    assert {"track_id", "frame", "cell_type", "cell_class", "track_class"} <= set(features)
    assert features["track_class"].dtype == "category"
    assert all(len(values) == 5 for values in properties.values())
    assert "track_class" in properties


def test_a_table_saved_without_a_source_name_tracks_like_the_table_in_memory(tmp_path):
    from napari_bloodcell.table import read_table, write_table

    rows = [(t, 1, 5.0, 5.0 + t, "wbc") for t in range(4)] + [
        (t, 2, 30.0, 30.0 - t, "platelet") for t in range(4)
    ]
    table = cells(rows).assign(source="")  # analyze_frame's default source
    again = read_table(write_table(table, tmp_path / "cells.csv"))
    assert (again["source"] == "").all()
    in_memory, read_back = track_table(table), track_table(again)
    assert len(read_back.summary) == len(in_memory.summary) == 2
    pd.testing.assert_frame_equal(read_back.summary, in_memory.summary)
    with_nan = table.assign(source=np.nan)  # a table made elsewhere
    assert len(track_table(with_nan).summary) == 2


def test_write_tracking(tmp_path):
    rows = [(t, 1, 5.0, 5.0 + t, "wbc") for t in range(3)]
    written = write_tracking(track_table(cells(rows)), tmp_path)
    assert {p.name for p in written} >= {"tracks.csv", "track_summary.csv", "interactions.csv"}
    assert pd.read_csv(tmp_path / "tracks.csv").columns[:7].tolist() == [
        "track_id",
        "frame",
        "t_s",
        "centroid_y",
        "centroid_x",
        "cell_type",
        "cell_class",
    ]


def test_cell_types_are_matched_whatever_their_case():
    rows = [(t, 1, 5.0, 5.0 + t, "WBC ") for t in range(3)]  # a table edited by hand
    assert len(track_table(cells(rows)).summary) == 1


def test_tracking_tables_are_written_all_or_none(tmp_path, monkeypatch):
    """A full disk after the first table left one table, and the rerun refused it."""
    import napari_bloodcell.tracking as tracking

    result = track_table(cells([(t, 1, 5.0, 5.0 + t, "wbc") for t in range(3)]))
    written, original = [], tracking.write_table

    def write_until_full(table, path):
        if len(written) == 2:
            raise OSError(28, "No space left on device", str(path))
        written.append(path)
        return original(table, path)

    monkeypatch.setattr(tracking, "write_table", write_until_full)
    with pytest.raises(BloodcellError, match="No space left on device\\); none written"):
        write_tracking(result, tmp_path)
    assert not list(tmp_path.iterdir())  # no table, no partial file


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pd.DataFrame({"label": [1], "centroid_y": [1.0], "centroid_x": [1.0]}), "lacks column"),
        (cells([(0, 1, np.nan, 1.0, "wbc")]), "NaN"),
        (cells([(0, 1, 1.0, 1.0, "wbc"), (0, 1, 9.0, 9.0, "wbc")]), "same frame/label"),
        (cells([(-1, 1, 1.0, 1.0, "wbc")]), "frame"),
        (
            cells([(0, 1, 1.0, 1.0, "wbc"), (0, 2, 5.0, 5.0, "wbc")]).assign(source=["a", "b"]),
            "one time-lapse at a time",
        ),
    ],
)
def test_bad_tables_raise_tracking_error(table, message):
    with pytest.raises(TrackingError, match=message):
        track_table(table)


def test_bad_units_raise_tracking_error():
    with pytest.raises(TrackingError, match="pixel_size_um"):
        track_table(cells([(0, 1, 1.0, 1.0, "wbc")]), pixel_size_um=0.0)
    two_frames = cells([(0, 1, 1.0, 1.0, "wbc"), (1, 1, 2.0, 2.0, "wbc")])
    with pytest.raises(TrackingError, match="wbc_max_speed must be a positive number up to"):
        track_table(two_frames, params=TrackingParams(wbc_max_speed=1e308))  # OverflowError
    with pytest.raises(TrackingError, match="frame_interval_s must be a positive number up to"):
        track_table(two_frames, frame_interval_s=1e300)


def test_single_frame_gives_one_frame_tracks():
    result = track_table(cells([(0, 1, 1.0, 1.0, "wbc"), (0, 2, 50.0, 50.0, "platelet")]))
    assert result.tracks["track_id"].tolist() == [1, 2]
    assert result.summary["mean_speed_px_per_frame"].isna().all()
    assert result.msd.empty and result.interactions.empty


def test_empty_and_sparse_tables_give_valid_outputs():
    empty = track_table(cells([]))
    assert empty.tracks.empty and empty.summary.empty and empty.interactions.empty
    rbc_only = track_table(cells([(0, 1, 1.0, 1.0, "rbc")]))
    assert rbc_only.tracks.empty
    sparse = track_table(cells([(0, 1, 1.0, 1.0, "wbc"), (9, 1, 1.0, 1.0, "wbc")]))
    assert sparse.tracks["track_id"].nunique() == 2  # 8 empty frames: too long a gap


def test_still_cells_filmed_fast_stay_one_track_each():
    """At 2 s per frame a platelet's 5 µm/min reach is 0.17 µm, less than the wander of a
    still cell's centroid: 20 platelets broke into ~300 tracks."""
    rng = np.random.default_rng(0)
    home = rng.uniform(10, 190, size=(20, 2))
    rows = [
        (t, i + 1, *(home[i] + rng.normal(0, 0.3, 2)), "platelet")
        for t in range(30)
        for i in range(20)
    ]
    table = cells(rows).assign(diameter_px=6.0)
    result = track_table(table, pixel_size_um=0.5, frame_interval_s=2.0)
    assert result.tracks["track_id"].nunique() == 20


def test_a_contact_goes_on_across_a_frame_the_leukocyte_was_missed_in():
    rows = [(t, 1, 0.0, 5.0, "wbc") for t in range(10) if t != 5]
    rows += [(t, 2, 0.0, 5.5, "platelet") for t in range(10)]
    params = TrackingParams(contact_distance=2.0)
    events = track_table(cells(rows), frame_interval_s=10.0, params=params).interactions
    assert events[["start_frame", "end_frame", "n_frames"]].values.tolist() == [[0, 9, 9]]
    assert events["duration_s"].tolist() == [100.0]
    no_gaps = TrackingParams(contact_distance=2.0, max_gap_frames=0)
    assert len(track_table(cells(rows), params=no_gaps).interactions) == 2


def test_track_ids_do_not_depend_on_the_row_order():
    rows = [(t, i, 10.0 + 30 * i, 10.0 + t, "wbc") for t in range(4) for i in (1, 2, 3)]
    ordered = track_table(cells(rows)).tracks.set_index(["frame", "label"])["track_id"]
    shuffled = cells(rows).sample(frac=1.0, random_state=1)
    again = track_table(shuffled).tracks.set_index(["frame", "label"])["track_id"]
    pd.testing.assert_series_equal(again.sort_index(), ordered.sort_index())


def test_a_frame_far_away_costs_no_more_than_a_near_one():
    """laptrack takes one list per frame: a detection at frame 3·10⁷ took minutes and GBs."""
    rows = [(0, 1, 5.0, 5.0, "wbc"), (1, 1, 5.0, 6.0, "wbc"), (30_000_000, 1, 5.0, 6.0, "wbc")]
    tracks = track_table(cells(rows)).tracks
    assert tracks["track_id"].tolist() == [1, 1, 2]  # the far one is a track of its own


def _laptrack_with_its_own_gap_closing(group, step, max_gap_frames) -> np.ndarray:
    """Track index per row as laptrack links them, gap closing included (its search
    compares every track piece with every other: quadratic)."""
    from laptrack import LapTrack
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    cutoff = step**2
    costs = dict.fromkeys(
        ["track_start_cost", "track_end_cost", "segment_start_cost", "segment_end_cost"], cutoff
    )
    tracker = LapTrack(
        metric="sqeuclidean",
        cutoff=cutoff,
        gap_closing_cutoff=cutoff,
        gap_closing_max_frame_count=max_gap_frames + 1,
        splitting_cutoff=False,
        merging_cutoff=False,
        **costs,
    )
    frames = group["frame"].to_numpy()
    points = group[["_y", "_x"]].to_numpy(float)
    starts = np.searchsorted(frames, np.arange(frames[-1] + 2))
    graph = tracker.predict([points[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)])
    edges = np.array(
        [(starts[f1] + i1, starts[f2] + i2) for (f1, i1), (f2, i2) in graph.edges()]
    ).reshape(-1, 2)
    n = len(group)
    adjacency = coo_array((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(adjacency, directed=False)[1]


@pytest.mark.parametrize(("seed", "max_gap_frames"), [(0, 1), (1, 2), (2, 2), (3, 3)])
def test_gap_closing_links_as_laptrack_does(seed, max_gap_frames):
    """Gap closing is laptrack's assignment on candidates found by a k-d tree (laptrack's
    own search took 8 minutes for 40,000 fragmented platelet detections): the same tracks
    on drifting cells that drop out a quarter of the time, among random detections."""
    from napari_bloodcell.tracking.linking import _link_group

    rng = np.random.default_rng(seed)
    cells_at = rng.uniform(0, 150, (30, 2))
    rows = []
    for t in range(20):
        drift, jitter = rng.normal(0, 0.3, cells_at.shape), rng.normal(0, 1.5, cells_at.shape)
        moved = cells_at + t * drift + jitter
        seen = moved[rng.random(len(moved)) > 0.25]
        rows += [(t, y, x) for y, x in np.vstack([seen, rng.uniform(0, 150, (8, 2))])]
    group = pd.DataFrame(rows, columns=["frame", "_y", "_x"])
    frames, points = group["frame"].to_numpy(), group[["_y", "_x"]].to_numpy()
    ours = _link_group(frames, points, 6.0, max_gap_frames)
    theirs = _laptrack_with_its_own_gap_closing(group, 6.0, max_gap_frames)
    assert len(set(ours)) < len(set(_link_group(frames, points, 6.0, 0)))  # gaps closed …
    pairs = set(zip(ours, theirs, strict=True))  # … into the same tracks
    assert len(pairs) == len(set(ours)) == len(set(theirs))


def test_cell_types_tracking_does_not_know_are_refused_by_name():
    """A table of "neutrophil" rows (another tool's, or cell_class copied into cell_type)
    gave 0 tracks and exit 0: every row left out in silence."""
    rows = [(t, 1, 5.0, 5.0 + t, "neutrophil") for t in range(4)]
    rows += [(t, 2, 50.0, 5.0, "platelet") for t in range(4)] + [(0, 3, 9.0, 9.0, "RBC")]
    with pytest.raises(TrackingError, match=r"cell_type 'neutrophil' \(4 rows\) is none of wbc"):
        track_table(cells(rows))
    tracked = track_table(
        cells([(*row[:4], "wbc" if row[4] == "neutrophil" else row[4]) for row in rows])
    )
    assert tracked.tracks["cell_type"].value_counts().to_dict() == {"wbc": 4, "platelet": 4}


def test_input_columns_are_kept_whatever_their_names():
    """Linking kept its coordinates in columns "_y" and "_x" and then dropped them: a
    table's own columns of those names were lost."""
    table = cells([(t, 1, 5.0, 5.0 + t, "wbc") for t in range(3)]).assign(_y=[7, 8, 9])
    assert track_table(table).tracks["_y"].tolist() == [7, 8, 9]


def test_missing_classes_are_uncertain_votes_not_a_class_none():
    table = cells([(t, 1, 5.0, 5.0 + t, "wbc") for t in range(4)])
    table["cell_class"] = pd.Series(["neutrophil", None, None, None], dtype=object)
    assert track_table(table).summary["track_class"].tolist() == ["neutrophil"]
    table["cell_class"] = None
    assert track_table(table).summary["track_class"].tolist() == ["uncertain"]


def test_aggregate_sizes_stay_integers_in_frames_without_platelets():
    rows = [(0, 1, 5.0, 5.0, "wbc"), (1, 1, 5.0, 6.0, "wbc"), (1, 2, 5.0, 9.0, "platelet")]
    nearest = track_table(cells(rows)).nearest_platelet
    assert nearest["aggregate_size"].dtype == np.int64


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"msd_max_lag_frames": 20.5}, "msd_max_lag_frames must be an integer"),
        ({"max_gap_frames": None}, "max_gap_frames must be an integer"),
        ({"min_contact_frames": float("nan")}, "min_contact_frames must be an integer"),
    ],
)
def test_counts_in_the_parameters_are_whole_numbers(settings, message):
    with pytest.raises(TrackingError, match=message):
        TrackingParams(**settings)
    assert TrackingParams(msd_max_lag_frames=20.0).msd_max_lag_frames == 20  # used as a count
    track_table(
        cells([(t, 1, 5.0, 5.0 + t, "wbc") for t in range(3)]),
        params=TrackingParams(msd_max_lag_frames=2.0),
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (None, "expected a pandas DataFrame"),
        (
            cells([(0, 1, 1.0, 1.0, "wbc"), (0, 2, 5.0, 5.0, "wbc")]).assign(source=["a", None]),
            "2 sources",
        ),
        (
            cells([(0, 1, 1.0, 1.0, "wbc")]).assign(frame=pd.to_datetime(["2024-01-01"])),
            "frame column holds times",
        ),
    ],
)
def test_tables_that_are_not_one_time_lapse_of_frame_indices_are_refused(table, message):
    with pytest.raises(TrackingError, match=message):
        track_table(table)


def _two_frames(**columns) -> pd.DataFrame:
    return cells([(0, 1, 1.0, 1.0, "wbc"), (1, 1, 1.0, 2.0, "wbc")]).assign(**columns)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (_two_frames(confidence=["high", 0.9]), r"1 row\(s\) have a confidence that is not a num"),
        (_two_frames(confidence=[0.9, 90.0]), r"confidence that is not in \[0, 1\].*90\.0"),
        (_two_frames(diameter_px=["12 px", 12.0]), "diameter_px that is not a number"),
        (_two_frames(diameter_px=[0.0, 12.0]), "diameter_px that is not a positive number"),
        (_two_frames(diameter_px=[-12.0, 12.0]), "diameter_px that is not a positive number"),
        (_two_frames(label=[1.0, np.nan]), r"1 row\(s\) have no label \(rows \[1\]\)"),
    ],
)
def test_cells_with_unusable_numbers_are_refused_naming_the_rows(table, message):
    with pytest.raises(TrackingError, match=message):
        track_table(table)


def test_missing_confidences_and_diameters_are_allowed():
    table = _two_frames(confidence=[np.nan, 1.0 + 1e-7], diameter_px=[np.nan, 12.0])
    assert track_table(table).summary["n_detections"].tolist() == [2]


def test_checked_numbers_keep_their_float32(tmp_path):
    """Checking made napari's float32 features float64: 0.9 was written 0.8999999761581421."""
    table = _two_frames(
        confidence=np.array([0.9, 0.8], np.float32), diameter_px=np.array([15.3, 15.0], np.float32)
    )
    tracks = track_table(table).tracks
    assert tracks["confidence"].dtype == np.float32 and tracks["diameter_px"].dtype == np.float32


def test_ctc_export_needs_the_labels_of_the_tracked_cells(tmp_path):
    tracks = track_table(cells([(t, 1, 5.0, 5.0 + t, "wbc") for t in range(2)])).tracks
    stack = np.zeros((2, 16, 16), np.uint16)
    with pytest.raises(TrackingError, match="lacks column"):
        write_ctc(tmp_path, stack, tracks.drop(columns="label"))
    with pytest.raises(TrackingError, match="needs its label"):
        write_ctc(tmp_path, stack, tracks.assign(label=[1.0, np.nan]))


def _one_track_export(tmp_path, n_frames: int = 3, **options):
    stack = np.zeros((n_frames, 8, 8), np.uint16)
    stack[:, 2:4, 2:4] = 5
    tracks = pd.DataFrame({"frame": range(n_frames), "label": 5, "track_id": 1})
    return write_ctc(tmp_path, stack, tracks, **options), stack, tracks


def test_ctc_export_refuses_rows_that_are_not_cells_of_the_label_images(tmp_path):
    _, stack, tracks = _one_track_export(tmp_path / "ok")
    with pytest.raises(TrackingError, match=r"frame 1: label\(s\) \[7\] .* not in the label"):
        write_ctc(tmp_path / "a", stack, tracks.assign(label=[5, 7, 5]))
    with pytest.raises(TrackingError, match="share a frame and label"):
        write_ctc(tmp_path / "b", stack, pd.concat([tracks, tracks.iloc[:1]]))
    with pytest.raises(TrackingError, match="whole numbers"):
        write_ctc(tmp_path / "c", stack + 0.5, tracks)
    with pytest.raises(TrackingError, match="whole numbers >= 0"):
        write_ctc(tmp_path / "c", stack.astype(np.int32) - 1, tracks)
    with pytest.raises(TrackingError, match="whole numbers"):
        write_ctc(tmp_path / "c", np.where(stack > 0, np.inf, 0.0), tracks)
    folder = write_ctc(tmp_path / "d", stack.astype(np.float32), tracks)  # whole floats: fine
    assert tifffile.imread(folder / "mask001.tif").max() == 1


def test_ctc_export_never_mixes_with_an_earlier_one(tmp_path):
    _one_track_export(tmp_path, n_frames=6)
    with pytest.raises(OutputExistsError, match="already holds a CTC export"):
        _one_track_export(tmp_path, n_frames=3)
    assert len(list(tmp_path.glob("mask*.tif"))) == 6  # the earlier export untouched
    (tmp_path / "mask_vessels.tif").write_bytes(b"a user's file")
    _, stack, tracks = _one_track_export(tmp_path / "other")
    with pytest.raises(TrackingError, match="not in the label image"):  # refused: nothing
        write_ctc(tmp_path, stack, tracks.assign(label=7), overwrite=True)  # removed
    assert len(list(tmp_path.glob("mask0*.tif"))) == 6
    _one_track_export(tmp_path, n_frames=3, overwrite=True)
    masks = sorted(path.name for path in tmp_path.glob("mask*.tif"))
    assert masks == [f"mask00{t}.tif" for t in range(3)] + ["mask_vessels.tif"]
    assert (tmp_path / "res_track.txt").read_text().split() == ["1", "0", "2", "0"]


@pytest.mark.filterwarnings("ignore:(Label|Empty frame):UserWarning")  # py-ctcmetrics' own
def test_ctc_scores_refuse_results_they_cannot_score(tmp_path):
    pytest.importorskip("ctc_metrics")
    folder, stack, tracks = _one_track_export(tmp_path / "res")
    write_ctc(tmp_path / "gt", stack, tracks, ground_truth=True)
    assert ctc_scores(tmp_path / "gt", folder)["TRA"] == pytest.approx(1.0)
    write_ctc(tmp_path / "empty", stack, tracks.iloc[:0])
    with pytest.raises(TrackingError, match="holds no tracks to score"):
        ctc_scores(tmp_path / "gt", tmp_path / "empty")
    (folder / "res_track.txt").write_text("1 0 1 0\n")  # the masks contradict it
    with pytest.raises(TrackingError, match="not a valid CTC result"):
        ctc_scores(tmp_path / "gt", folder)


def test_assumed_diameters_are_cell_sized_at_any_magnification():
    """Without a diameter column 15 px was assumed even at 0.1 µm/px: a 1.5 µm leukocyte."""
    table = cells([(0, 1, 5.0, 5.0, "wbc"), (0, 2, 5.0, 9.0, "platelet")])
    result = track_table(table, pixel_size_um=0.1)
    assert result.contact_distance == pytest.approx(0.5 * (10.0 + 3.0))  # µm
    assert track_table(table).contact_distance == pytest.approx(0.5 * (15.0 + 4.0))  # px


def test_the_tracking_settings_are_written_beside_the_tables(tmp_path):
    """Only the tables were written: the settings they were made with were lost."""
    from importlib.metadata import version

    rows = [(t, 1, 5.0, 5.0 + t, "wbc") for t in range(3)]
    params = TrackingParams(wbc_max_speed=np.float64(30.0), min_contact_frames=3)
    result = track_table(cells(rows), pixel_size_um=0.5, frame_interval_s=10.0, params=params)
    written = write_tracking(result, tmp_path)
    assert tmp_path / "tracking.json" in written
    settings = json.loads((tmp_path / "tracking.json").read_text())
    assert settings["pixel_size_um"] == 0.5 and settings["frame_interval_s"] == 10.0
    assert settings["params"] == {
        "wbc_max_speed": 30.0,
        "platelet_max_speed": None,
        "max_gap_frames": 2,
        "contact_distance": None,
        "min_contact_frames": 3,
        "aggregate_distance": None,
        "min_aggregate_size": 3,
        "msd_max_lag_frames": 20,
    }
    assert settings["contact_distance"] == pytest.approx(result.contact_distance)
    assert settings["aggregate_distance"] == pytest.approx(result.aggregate_distance)
    assert settings["length_unit"] == "um" and settings["laptrack_version"] == version("laptrack")
    # the reach of a link as used: 30 µm/min over 10 s, and the fallback diameters (µm)
    assert settings["reach"]["wbc"] == pytest.approx({"median_diameter": 10.0, "max_step": 5.0})
    assert settings["reach"]["platelet"]["median_diameter"] == pytest.approx(3.0)
    # the settings alone are results too: never replaced unless asked
    for table in tmp_path.glob("*.csv"):
        table.unlink()
    with pytest.raises(OutputExistsError, match="tracking.json"):
        write_tracking(result, tmp_path)
    write_tracking(result, tmp_path, overwrite=True)


def _typed_cells(rows: list[tuple]) -> pd.DataFrame:
    """:func:`cells` with the column types of a table with rows, also without rows."""
    return cells([(0, 1, 0.0, 0.0, "wbc"), *rows]).iloc[1:].reset_index(drop=True)


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [(0, 1, 1.0, 1.0, "rbc")],
        [(0, 1, 1.0, 1.0, "wbc"), (0, 2, 50.0, 50.0, "platelet")],  # one frame: no MSD
        [(t, 1, 0.0, 5.0 + t, "wbc") for t in range(3)],  # no platelet: no contact
    ],
    ids=["no cells", "red cells only", "one frame", "no contact"],
)
def test_tables_without_rows_have_the_column_types_of_tables_with_rows(rows):
    full = [(t, 1, 0.0, 5.0, "wbc") for t in range(4)] + [
        (t, 2, 0.0, 5.5, "platelet") for t in range(4)
    ]
    params = TrackingParams(contact_distance=2.0)
    reference = track_table(_typed_cells(full), frame_interval_s=10.0, params=params)
    result = track_table(_typed_cells(rows), frame_interval_s=10.0, params=params)
    for name in ("tracks", "summary", "interactions", "nearest_platelet", "msd"):
        table, typed = getattr(result, name), getattr(reference, name)
        assert len(typed), name
        pd.testing.assert_series_equal(table.dtypes, typed.dtypes, obj=name)


def test_nearest_platelets_match_a_brute_force_search():
    rng = np.random.default_rng(3)
    rows = []
    for t in range(12):
        n_platelets = 0 if t == 4 else 15  # a frame without platelets
        leukocytes = 0 if t == 7 else 4  # and one without leukocytes
        for i, kind in enumerate(["wbc"] * leukocytes + ["platelet"] * n_platelets):
            rows.append((t, i + 1, *rng.uniform(0, 60, 2), kind))
    tracks = track_table(cells(rows)).tracks.sample(frac=1.0, random_state=0)  # any order
    nearest = nearest_platelets(
        tracks, Units(), contact_distance=6.0, aggregate_distance=8.0, min_aggregate_size=3
    )
    # platelets count in the frames their tracks bridge, at interpolated positions
    platelets = [tracks[tracks["cell_type"] == "platelet"]]
    for track_id, track in platelets[0].groupby("track_id"):
        missed = np.setdiff1d(np.arange(track["frame"].min(), track["frame"].max()), track["frame"])
        if len(missed):
            track = track.sort_values("frame")
            platelets.append(
                pd.DataFrame(
                    {
                        "track_id": track_id,
                        "frame": missed,
                        "centroid_y": np.interp(missed, track["frame"], track["centroid_y"]),
                        "centroid_x": np.interp(missed, track["frame"], track["centroid_x"]),
                    }
                )
            )
    platelets = pd.concat(platelets, ignore_index=True)
    assert len(platelets) > (tracks["cell_type"] == "platelet").sum()  # some were bridged
    expected = []
    for (track_id, frame), row in tracks.set_index(["track_id", "frame"]).iterrows():
        if row["cell_type"] != "wbc":
            continue
        here = platelets[platelets["frame"] == frame]
        points = here[["centroid_y", "centroid_x"]].to_numpy()
        distances = cdist([[row["centroid_y"], row["centroid_x"]]], points)[0]
        sizes = aggregate_sizes(points, 8.0) if len(points) else np.zeros(0, int)
        members = distances[sizes >= 3]
        expected.append(
            {
                "track_id": track_id,
                "frame": frame,
                "platelet_distance_px": distances.min() if len(points) else np.nan,
                "platelet_track_id": here["track_id"].iloc[distances.argmin()]
                if len(points)
                else -1,
                "aggregate_distance_px": members.min() if len(members) else np.nan,
                "aggregate_size": sizes[sizes >= 3][members.argmin()] if len(members) else 0,
            }
        )
    expected = pd.DataFrame(expected).sort_values(["track_id", "frame"]).reset_index(drop=True)
    assert len(expected) == 11 * 4 and (expected["platelet_track_id"] == -1).sum() < 4
    assert (expected["aggregate_size"] > 0).any() and (expected["aggregate_size"] == 0).any()
    pd.testing.assert_frame_equal(nearest[expected.columns], expected, check_dtype=False)
    assert nearest["in_contact"].tolist() == (expected["platelet_distance_px"] <= 6.0).tolist()


def test_msd_pairs_are_the_detections_exactly_lag_frames_apart():
    rows = [(t, 1, 0.0, float(t * t), "wbc") for t in (0, 1, 3)]  # frame 2 missed
    params = TrackingParams(wbc_max_speed=10.0)
    msd = track_table(cells(rows), params=params).msd.set_index("lag_frames")
    assert msd["n_pairs"].to_dict() == {1: 1, 2: 1, 3: 1}  # 1 → 3 is lag 2, not 1
    assert msd["msd_px2"].to_dict() == {1: 1.0, 2: 64.0, 3: 81.0}
