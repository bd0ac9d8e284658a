"""Tests of the demo's scoring and of where it may write (napari_bloodcell.demo); the
command itself runs end to end in test_cli."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from napari_bloodcell import demo
from napari_bloodcell.errors import BloodcellError, OutputExistsError
from napari_bloodcell.synthetic import make_smear, make_timelapse


def test_demo_refuses_a_folder_of_other_results(tmp_path):
    (tmp_path / "cells.csv").write_text("source,label\nmine.png,1\n")
    with pytest.raises(OutputExistsError, match="holds other files, not an earlier demo"):
        demo.run_demo(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.csv"]  # nothing written
    (tmp_path / "inputs").mkdir()  # an empty inputs/ beside a user's cells.csv was taken
    with pytest.raises(OutputExistsError, match="not an earlier demo"):  # for a demo's
        demo.run_demo(tmp_path)
    (tmp_path / "inputs" / "frame_001.png").write_bytes(b"")  # the user's own inputs
    with pytest.raises(OutputExistsError, match="not an earlier demo"):
        demo.run_demo(tmp_path)
    assert (tmp_path / "cells.csv").read_text() == "source,label\nmine.png,1\n"


def test_demo_refuses_a_users_results_beside_a_demos_inputs(tmp_path):
    """The folder counted as an earlier demo whenever inputs/ held only demo inputs,
    whatever else it held: the analysis then ran with overwrite on."""
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / demo.SMEAR_NAME).write_bytes(b"")
    (tmp_path / "my_notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not an earlier demo"):
        demo.run_demo(tmp_path)
    assert demo._earlier_demo(tmp_path) is False
    (tmp_path / "my_notes.txt").unlink()
    (tmp_path / "labels").mkdir()  # what an interrupted demo leaves
    assert demo._earlier_demo(tmp_path) is True
    stopped_early = tmp_path / "early"
    (stopped_early / "inputs").mkdir(parents=True)  # Ctrl-C before its first input
    assert demo._earlier_demo(stopped_early) is True


def test_demo_refuses_to_score_a_failed_analysis(tmp_path, monkeypatch):
    small = SimpleNamespace(image=np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setattr(demo, "make_smear", lambda seed: small)
    monkeypatch.setattr(demo, "make_timelapse", lambda n_frames, seed: small)
    failed = SimpleNamespace(failures={"synthetic_timelapse.tif": "out of memory"})
    monkeypatch.setattr(demo, "analyze_files", lambda *args, **kwargs: failed)
    with pytest.raises(BloodcellError, match="analysis failed.*out of memory"):
        demo.run_demo(tmp_path / "out")


def test_demo_movie_scores_follow_the_matching_conventions():
    movie = make_timelapse(3, (64, 96), n_leukocytes=2, n_platelets=4, seed=0)
    seen = movie.tracks[movie.tracks["visible"]]
    cells = pd.DataFrame(
        {"frame": seen["frame"], "label": seen["track_id"], "cell_type": seen["cell_type"]}
    )
    perfect = demo._movie_scores(movie, movie.labels, cells)
    assert (perfect[["precision", "recall", "f1"]] == 1.0).all().all()
    assert perfect.loc["all", "tp"] == len(seen)
    missed = demo._movie_scores(movie, np.zeros_like(movie.labels), cells.iloc[0:0])
    # nothing detected: precision 0 as in detection_by_type, not a perfect 1.0
    assert missed.loc["wbc", ["tp", "fp", "fn"]].tolist() == [0, 0, (seen.cell_type == "wbc").sum()]
    assert missed.loc["wbc", ["precision", "recall", "f1"]].tolist() == [0.0, 0.0, 0.0]


def test_demo_pairs_each_drawn_wbc_with_the_class_of_its_matched_cell():
    smear = make_smear(n_rbc=0, n_wbc=2, n_platelets=0, seed=0)
    predicted = np.where(smear.labels > 0, 3 - smear.labels, 0)  # same cells, labels swapped
    cells = pd.DataFrame({"label": [1, 2], "cell_class": ["basophil", "lymphocyte"]})
    pairs = demo._wbc_classes(smear, predicted, cells)
    true = smear.cells["wbc_class"].tolist()
    assert pairs == [
        {"label": 1, "true": true[0], "predicted": "lymphocyte"},
        {"label": 2, "true": true[1], "predicted": "basophil"},
    ]
    missed = demo._wbc_classes(smear, np.zeros_like(predicted), cells.iloc[0:0])
    assert [pair["predicted"] for pair in missed] == [None, None]
