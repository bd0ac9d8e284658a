"""The widgets end to end in a viewer: Analyze and Batch with a tiny model served by one
shared classifier worker process, Train classifier in a spawned process, and a shown viewer
with the real default model (TensorFlow never runs in the test process: with Mesa's
software OpenGL it segfaults next to a viewer)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from napari_bloodcell.classes import class_colours
from napari_bloodcell.errors import BloodcellError, TrackingError
from napari_bloodcell.synthetic import make_smear, make_timelapse

from .conftest import SHARED_DATA, requires_bccd
from .helpers import running_children, write_crop_folder

pytestmark = [pytest.mark.napari, pytest.mark.usefixtures("no_tensorflow_in_this_process")]

WAIT_MS = 90_000


@pytest.fixture(scope="module")
def tiny_user_model(tmp_path_factory):
    """A user data folder with a 1-epoch model 'tiny' (classes lobed, round), trained in a
    spawned process; one classifier worker for it is held for the whole module."""
    from napari_bloodcell._napari._widgets_common import CLASSIFIERS
    from napari_bloodcell.classification.model_files import user_models_dir
    from napari_bloodcell.classification.remote_training import TrainingDone, TrainingJob
    from napari_bloodcell.classification.training import TrainingConfig

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg")))
        data = write_crop_folder(tmp_path_factory.mktemp("crops"), n_per_class=12, seed=0)
        config = TrainingConfig(
            input_size=32, epochs=1, batch_size=8, validation_fraction=0.25, test_fraction=0.0
        )
        job = TrainingJob([data], "tiny", config, models_dir=user_models_dir())
        job.start()
        assert isinstance(list(job.events())[-1], TrainingDone)
        CLASSIFIERS.acquire("tests", "tiny")
        yield "tiny"
        CLASSIFIERS.release("tests")
    assert not CLASSIFIERS.users()
    assert not running_children()


def _run(widget, qtbot):
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def _track(widget, qtbot):
    widget.track()
    assert widget.track_worker is not None and not widget.track_button.enabled
    qtbot.waitUntil(lambda: widget.track_worker is None, timeout=WAIT_MS)


@pytest.fixture(scope="module")
def smear():
    return make_smear(n_rbc=16, n_wbc=2, n_platelets=4, seed=1)


def test_analyze_widget_adds_then_updates_class_coloured_layers(
    make_napari_viewer, qtbot, tiny_user_model, smear
):
    from napari.utils.colormaps import DirectLabelColormap

    from napari_bloodcell._napari._analyze import AnalyzeWidget
    from napari_bloodcell._napari._layers import class_colours

    viewer = make_napari_viewer()
    image = viewer.add_image(smear.image, rgb=True, name="smear", scale=(0.5, 0.5))
    image.translate = (3.0, 4.0)
    widget = AnalyzeWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = image
    widget.model.value = tiny_user_model
    _run(widget, qtbot)

    instances, classes, cells = viewer.layers[1:]
    assert [type(layer).__name__ for layer in (instances, classes, cells)] == [
        "Labels",
        "Labels",
        "Points",
    ]
    for layer in (instances, classes, cells):
        np.testing.assert_allclose(layer.scale, (0.5, 0.5))
        np.testing.assert_allclose(layer.translate, (3.0, 4.0))
    features = cells.features
    assert len(features) == instances.data.max() > 0
    assert isinstance(features["cell_class"].dtype, pd.CategoricalDtype)
    assert {"p_lobed", "p_round"} <= set(features.columns)
    wbc = features[features["cell_type"] == "wbc"]
    assert set(wbc["cell_class"]) <= {"lobed", "round", "uncertain"} and len(wbc)
    assert wbc["novelty"].isna().all()  # a model trained on 24 crops has no novelty reference
    colours = class_colours(list(features["cell_class"].cat.categories))
    expected = np.array([_rgba(colours[c]) for c in features["cell_class"]])
    np.testing.assert_allclose(cells.face_color, expected, atol=1e-6)
    assert isinstance(classes.colormap, DirectLabelColormap)
    rbc_value = classes.data[instances.data == int(features.loc[0, "label"])][0]
    np.testing.assert_allclose(classes.colormap.map(rbc_value), expected[0], atol=1e-3)
    assert "lobed" in widget.legend.value and "rbc" in widget.legend.value

    first = list(viewer.layers)
    assert (wbc["confidence"] < 1).all()  # a class is decided at a confidence ≥ the threshold
    widget.uncertain_threshold.value = 1.0  # so every answer of this model is "uncertain"
    _run(widget, qtbot)
    assert list(viewer.layers) == first  # the same layers, updated in place
    assert set(cells.features.loc[cells.features["cell_type"] == "wbc", "cell_class"]) == {
        "uncertain"
    }
    params = cells.metadata["napari_bloodcell"]["parameters"]
    assert params["model"]["name"] == "tiny" and params["uncertain_threshold"] == 1.0


def test_the_uncertain_threshold_follows_the_model_file_until_the_user_edits_it(
    make_napari_viewer, tiny_user_model, smear, tmp_path, monkeypatch
):
    """A model's 0.375 was shown and used as 0.38; a model file rewritten in place (by
    ``calibrate`` or a retrain) was reloaded but its old threshold used."""
    from napari_bloodcell._napari._analyze import AnalyzeWidget
    from napari_bloodcell.classification.model_files import (
        read_metadata,
        resolve_model_path,
        update_metadata,
        user_models_dir,
    )

    from .helpers import model_copy

    tiny = resolve_model_path(tiny_user_model)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    user_models_dir().mkdir(parents=True)
    model = model_copy(tiny, user_models_dir(), uncertain_threshold=0.375)

    def rewrite(threshold: float) -> None:  # as calibrate does: the same path, a new file
        time.sleep(0.05)  # file times are coarse: the new file must get a new one
        metadata = read_metadata(model)
        metadata.uncertain_threshold = threshold
        update_metadata(model, metadata)

    viewer = make_napari_viewer()
    viewer.add_image(smear.image, rgb=True)
    widget = AnalyzeWidget(viewer)
    widget.model.value = model.stem
    assert widget.uncertain_threshold.value == 0.375
    assert widget.job().parameters()["uncertain_threshold"] == 0.375

    rewrite(0.625)
    parameters = widget.job().parameters()
    assert parameters["uncertain_threshold"] == parameters["model"]["uncertain_threshold"] == 0.625
    assert widget.uncertain_threshold.value == 0.625  # shown as it is used

    widget.uncertain_threshold.value = 0.7  # the user's choice stays
    rewrite(0.25)
    parameters = widget.job().parameters()
    assert parameters["uncertain_threshold"] == 0.7
    assert parameters["model"]["uncertain_threshold"] == 0.25
    widget.model.value = None
    widget.model.value = model.stem  # picking a model shows its own threshold again
    assert widget.uncertain_threshold.value == 0.25
    assert widget.job().parameters()["uncertain_threshold"] == 0.25


def test_a_run_whose_cells_look_unfamiliar_ends_with_a_warning(make_napari_viewer, notifications):
    from napari_bloodcell._napari._analyze import AnalyzeWidget

    viewer = make_napari_viewer()
    widget = AnalyzeWidget(viewer)
    features = pd.DataFrame(
        {
            "cell_type": ["rbc"] * 50 + ["wbc"] * 202,
            "novelty": [np.nan] * 50 + [0.5] * 200 + [3.0] * 2,
        }
    )  # 1 % of the white cells: as expected
    widget._cells_layer = viewer.add_points(np.zeros((252, 2)), features=features)
    widget._on_finished()
    assert not notifications
    features = pd.DataFrame(  # most white cells unlike the training images; platelets ignored
        {"cell_type": ["wbc"] * 40 + ["platelet"] * 40, "novelty": [0.5] * 10 + [3.0] * 70}
    )
    widget._cells_layer = viewer.add_points(np.zeros((80, 2)), features=features)
    widget._on_finished()
    assert notifications[-1][0] == "warning" and "30 of 40 white cells" in notifications[-1][1]


def _rgba(hex_colour: str) -> list[float]:
    from matplotlib.colors import to_rgba

    return list(to_rgba(hex_colour))


def test_analyze_widget_uses_the_current_frame_of_a_stack(make_napari_viewer, qtbot):
    from napari_bloodcell._napari._analyze import AnalyzeWidget

    movie = make_timelapse(n_frames=3, shape=(64, 96), n_leukocytes=2, n_platelets=3, seed=2)
    viewer = make_napari_viewer()
    viewer.add_image(movie.image, rgb=True, name="movie", scale=(10.0, 1.0, 1.0))
    viewer.dims.set_current_step(0, 2)
    widget = AnalyzeWidget(viewer)
    widget.model.value = None
    _run(widget, qtbot)
    cells, instances = viewer.layers["movie cells"], viewer.layers["movie instances"]
    assert set(cells.features["frame"]) == {2}
    assert set(cells.features["cell_class"]) <= {"leukocyte", "platelet"}
    # shown at that frame only (it was shown over every frame): one plane at t = 2
    assert instances.data.shape == (1, 64, 96) and cells.ndim == 3
    for layer in (cells, instances):
        assert layer.translate[0] == 20.0 and layer.scale[0] == 10.0
    assert {float(cells.data_to_world(point)[0]) for point in cells.data} == {20.0}


def test_a_point_added_after_deleting_one_or_to_an_empty_layer_is_refused(
    make_napari_viewer, qtbot
):
    """napari gives a new point the row of the point selected last: one added after
    deleting a cell carried that cell's label and class, and was exported as a cell; one
    added to a layer without cells was exported with label 0."""
    from napari_bloodcell._napari._analyze import AnalyzeWidget
    from napari_bloodcell._napari._layers import cells_table

    movie = make_timelapse(n_frames=1, shape=(64, 96), n_leukocytes=2, n_platelets=3, seed=2)
    viewer = make_napari_viewer()
    viewer.add_image(movie.image[0], rgb=True, name="frame")
    viewer.add_image(
        np.random.default_rng(0).integers(0, 3, (64, 96, 3)).astype(np.uint8), name="blank"
    )
    widget = AnalyzeWidget(viewer)
    widget.model.value = None
    _run(widget, qtbot)
    cells = viewer.layers["frame cells"]
    cells.selected_data = {1}
    cells.remove_selected()
    cells.add([[5.0, 5.0]])
    with pytest.raises(BloodcellError, match=f"point\\(s\\) {len(cells.data) - 1} were added"):
        cells_table(cells.data, cells.features, cells.metadata)
    widget.image.value = viewer.layers["blank"]
    _run(widget, qtbot)
    empty = viewer.layers["blank cells"]
    assert len(empty.data) == 0
    empty.add([[5.0, 5.0]])
    with pytest.raises(BloodcellError, match="were added by hand"):
        cells_table(empty.data, empty.features, empty.metadata)


def test_the_lists_follow_renamed_layers_and_new_models_in_order(
    make_napari_viewer, tmp_path, monkeypatch
):
    """A renamed image layer kept its old name in the list (and lost its choice); a model
    saved from a terminal was listed after "none (segmentation only)"."""
    from napari_bloodcell._napari._analyze import AnalyzeWidget
    from napari_bloodcell.classification.model_files import user_models_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)), name="a")
    second = viewer.add_image(np.zeros((32, 32)), name="b")
    widget = AnalyzeWidget(viewer)
    widget.image.value = second
    widget.model.value = None
    second.name = "renamed"
    combo = widget.image.native
    assert [combo.itemText(i) for i in range(combo.count())] == ["a", "renamed"]
    assert widget.image.value is second
    user_models_dir().mkdir(parents=True)
    (user_models_dir() / "mylab.keras").write_bytes(b"")  # e.g. `napari-bloodcell train`
    viewer.add_image(np.zeros((32, 32)), name="c")  # the lists are refreshed
    assert widget.model.choices[-2:] == ("mylab", None) and widget.model.value is None


def test_results_take_the_units_and_rotation_of_the_image(make_napari_viewer, qtbot, smear):
    """Results in pixels beside an image in µm turned napari's units off for every layer
    ("Inconsistent units across layers"); a rotated image's cells landed elsewhere."""
    from napari_bloodcell._napari._analyze import AnalyzeWidget

    viewer = make_napari_viewer()
    image = viewer.add_image(
        smear.image, rgb=True, name="smear", scale=(0.5, 0.5), units=("um", "um"), rotate=30
    )
    widget = AnalyzeWidget(viewer)
    widget.model.value = None
    _run(widget, qtbot)
    cells = viewer.layers["smear cells"]
    for layer in viewer.layers[1:]:
        assert layer.units == image.units
        np.testing.assert_allclose(layer.rotate, image.rotate)
    centroid = cells.features.loc[0, ["centroid_y", "centroid_x"]].to_numpy(dtype=float)
    np.testing.assert_allclose(cells.data_to_world(cells.data[0]), image.data_to_world(centroid))


def test_a_layer_scale_no_microscope_has_is_named_as_the_cause(
    make_napari_viewer, smear, notifications
):
    """A layer in mm entered as µm (0.0005 µm per pixel) failed with "pixel_size_um must be
    …", a setting the user never gave."""
    from napari_bloodcell._napari._analyze import AnalyzeWidget

    viewer = make_napari_viewer()
    viewer.add_image(smear.image, rgb=True, name="smear", scale=(5e-4, 5e-4), units=("um", "um"))
    widget = AnalyzeWidget(viewer)
    widget.model.value = None
    widget.run()
    assert notifications[-1][0] == "error", notifications
    assert "layer 'smear': its scale gives 0.0005 µm per pixel" in notifications[-1][1]
    assert widget.worker is None


def test_one_cell_type_left_out_keeps_the_other_and_pixel_sizes_keep_their_digits(
    make_napari_viewer, qtbot
):
    from napari_bloodcell._napari._analyze import AnalyzeWidget
    from napari_bloodcell._napari._compute import NO_CHANNEL

    movie = make_timelapse(n_frames=1, shape=(64, 96), n_leukocytes=2, n_platelets=3, seed=2)
    viewer = make_napari_viewer()
    viewer.add_image(movie.image[0], rgb=True, name="frame")
    widget = AnalyzeWidget(viewer)
    widget.model.value = None
    widget.modality.value = "fluorescence"
    widget.leukocyte_channel.value = NO_CHANNEL  # platelets stay on their default channel
    widget.pixel_size.value = 0.0325  # 20× finer than the defaults expect: no cell found
    assert widget.pixel_size.value == 0.0325
    _run(widget, qtbot)  # no model and no cell: the layers are still made
    assert len(viewer.layers["frame cells"].data) == 0
    widget.pixel_size.value = 0.0
    _run(widget, qtbot)
    classes = viewer.layers["frame cells"].features["cell_class"]
    assert len(classes) > 0 and set(classes) == {"platelet"}


def test_the_channel_lists_offer_every_channel_of_the_image(make_napari_viewer):
    """The channel lists offered channels 0–7 only: channel 8 and up of a hyperstack could
    not be chosen."""
    from napari_bloodcell._napari._analyze import AnalyzeWidget
    from napari_bloodcell._napari._compute import NO_CHANNEL

    viewer = make_napari_viewer()
    widget = AnalyzeWidget(viewer)
    at_least = (None, NO_CHANNEL, *range(8))
    assert widget.leukocyte_channel.choices == at_least  # no image
    viewer.add_image(np.zeros((2, 12, 32, 32), np.float32), name="hyperstack")
    assert widget.leukocyte_channel.choices == at_least  # its axes are not known yet
    widget.axes.value = "TCYX"
    assert widget.platelet_channel.choices == (None, NO_CHANNEL, *range(12))
    widget.leukocyte_channel.value = 11
    assert widget.settings(12).channels["leukocyte"] == 11
    viewer.add_image(np.zeros((32, 32, 3), np.float32), rgb=True, name="rgb")
    widget.image.value, widget.axes.value = viewer.layers["rgb"], ""
    assert widget.leukocyte_channel.choices == at_least
    assert widget.leukocyte_channel.value is None  # channel 11 is gone: back to the default


@pytest.fixture
def dask_movie():
    import dask.array as da

    movie = make_timelapse(n_frames=6, shape=(64, 96), n_leukocytes=2, n_platelets=4, seed=4)
    return da.from_array(movie.image, chunks=(1, 64, 96, 3))


def test_batch_widget_processes_a_dask_stack_frame_by_frame(
    make_napari_viewer, qtbot, dask_movie, tmp_path, notifications
):
    from napari_bloodcell._napari._batch import BatchWidget
    from napari_bloodcell._napari._label_frames import LabelFramesView
    from napari_bloodcell.table import read_table

    viewer = make_napari_viewer()
    viewer.add_image(dask_movie, rgb=True, name="movie", scale=(5.0, 0.5, 0.5))
    widget = BatchWidget(viewer)
    widget.model.value = None
    _run(widget, qtbot)
    instances = viewer.layers["movie stack instances"]
    cells = viewer.layers["movie stack cells"]
    assert instances.data.shape == viewer.layers["movie stack classes"].data.shape == (6, 64, 96)
    np.testing.assert_allclose(instances.scale, (5.0, 0.5, 0.5))
    np.testing.assert_array_equal(cells.data[:, 0], cells.features["frame"])
    assert set(cells.features["frame"]) <= set(range(6))
    assert widget.plot.axes.get_lines() and widget.status.value.startswith("finished: 6/6")
    # the label stacks stay compressed in memory (issue 7) and can still be painted on
    assert isinstance(instances.data, LabelFramesView)
    instances.brush_size = 3
    instances.paint((2, 10, 10), 999)
    assert instances.data[2, 10, 10] == 999 and instances.data[1, 10, 10] != 999
    instances.undo()
    assert instances.data[2, 10, 10] != 999

    widget.frame_interval.value = 10.0
    widget.max_speeds["platelet"].value = 30.0
    _track(widget, qtbot)  # link the cells into a Tracks layer coloured by track class
    assert widget.tracking.params.platelet_max_speed == 30.0
    assert widget.tracking.params.wbc_max_speed is None  # 0: the default
    tracks = viewer.layers["movie tracks"]
    assert tracks.data.shape[1] == 4 and len(tracks.data) == len(widget.tracking.tracks)
    codes = ["track_class_code", "cell_type_code", "cell_class_code"]
    assert {*codes, "frame"} <= set(tracks.features.columns)
    # only numbers: napari offers every feature to colour by and fails on text
    assert all(pd.api.types.is_numeric_dtype(dtype) for dtype in tracks.features.dtypes)
    names = tracks.metadata["napari_bloodcell"]["categories"]["track_class"]
    track_classes = [names[int(code * len(names))] for code in tracks.features[codes[0]]]
    assert set(track_classes) <= {"leukocyte", "platelet"}
    by_track = pd.Series(track_classes).groupby(tracks.features["track_id"]).first()
    voted = widget.tracking.summary.set_index("track_id")["track_class"]
    assert by_track.to_dict() == voted.to_dict()
    assert tracks.color_by == "track_class_code"
    # each track drawn in its class's fixed colour, and the controls name that colormap
    colours = class_colours(sorted(set(track_classes)))
    expected = [to_rgba(colours[name]) for name in track_classes]
    np.testing.assert_allclose(tracks.track_colors, expected, atol=1e-6)
    assert tracks.colormap.startswith("bloodcell tracks: ")
    np.testing.assert_allclose(tracks.scale, (5.0, 0.5, 0.5))
    _track(widget, qtbot)  # again: the same layer is updated, not a second one added
    assert sum(layer.name.endswith("tracks") for layer in viewer.layers) == 1
    assert tracks.color_by == "track_class_code"

    widget.export_file.value = tmp_path / "cells.csv"
    widget.export()
    assert (tmp_path / "cells.csv").is_file() and (tmp_path / "cells.json").is_file()
    assert (tmp_path / "cells_tracking" / "tracks.csv").is_file()
    widget.export_file.value = tmp_path / "run.2.csv"  # every dot of the name is kept
    assert widget.export()
    assert (tmp_path / "run.2.json").is_file() and (tmp_path / "run.2_tracking").is_dir()
    widget.export()  # a second click must not overwrite
    assert any(kind == "warning" and "already exist" in text for kind, text in notifications[-2:])
    widget.export_file.value = ""  # no file chosen: a warning, nothing written
    assert not widget.export() and "choose a table file" in notifications[-1][1]
    cells.add([[2, 20, 20]])  # a point added by hand: no segmented cell behind it
    widget.track()
    assert widget.track_worker is None and "added by hand" in notifications[-1][1]
    cells.selected_data = {len(cells.data) - 1}
    cells.remove_selected()
    _track(widget, qtbot)
    cells.features.loc[0, "diameter_px"] += 1.0  # edited after tracking: tracks are stale
    widget.export_file.value = tmp_path / "edited.csv"
    assert widget.export() and not (tmp_path / "edited_tracking").exists()
    assert (tmp_path / "edited.csv").is_file() and "changed since" in notifications[-2][1]
    _run(widget, qtbot)  # a new batch: the tracks of the last one are not its tracks
    assert widget.tracking is None
    assert tracks.name == "movie tracks (earlier run)"  # kept, never updated again
    widget.export_file.value = tmp_path / "again.csv"
    assert widget.export() and not (tmp_path / "again_tracking").exists()

    viewer.layers.selection = {cells}  # File → Save Selected Layers with our writer
    saved = viewer.layers.save(
        str(tmp_path / "saved.csv"), selected=True, plugin="napari-bloodcell"
    )
    assert saved and len(read_table(tmp_path / "saved.csv")) == len(cells.features)


def _tracked_movie(make_napari_viewer, qtbot):
    """A viewer with a 3-frame movie batch-analysed and tracked: viewer, widget, tracks."""
    from napari_bloodcell._napari._batch import BatchWidget

    movie = make_timelapse(n_frames=3, shape=(64, 96), n_leukocytes=1, n_platelets=3, seed=4)
    viewer = make_napari_viewer()
    viewer.add_image(movie.image, rgb=True, name="movie")
    widget = BatchWidget(viewer)
    widget.model.value = None
    _run(widget, qtbot)
    _track(widget, qtbot)
    return viewer, widget, viewer.layers["movie tracks"]


def test_a_new_batch_leaves_a_copy_of_the_tracks_layer_alone(make_napari_viewer, qtbot):
    """The copy (Layers → Duplicate, renamed) carries the plugin's key: the next batch
    renamed it "… (earlier run)" and stripped its key, as if it were the plugin's."""
    from napari.layers._layer_actions import _duplicate_layer

    viewer, widget, tracks = _tracked_movie(make_napari_viewer, qtbot)
    viewer.layers.selection = {tracks}
    _duplicate_layer(viewer.layers)
    copy = viewer.layers[-1]
    copy.name = "my curated tracks"
    metadata = dict(copy.metadata)
    _run(widget, qtbot)
    assert copy.name == "my curated tracks" and copy.metadata == metadata
    assert tracks.name == "movie tracks (earlier run)"


def test_tracking_cells_without_leukocytes_or_platelets_adds_no_tracks_layer(
    make_napari_viewer, qtbot, tmp_path
):
    """No leukocyte or platelet: napari failed to make a Tracks layer of no point (an
    IndexError, not a notification) and the status stayed 'tracking…'."""
    from napari_bloodcell.table import read_table

    viewer, widget, tracks = _tracked_movie(make_napari_viewer, qtbot)
    cells = viewer.layers["movie stack cells"]
    cells.features = cells.features.assign(cell_type="rbc")  # all of them red cells now
    _track(widget, qtbot)
    assert widget.status.value == "no leukocytes or platelets to track"
    assert tracks.name == "movie tracks (earlier run)"  # not these cells' tracks
    assert [layer.name for layer in viewer.layers].count("movie tracks") == 0
    assert widget.tracking is not None and widget.tracking.tracks.empty
    widget.export_file.value = tmp_path / "cells.csv"
    assert widget.export()  # the empty tracking tables, with their settings
    assert read_table(tmp_path / "cells_tracking" / "tracks.csv").empty
    assert (tmp_path / "cells_tracking" / "tracking.json").is_file()


def test_results_line_up_with_a_layer_whose_channels_are_a_slider(
    make_napari_viewer, qtbot, notifications, monkeypatch
):
    from napari_bloodcell._napari._batch import BatchWidget

    movie = make_timelapse(n_frames=4, shape=(64, 96), n_leukocytes=2, n_platelets=4, seed=4)
    viewer = make_napari_viewer()
    viewer.add_image(movie.image.transpose(0, 3, 1, 2), name="tcyx")  # T C Y X, not RGB
    widget = BatchWidget(viewer)
    widget.model.value = None
    widget.axes.value = "TCYX"
    _run(widget, qtbot)
    instances, cells = viewer.layers["tcyx stack instances"], viewer.layers["tcyx stack cells"]
    assert instances.data.shape == (4, 1, 64, 96) and cells.ndim == 4
    for t, c in [(3, 2), (1, 0), (2, 1)]:  # every channel shows the frame on the T slider
        viewer.dims.current_step = (t, c, 0, 0)
        t_data, c_data = np.round(instances.world_to_data(viewer.dims.point)[:2])
        assert (t_data, c_data) == (t, 0)
        np.testing.assert_array_equal(instances._slice.image.raw, instances.data[t, 0])
        assert instances.data[t, 0].any()
    _track(widget, qtbot)
    assert viewer.layers["tcyx tracks"].data.shape[1] == 5  # id, t, c, y, x

    def failing(*_args):
        raise TrackingError("no cell to link")

    monkeypatch.setattr("napari_bloodcell.tracking.track_table", failing)
    _track(widget, qtbot)  # a failure is a notification, and the button works again
    assert notifications[-1] == ("error", "tracking failed: no cell to link")
    assert widget.track_button.enabled


def test_a_batch_without_model_and_without_cells_finishes(make_napari_viewer, qtbot):
    from napari_bloodcell._napari._batch import BatchWidget

    movie = make_timelapse(n_frames=3, shape=(64, 96), n_leukocytes=2, n_platelets=3, seed=2)
    viewer = make_napari_viewer()
    viewer.add_image(movie.image, rgb=True, name="movie")
    widget = BatchWidget(viewer)
    widget.model.value = None
    widget.pixel_size.value = 0.0325  # 20× finer than the defaults expect: no cell found
    _run(widget, qtbot)
    assert widget.status.value.startswith("finished: 3/3 frames, 0 cells")
    assert len(viewer.layers["movie stack cells"].data) == 0 and widget.run_button.enabled


def test_analyze_takes_the_axes_of_a_channels_first_frame(make_napari_viewer, qtbot):
    from napari_bloodcell._napari._analyze import AnalyzeWidget

    movie = make_timelapse(n_frames=1, shape=(64, 96), n_leukocytes=2, n_platelets=4, seed=4)
    viewer = make_napari_viewer()
    viewer.add_image(movie.image[0].transpose(2, 0, 1), name="cyx")  # 3 channels, not RGB
    widget = AnalyzeWidget(viewer)
    widget.model.value = None
    widget.axes.value = "CYX"  # without axes, (3, Y, X) is refused: frames or channels?
    _run(widget, qtbot)
    cells = viewer.layers["cyx cells"]
    assert set(cells.features["cell_class"]) == {"leukocyte", "platelet"}
    assert viewer.layers["cyx instances"].data.shape == (1, 64, 96)


def test_cancelling_a_batch_keeps_exactly_the_finished_frames(
    make_napari_viewer, qtbot, dask_movie, notifications
):
    from napari_bloodcell._napari._batch import BatchWidget

    def slow(block):  # a slow reader gives the viewer time to cancel mid-batch
        time.sleep(0.4)
        return block

    viewer = make_napari_viewer()
    viewer.add_image(dask_movie.map_blocks(slow), rgb=True, name="movie")
    widget = BatchWidget(viewer)
    widget.model.value = None
    widget.run()
    widget.track()  # before its first frame is shown: the batch is running, not missing
    assert "still running" in notifications[-1][1]
    widget.worker.yielded.connect(lambda _: widget.cancel())
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)

    instances = viewer.layers["movie stack instances"]
    done = instances.data.shape[0]
    assert 1 <= done < 6
    assert viewer.layers["movie stack classes"].data.shape[0] == done
    cells = viewer.layers["movie stack cells"]
    assert set(cells.features["frame"]) <= set(range(done))
    assert cells.metadata["napari_bloodcell"]["parameters"]["frames"] == done
    assert widget.status.value.startswith("cancelled")
    widget.run()  # a new run completes and updates the same layers
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert viewer.layers["movie stack instances"] is instances and instances.data.shape[0] == 6


def test_a_cancelled_batch_rerun_keeps_the_earlier_result(
    make_napari_viewer, qtbot, dask_movie, tmp_path
):
    """A re-run writes into layers of its own until it finishes: a full result was replaced
    by the one frame of a re-run cancelled at once (a user's result overwritten unasked)."""
    from napari_bloodcell.table import read_table

    viewer, image, widget = _movie_batched_once(make_napari_viewer, qtbot, dask_movie)
    earlier = list(viewer.layers)
    instances, _, cells = earlier[1:]
    kept, legend = cells.features.copy(), widget.legend.value
    image.data = dask_movie.map_blocks(_slow)
    widget.pixel_size.value = 0.25
    widget.run()
    widget.worker.yielded.connect(lambda _: widget.cancel())
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)

    assert list(viewer.layers)[:4] == earlier and instances.data.shape[0] == 6
    assert cells.features.equals(kept)
    assert cells.metadata["napari_bloodcell"]["parameters"]["pixel_size_um"] is None
    cancelled = list(viewer.layers)[4:]
    assert [layer.name for layer in cancelled] == [
        f"movie stack {role} (cancelled run)" for role in ("instances", "classes", "cells")
    ]
    assert 1 <= cancelled[0].data.shape[0] < 6
    # Export and Track cells act on the kept result (they took the cancelled run's cells)
    assert widget._cells_layer is cells and widget.legend.value == legend
    assert all("key" not in layer.metadata["napari_bloodcell"] for layer in cancelled)
    assert widget.status.value.startswith("cancelled") and "earlier result is kept" in (
        widget.status.value
    )
    _track(widget, qtbot)
    assert widget._tracked_cells[0] is cells
    widget.export_file.value = tmp_path / "kept.csv"
    assert widget.export() and len(read_table(tmp_path / "kept.csv")) == len(kept)
    _run(widget, qtbot)  # a re-run that finishes updates the earlier result's layers
    assert list(viewer.layers)[: len(earlier) + 3] == [*earlier, *cancelled]
    assert instances.data.shape[0] == 6 and widget._cells_layer is cells
    assert cells.metadata["napari_bloodcell"]["parameters"]["pixel_size_um"] == 0.25


def _slow(block):  # a slow reader gives the viewer time to act mid-batch
    time.sleep(0.4)
    return block


def _movie_batched_once(make_napari_viewer, qtbot, dask_movie):
    """A viewer with the movie and a Batch widget (no model, every frame shown) that has
    analysed it once: (viewer, image layer, widget)."""
    from napari_bloodcell._napari._batch import BatchWidget

    viewer = make_napari_viewer()
    image = viewer.add_image(dask_movie, rgb=True, name="movie")
    widget = BatchWidget(viewer)
    widget.model.value = None
    widget.display_interval_s = 0.0
    _run(widget, qtbot)
    return viewer, image, widget


def test_a_cancelled_batch_rerun_keeps_the_earlier_result_s_tracking(
    make_napari_viewer, qtbot, dask_movie, tmp_path, notifications
):
    """A re-run forgot the tracking and released the tracks layer as it started: cancelled,
    the kept result's export wrote no tracking tables (no warning) and its own tracks
    layer was named "(earlier run)"."""
    viewer, image, widget = _movie_batched_once(make_napari_viewer, qtbot, dask_movie)
    _track(widget, qtbot)
    tracking, tracks = widget.tracking, viewer.layers["movie tracks"]
    image.data = dask_movie.map_blocks(_slow)
    widget.run()
    widget.worker.yielded.connect(lambda _: widget.cancel())
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)

    assert widget.status.value.startswith("cancelled") and widget.tracking is tracking
    assert tracks.name == "movie tracks" and "key" in tracks.metadata["napari_bloodcell"]
    widget.export_file.value = tmp_path / "kept.csv"
    assert widget.export() and (tmp_path / "kept_tracking").is_dir(), notifications
    _run(widget, qtbot)  # a re-run that finishes: the earlier tracking is not its
    assert widget.tracking is None and tracks.name == "movie tracks (earlier run)"


def test_a_cancelled_rerun_of_one_image_does_not_keep_another_image_s_tracking(
    make_napari_viewer, qtbot, dask_movie, tmp_path, notifications
):
    """Kept through a cancelled re-run of image b, the tracking of image a made Export of
    b's kept result warn "the cells changed since they were tracked" (b was never tracked)."""
    from napari_bloodcell._napari._batch import BatchWidget

    viewer = make_napari_viewer()
    a = viewer.add_image(dask_movie, rgb=True, name="a")
    b = viewer.add_image(dask_movie, rgb=True, name="b")
    widget = BatchWidget(viewer)
    widget.model.value = None
    widget.display_interval_s = 0.0
    widget.image.value = b
    _run(widget, qtbot)
    widget.image.value = a
    _run(widget, qtbot)
    _track(widget, qtbot)
    b.data = dask_movie.map_blocks(_slow)
    widget.image.value = b
    widget.run()
    widget.worker.yielded.connect(lambda _: widget.cancel())
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.tracking is None and widget._cells_layer is viewer.layers["b stack cells"]
    widget.export_file.value = tmp_path / "b.csv"
    assert widget.export() and not (tmp_path / "b_tracking").exists()
    assert not [m for kind, m in notifications if "since they were tracked" in m]


def test_closing_the_batch_widget_during_a_rerun_hands_its_layers_over(
    make_napari_viewer, qtbot, dask_movie
):
    """Closed mid-re-run, its layers stayed "… (running)" with live keys: the next re-run of
    the image, from any Batch widget, adopted and then removed them unasked."""
    viewer = make_napari_viewer()
    image = viewer.add_image(dask_movie, rgb=True, name="movie")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-bloodcell", "Batch time-lapse")
    widget.model.value = None
    widget.display_interval_s = 0.0
    _run(widget, qtbot)
    image.data = dask_movie.map_blocks(_slow)
    widget.run()
    worker, ended = widget.worker, []
    worker.finished.connect(lambda: ended.append(True))
    qtbot.waitUntil(lambda: len(viewer.layers) > 4, timeout=WAIT_MS)  # a running layer
    viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: bool(ended), timeout=WAIT_MS)
    handed_over = list(viewer.layers)[4:]
    assert handed_over and all(layer.name.endswith("(cancelled run)") for layer in handed_over)
    assert all("key" not in layer.metadata["napari_bloodcell"] for layer in handed_over)

    image.data = dask_movie
    _, again = viewer.window.add_plugin_dock_widget("napari-bloodcell", "Batch time-lapse")
    again.model.value = None
    _run(again, qtbot)
    assert list(viewer.layers)[4:] == handed_over  # still there, the user's


def test_a_slow_redraw_of_a_running_batch_is_followed_by_a_pause(make_napari_viewer):
    """Each redraw rebuilds the layers and the plot from the whole table: one longer than
    the display interval was followed by the next at once, leaving the viewer no time."""
    from types import SimpleNamespace

    from napari_bloodcell._napari._batch import BatchWidget

    widget = BatchWidget(make_napari_viewer())
    redraws = []

    def slow_redraw(*args):
        time.sleep(0.2)
        redraws.append(args)

    widget._show_layers = slow_redraw  # the widget goes with the test: nothing to restore
    widget.plot_counts = lambda *args: None
    item = SimpleNamespace(
        table=pd.DataFrame({"cell_class": []}),
        model_classes=[],
        frames_done=1,
        n_frames=9,
        empty_frames=[],
        layers=[],
    )
    widget.display_interval_s = 0.1
    widget._apply(item)
    widget._apply(item)  # the next frame, finished while the first redraw ran
    time.sleep(0.15)  # past the display interval, within 4 redraws' time
    widget._apply(item)
    assert len(redraws) == 1 and widget._latest is item  # shown when the batch ends


@pytest.mark.parametrize(
    ("make_image", "axes", "channel", "message"),
    [
        (lambda: np.random.default_rng(0).random((64, 96)), "", None, "no time axis"),
        (lambda: np.random.default_rng(0).random((6, 8, 48, 64)), "", None, "Axes field"),
        (lambda: np.random.default_rng(0).random((3, 48, 64, 3)), "TCYX", None, "colour axis"),
        (lambda: np.random.default_rng(0).random((5, 48, 64)), "", 2, "has 1 channel"),
        (lambda: np.random.default_rng(0).random((48, 64, 5)), "YXT", None, "order T, Y, X"),
    ],
)
def test_batch_bad_input_is_a_notification_and_adds_nothing(
    make_napari_viewer, notifications, make_image, axes, channel, message
):
    from napari_bloodcell._napari._batch import BatchWidget

    viewer = make_napari_viewer()
    data = make_image()
    viewer.add_image(data, rgb=data.ndim == 4 and data.shape[-1] == 3, name="bad")
    widget = BatchWidget(viewer)
    widget.model.value = None
    widget.axes.value = axes
    widget.platelet_channel.value = channel
    widget.run()
    assert widget.worker is None and len(viewer.layers) == 1
    assert notifications[-1][0] == "error" and message in notifications[-1][1]


def test_analyze_bad_input_is_a_notification(make_napari_viewer, qtbot, notifications):
    from napari_bloodcell._napari._analyze import AnalyzeWidget
    from napari_bloodcell._napari._widgets_common import check_image_layer
    from napari_bloodcell.errors import InputImageError

    viewer = make_napari_viewer()
    widget = AnalyzeWidget(viewer)
    widget.run()
    assert "no image layer" in notifications[-1][1]
    labels = viewer.add_labels(np.zeros((32, 32), np.uint8))
    with pytest.raises(InputImageError, match="Labels layer; choose an image layer"):
        check_image_layer(labels)
    viewer.add_image(np.full((48, 64), 7, np.uint8), name="blank")
    widget.model.value = None
    _run(widget, qtbot)
    assert "empty" in notifications[-1][1] and len(viewer.layers) == 2


def test_classifier_processes_are_released_when_the_viewer_closes(
    make_napari_viewer, qtbot, tiny_user_model
):
    from napari_bloodcell._napari._analyze import AnalyzeWidget
    from napari_bloodcell._napari._widgets_common import CLASSIFIERS

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((32, 32)))
    widget = AnalyzeWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model.value = tiny_user_model
    widget.job()  # acquires the classifier as the Run button would
    owner = widget._owner
    assert owner in CLASSIFIERS.users()
    widget.model.value = None
    widget.job()  # a run without a model keeps no classifier
    assert owner not in CLASSIFIERS.users()
    widget.model.value = tiny_user_model
    widget.job()
    assert owner in CLASSIFIERS.users()
    viewer.close()
    qtbot.waitUntil(lambda: owner not in CLASSIFIERS.users(), timeout=10_000)


def _analysed_smear(make_napari_viewer, qtbot, smear):
    """A viewer with the smear analysed (segmentation only), and its Analyze widget."""
    from napari_bloodcell._napari._analyze import AnalyzeWidget

    viewer = make_napari_viewer()
    viewer.add_image(smear.image, rgb=True, name="smear")
    widget = AnalyzeWidget(viewer)
    widget.model.value = None
    _run(widget, qtbot)
    return viewer, widget


@pytest.mark.parametrize("stack", [False, True])
def test_an_image_of_the_same_name_never_updates_the_results_of_another(
    make_napari_viewer, qtbot, stack
):
    """Result layers were keyed by the image layer's name: an image added under the name of
    a removed one (patient2/image.tif after patient1/image.tif) replaced its kept results
    in place, and a renamed image got new result layers."""
    from napari_bloodcell._napari._analyze import AnalyzeWidget
    from napari_bloodcell._napari._batch import BatchWidget

    movies = [
        make_timelapse(n_frames=2, shape=(64, 96), n_leukocytes=2, n_platelets=3, seed=seed).image
        for seed in (1, 2)
    ]
    viewer = make_napari_viewer()
    image = viewer.add_image(movies[0] if stack else movies[0][0], rgb=True, name="image")
    widget = (BatchWidget if stack else AnalyzeWidget)(viewer)
    widget.model.value = None
    _run(widget, qtbot)
    if stack:
        _track(widget, qtbot)
    first = list(viewer.layers)[1:]
    kept = [np.array(layer.data) for layer in first]
    viewer.layers.remove(image)  # its results stay
    image = viewer.add_image(movies[1] if stack else movies[1][0], rgb=True, name="image")
    widget.image.value = image
    _run(widget, qtbot)
    if stack:
        _track(widget, qtbot)
    layers = list(viewer.layers)
    assert layers[: len(first)] == first and len(layers) == 2 * len(first) + 1
    for layer, data in zip(first, kept, strict=True):
        np.testing.assert_array_equal(layer.data, data)
    image.name = "renamed"  # its results follow it
    _run(widget, qtbot)
    assert list(viewer.layers) == layers


def test_a_result_layer_edited_by_hand_is_never_replaced(
    make_napari_viewer, qtbot, smear, tmp_path, notifications
):
    from napari_bloodcell.table import read_table

    viewer, widget = _analysed_smear(make_napari_viewer, qtbot, smear)
    instances, classes, cells = viewer.layers[1:]
    instances.paint((10, 10), 999)
    assert "edited by hand" in notifications[-1][1]
    cells.selected_data = {0}
    cells.remove_selected()
    kept = cells.features.copy()
    widget.export_file.value = tmp_path / "curated.csv"
    assert widget.export()  # the table as the user left it
    assert len(read_table(tmp_path / "curated.csv")) == len(kept)
    widget.pixel_size.value = 0.25
    _run(widget, qtbot)
    assert instances.data[10, 10] == 999 and cells.features.equals(kept)  # theirs, untouched
    assert len(viewer.layers) == 6  # new instances and cells layers; classes updated in place
    assert viewer.layers[-1] is not cells and viewer.layers[2] is classes


def test_a_table_that_cannot_be_written_is_a_warning(
    make_napari_viewer, qtbot, smear, tmp_path, notifications
):
    """A file system error (here a name too long) is a notification, not an exception out
    of the button's handler (which aborts a plain PyQt script)."""
    _, widget = _analysed_smear(make_napari_viewer, qtbot, smear)
    widget.export_file.value = tmp_path / f"{'x' * 300}.csv"
    assert not widget.export()
    assert notifications[-1][0] == "warning"
    assert "cannot write the table to" in notifications[-1][1]
    assert "File name too long" in notifications[-1][1]


def test_a_cells_table_edited_in_place_is_never_replaced(make_napari_viewer, qtbot, smear):
    """napari's features table widget changes ``features`` in place, without an event."""
    viewer, widget = _analysed_smear(make_napari_viewer, qtbot, smear)
    cells = viewer.layers[-1]
    first = cells.features.loc[0, "cell_type"]
    cells.features.loc[0, "cell_type"] = "platelet" if first != "platelet" else "wbc"
    kept = cells.features.copy()
    _run(widget, qtbot)
    assert viewer.layers[-1] is not cells and cells.features.equals(kept)
    assert len(viewer.layers) == 5  # the edited cells layer stays, a new one is added


def test_a_duplicated_result_layer_is_never_replaced(make_napari_viewer, qtbot, smear):
    """A duplicate (Layers → Duplicate) copies the plugin's key with the metadata."""
    from napari.layers._layer_actions import _duplicate_layer

    viewer, widget = _analysed_smear(make_napari_viewer, qtbot, smear)
    cells = viewer.layers[-1]
    viewer.layers.selection = {cells}
    _duplicate_layer(viewer.layers)
    copy = viewer.layers[-1]
    viewer.layers.remove(cells)
    kept = copy.data.copy()
    widget.pixel_size.value = 0.25
    _run(widget, qtbot)
    np.testing.assert_array_equal(copy.data, kept)  # the copy is the user's
    assert viewer.layers[-1] is not copy and viewer.layers[-1].name.endswith("cells")


@pytest.mark.parametrize(("menu_name", "stack"), [("Analyze", False), ("Batch time-lapse", True)])
def test_widgets_opened_from_the_plugins_menu_update_their_layers(
    make_napari_viewer, qtbot, menu_name, stack
):
    """napari hands a plugin widget a proxy of the viewer, and every layer reached through
    it is a new proxy: the plugin's weak registry of its result layers lost them at once, so
    every run (and every redraw of a running batch) added new layers — 77 layers for the
    20 frames of the flowcatchR movie — and the cells layer the table was exported from was
    the first frame's."""
    movie = make_timelapse(n_frames=3, shape=(64, 96), n_leukocytes=2, n_platelets=3, seed=2)
    viewer = make_napari_viewer()
    image = viewer.add_image(movie.image if stack else movie.image[0], rgb=True, name="m")
    _, widget = viewer.window.add_plugin_dock_widget("napari-bloodcell", menu_name)
    widget.display_interval_s = 0.0  # a batch redraws after every frame
    widget.model.value = None
    widget.image.value = image
    for _ in range(2):
        _run(widget, qtbot)
        assert len(viewer.layers) == 4, [layer.name for layer in viewer.layers]
    cells = viewer.layers[-1]
    assert widget._cells_layer is cells and len(cells.data) == len(cells.features) > 0
    if stack:
        assert set(cells.features["frame"]) == {0, 1, 2}


def test_the_batch_widget_reads_in_order_and_its_plot_counts_whole_frames(
    make_napari_viewer, qtbot
):
    """The plot's frame axis had ticks at 2.5, 7.5 …; Track cells sat below Export table,
    whose export includes the tracking tables; a long status line was cut off."""
    from napari_bloodcell._napari._batch import BatchWidget

    widget = BatchWidget(make_napari_viewer())
    widget.plot_counts(
        pd.DataFrame({"frame": np.arange(20), "label": 1, "cell_class": ["platelet"] * 20}),
        ["platelet"],
        20,
    )
    ticks = widget.plot.axes.get_xticks()
    np.testing.assert_array_equal(ticks, np.round(ticks))
    order = list(widget)
    assert order.index(widget.run_button) < order.index(widget.track_button)
    assert order.index(widget.track_button) < order.index(widget.export_button)
    assert widget.status.native.wordWrap()


@pytest.mark.parametrize("widget_name", ["AnalyzeWidget", "BatchWidget"])
def test_closing_the_viewer_while_a_run_is_on_drops_its_results(
    make_napari_viewer, qtbot, widget_name
):
    """Results arriving after the viewer closed were added to it, and then a deleted button
    was set: a traceback, or an abort outside napari's exception hook."""
    import dask.array as da

    from napari_bloodcell._napari import _analyze, _batch

    def slow(block):
        time.sleep(0.5)
        return block

    movie = make_timelapse(n_frames=3, shape=(64, 96), seed=4).image
    viewer = make_napari_viewer(show=True)
    viewer.add_image(da.from_array(movie, chunks=(1, 64, 96, 3)).map_blocks(slow), rgb=True)
    widget = getattr(_analyze if widget_name == "AnalyzeWidget" else _batch, widget_name)(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model.value = None
    widget.run()
    worker = widget.worker
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    viewer.close()
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)  # a raised error fails the test
    qtbot.wait(200)


def test_closing_the_widget_while_a_batch_runs_stops_it(make_napari_viewer, qtbot):
    """napari's × takes a plugin widget out of its dock but keeps it alive while its worker
    runs: the batch went on to its last frame (with no Cancel button left), still adding
    to the layers, and its classifier process was kept until napari ended."""
    import dask.array as da
    from napari.layers import Labels

    def slow(block):
        time.sleep(0.3)
        return block

    movie = make_timelapse(n_frames=8, shape=(64, 96), seed=4).image
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(movie, chunks=(1, 64, 96, 3)).map_blocks(slow), rgb=True)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-bloodcell", "Batch time-lapse")
    widget.display_interval_s = 0.0
    widget.model.value = None
    widget.run()
    worker, finished = widget.worker, []
    worker.finished.connect(lambda: finished.append(True))
    qtbot.waitUntil(lambda: len(viewer.layers) > 1, timeout=WAIT_MS)  # a frame is shown
    viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    qtbot.wait(200)
    labels = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert labels and max(layer.data.shape[0] for layer in labels) < 8


def test_closing_the_widget_while_it_tracks_drops_the_tracking(
    make_napari_viewer, qtbot, monkeypatch
):
    """Closing the widget stopped a batch but not Track cells: its worker was never told
    to quit and handed its tracks to the closed widget."""
    from napari.layers import Tracks

    from napari_bloodcell import tracking

    track_table = tracking.track_table

    def slow_tracking(*args):
        time.sleep(2.0)
        return track_table(*args)

    monkeypatch.setattr(tracking, "track_table", slow_tracking)
    movie = make_timelapse(n_frames=3, shape=(64, 96), n_leukocytes=2, n_platelets=3, seed=2)
    viewer = make_napari_viewer()
    viewer.add_image(movie.image, rgb=True)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-bloodcell", "Batch time-lapse")
    widget.model.value = None
    _run(widget, qtbot)
    widget.track()
    ended = []
    widget.track_worker.returned.connect(lambda _: ended.append("returned"))
    widget.track_worker.finished.connect(lambda: ended.append("finished"))
    viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: "finished" in ended, timeout=WAIT_MS)
    assert ended == ["finished"]  # quit: its result is never handed over
    assert not any(isinstance(layer, Tracks) for layer in viewer.layers)


def test_a_widget_destroyed_after_its_viewer_was_torn_down_closes_quietly(
    make_napari_viewer, qtbot
):
    """An undocked widget can outlive its viewer: destroyed after the viewer's emitters
    were torn down (their ``_callbacks`` gone), it raised an AttributeError in a Qt slot,
    which aborts a plain PyQt script."""
    from napari_bloodcell._napari._analyze import AnalyzeWidget

    viewer = make_napari_viewer()
    widget = AnalyzeWidget(viewer)
    emitter = viewer.layers.events.inserted
    viewer.close()
    callbacks = emitter._callbacks
    del emitter._callbacks  # as left by the teardown of the viewer
    try:
        with qtbot.waitSignal(widget.native.destroyed):
            widget.native.deleteLater()
    finally:
        emitter._callbacks = callbacks


# --------------------------------------------------------------------------- training


@pytest.fixture
def user_data(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return write_crop_folder(tmp_path / "crops", n_per_class=12, seed=1)


def _wait(widget, qtbot):
    qtbot.waitUntil(lambda: not widget._state["busy"], timeout=120_000)


def _new_network_named_lobes(widget, data) -> None:
    """Train widget inputs: a new 32 px network named "lobes" on the class folders ``data``."""
    from napari_bloodcell._napari._train import FROM_SCRATCH

    widget.data_dir.value = data
    widget.name.value = "lobes"
    widget.input_size.value = 32
    widget.start_from.value = FROM_SCRATCH


def test_train_widget_cancels_then_trains_a_model_the_analyze_widget_lists(
    make_napari_viewer, qtbot, user_data, notifications
):
    from napari_bloodcell._napari._analyze import AnalyzeWidget
    from napari_bloodcell._napari._train import TrainWidget
    from napari_bloodcell.classification.model_files import (
        read_metadata,
        resolve_model_path,
        user_models_dir,
    )
    from napari_bloodcell.classification.training import fine_tuning_config

    viewer = make_napari_viewer()
    analyze = AnalyzeWidget(viewer)
    widget = TrainWidget(viewer)
    assert widget.config() == fine_tuning_config("default")  # the measured recipe as it is
    _new_network_named_lobes(widget, user_data)

    widget.epochs.value = 50
    widget.train()
    qtbot.waitUntil(lambda: widget._state["job"] is not None, timeout=WAIT_MS)  # started
    widget.cancel()  # stops at the end of the first epoch
    _wait(widget, qtbot)
    assert widget.status.value.startswith("cancelled")
    assert not list(user_models_dir().iterdir())  # no model, no work folder left
    assert "lobes" not in analyze.model.choices

    widget.epochs.value = 2
    widget.start_from.value = "default"  # fine-tune the packaged model on the user's classes
    widget.train()
    _wait(widget, qtbot)
    model = user_models_dir() / "lobes.keras"
    assert read_metadata(model).classes == ["lobed", "round"], notifications
    assert read_metadata(model).training["config"]["init_model"] == "default"
    default_size = read_metadata(resolve_model_path("default")).input_size
    assert read_metadata(model).input_size == default_size != 32  # not the widget's 32
    assert "lobes" in analyze.model.choices
    assert "lobes" in widget.start_from.choices  # it can be fine-tuned further at once
    assert len(widget.history["loss"]) == 2 and widget.plot.axes.get_lines()
    assert not [p for p in running_children() if "training" in p.name]

    widget.train()  # the name is now taken
    _wait(widget, qtbot)
    assert notifications[-1][0] == "error" and "already exists" in notifications[-1][1]


def test_closing_the_train_widget_while_it_trains_cancels_the_training(
    make_napari_viewer, qtbot, user_data
):
    """napari's × keeps the widget alive while its worker runs (see DockWatcher): the
    training went on to its last epoch, updating the hidden widget, and the model was saved."""
    from napari_bloodcell.classification.model_files import user_models_dir

    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-bloodcell", "Train classifier")
    _new_network_named_lobes(widget, user_data)
    widget.epochs.value = 50
    widget.train()
    qtbot.waitUntil(lambda: "loss" in widget.history, timeout=WAIT_MS)  # an epoch is shown
    job = widget._state["job"]
    viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: job.cancel_requested, timeout=5_000)
    epochs_shown = len(widget.history["loss"])
    qtbot.waitUntil(
        lambda: not [p for p in running_children() if "training" in p.name], timeout=WAIT_MS
    )
    qtbot.wait(500)  # the worker's last events
    assert len(widget.history["loss"]) == epochs_shown < 50
    assert not list(user_models_dir().glob("*.keras"))


def test_train_widget_refuses_a_folder_without_classes(
    make_napari_viewer, tmp_path, monkeypatch, notifications, qtbot
):
    from napari_bloodcell._napari._train import TrainWidget

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    widget = TrainWidget(make_napari_viewer())
    widget.train()  # the field's default: the current folder was trained on
    assert notifications[-1][0] == "error" and "choose the class folders" in notifications[-1][1]
    widget.data_dir.value = tmp_path
    widget.train()
    _wait(widget, qtbot)
    assert notifications[-1][0] == "error" and "no class sub-folders" in notifications[-1][1]
    assert widget.status.value.startswith("failed") and widget.train_button.enabled

    def unlistable(*_args):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(
        "napari_bloodcell.classification.remote_training.split_training_data", unlistable
    )
    widget.train()  # an unforeseen error in the worker thread: a message, not a traceback
    _wait(widget, qtbot)
    assert notifications[-1] == (
        "error",
        f"training could not start (PermissionError: [Errno 13] Permission denied: '{tmp_path}')",
    )


def test_an_epoch_reported_after_cancel_keeps_the_status_cancelling(
    make_napari_viewer, tmp_path, monkeypatch
):
    """An epoch that ended while Cancel was pressed (its event still queued) replaced
    "cancelling…" with "epoch 3/60 …", as if the training went on."""
    from napari_bloodcell._napari._train import TrainWidget
    from napari_bloodcell.classification.remote_training import EpochEnd

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    widget = TrainWidget(make_napari_viewer())
    widget._state["busy"] = True  # as while a training runs (no process needed here)
    widget.cancel()
    widget._on_event(EpochEnd(3, 60, {"loss": 0.5, "val_loss": 0.6}))
    assert widget.status.value == "cancelling…" and widget.history["loss"] == [0.5]


def test_train_widget_checks_the_folders_off_napari_thread_and_cancels_meanwhile(
    make_napari_viewer, tmp_path, monkeypatch, qtbot, user_data
):
    """The class folders were walked on napari's thread: a large folder chosen by mistake
    froze napari until the walk ended, and Cancel could not be pressed meanwhile."""
    import threading

    from napari_bloodcell._napari._train import TrainWidget
    from napari_bloodcell.classification import remote_training
    from napari_bloodcell.classification.model_files import user_models_dir

    walking, go_on, walked_on = threading.Event(), threading.Event(), []
    split = remote_training.split_training_data

    def slow_split(*args):
        walked_on.append(threading.current_thread())
        walking.set()
        go_on.wait(timeout=30)
        return split(*args)

    monkeypatch.setattr(remote_training, "split_training_data", slow_split)
    widget = TrainWidget(make_napari_viewer())
    _new_network_named_lobes(widget, user_data)
    widget.train()  # returns while the folders are walked
    assert walking.wait(timeout=10) and widget.status.value.startswith("checking")
    widget.cancel()
    go_on.set()
    _wait(widget, qtbot)
    assert walked_on[0] is not threading.main_thread()
    assert widget.status.value.startswith("cancelled") and widget._state["job"] is None
    assert not user_models_dir().exists() or not list(user_models_dir().iterdir())
    assert not [p for p in running_children() if "training" in p.name]


def test_model_lists_are_read_afresh_when_opened(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    """A model saved by `napari-bloodcell train` in a terminal did not appear in the Train
    widget's "start from" until a model was trained in napari."""
    from qtpy.QtCore import Qt

    from napari_bloodcell._napari._train import TrainWidget
    from napari_bloodcell.classification.model_files import user_models_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    widget = TrainWidget(make_napari_viewer())
    assert "mylab" not in widget.start_from.choices
    user_models_dir().mkdir(parents=True)
    (user_models_dir() / "mylab.keras").write_bytes(b"")  # saved from a terminal
    qtbot.mouseClick(widget.start_from.native, Qt.MouseButton.LeftButton)
    widget.start_from.native.hidePopup()
    assert "mylab" in widget.start_from.choices


# --------------------------------------------------------------------------- shown viewer


@pytest.fixture(scope="module")
def default_model():
    """The packaged default model, its classifier worker held for the module (or skip)."""
    from napari_bloodcell._napari._widgets_common import CLASSIFIERS
    from napari_bloodcell.classification.model_files import packaged_models_dir

    if not (packaged_models_dir() / "default.keras").is_file():
        pytest.skip("the packaged default model (default.keras) is not installed")
    CLASSIFIERS.acquire("tests-default", "default")
    yield "default"
    CLASSIFIERS.release("tests-default")


def _class_pixels(shot: np.ndarray, colour: str, tolerance: int = 12) -> int:
    from matplotlib.colors import to_rgb

    rgb = np.array(to_rgb(colour)) * 255
    return int(np.all(np.abs(shot[..., :3].astype(float) - rgb) <= tolerance, axis=-1).sum())


def _analyze_in_shown_viewer(make_napari_viewer, qtbot, image: np.ndarray, model: str):
    """Run the Analyze widget in a shown viewer; check the screenshot shows class colours."""
    from napari_bloodcell._napari._analyze import AnalyzeWidget
    from napari_bloodcell._napari._layers import class_colours

    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(image, rgb=True, name="frame")
    widget = AnalyzeWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = layer
    widget.model.value = model
    _run(widget, qtbot)
    cells = viewer.layers["frame cells"]
    assert len(cells.features), widget.status.value
    classified = cells.features[cells.features["cell_type"] != "rbc"]
    assert np.isfinite(classified["novelty"]).all()  # the default model has a reference
    viewer.reset_view()  # the whole frame in view
    shown = viewer.screenshot(canvas_only=True, flash=False)
    assert shown.shape[-1] == 4 and shown[..., :3].std() > 10  # not blank
    cells.visible = False
    hidden = viewer.screenshot(canvas_only=True, flash=False)
    colours = class_colours(list(cells.features["cell_class"].cat.categories))
    present = set(cells.features["cell_class"])
    drawn = {
        c
        for c in present
        if _class_pixels(shown, colours[c]) > _class_pixels(hidden, colours[c]) + 5
    }
    assert drawn == present, (present, drawn)


def test_shown_viewer_analyzes_a_synthetic_smear_without_crashing(
    make_napari_viewer, qtbot, default_model
):
    _analyze_in_shown_viewer(make_napari_viewer, qtbot, make_smear(seed=2).image, default_model)


@requires_bccd
def test_shown_viewer_analyzes_a_real_bccd_frame_without_crashing(
    make_napari_viewer, qtbot, default_model
):
    import imageio.v3 as iio

    frame = iio.imread(SHARED_DATA / "bccd" / "JPEGImages" / "BloodImage_00000.jpg")
    _analyze_in_shown_viewer(make_napari_viewer, qtbot, frame, default_model)


def test_export_never_writes_an_earlier_image_s_result_after_a_failed_run(
    make_napari_viewer, qtbot, smear, tmp_path
):
    """Analyze on a smear, then on a constant image (refused per frame): the legend kept
    the smear's counts and Export wrote the smear's table under the new image's name."""
    viewer, widget = _analysed_smear(make_napari_viewer, qtbot, smear)
    cells, legend = viewer.layers["smear cells"], widget.legend.value
    assert legend and widget._cells_layer is cells
    widget.image.value = viewer.add_image(np.full((64, 64, 3), 200, np.uint8), rgb=True, name="b")
    _run(widget, qtbot)
    assert widget.status.value.startswith("failed") and widget.legend.value == ""
    widget.export_file.value = tmp_path / "b.csv"
    assert not widget.export() and not (tmp_path / "b.csv").exists()
    widget.image.value = viewer.layers["smear"]
    widget.run()  # a re-run of the smear, cancelled: its earlier result stays the result
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.value.startswith("cancelled")
    assert widget._cells_layer is cells and widget.legend.value == legend
    cells.features = cells.features.rename(columns={"cell_class": "my class"})
    widget.run()  # its earlier result without a class column: no legend, the widget usable
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.run_button.enabled and widget.status.value.startswith("cancelled")


def test_removing_the_image_layer_cancels_its_batch(make_napari_viewer, qtbot, dask_movie):
    """The batch ran to its last frame and added its layers for an image no longer there."""
    from napari_bloodcell._napari._batch import BatchWidget

    def slow(block):
        time.sleep(0.3)
        return block

    viewer = make_napari_viewer()
    image = viewer.add_image(dask_movie.map_blocks(slow), rgb=True, name="movie")
    widget = BatchWidget(viewer)
    widget.model.value = None
    widget.display_interval_s = 0.0
    widget.run()  # frame 0 is shown, then the image removed: nothing more is shown
    widget.worker.yielded.connect(lambda _: image in viewer.layers and viewer.layers.remove(image))
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.value.startswith("cancelled")
    instances = viewer.layers["movie stack instances"]
    assert instances.metadata["napari_bloodcell"]["parameters"]["frames"] == 1
    assert instances.data.shape[0] == 1

    viewer.layers.clear()
    image = viewer.add_image(dask_movie.map_blocks(slow), rgb=True, name="movie")
    widget.image.value = image
    widget.run()
    viewer.layers.remove(image)  # before anything was shown: no layer is added at all
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.value.startswith("cancelled") and len(viewer.layers) == 0


def test_a_layer_scaled_in_micrometres_is_analysed_at_its_pixel_size(
    make_napari_viewer, qtbot, smear
):
    """The pixel size came from the field only: a layer opened with its calibration (scale
    0.25 µm) was segmented at the reference scale, unlike the same file in the CLI."""
    from napari_bloodcell._napari._analyze import AnalyzeWidget

    viewer = make_napari_viewer()
    image = viewer.add_image(smear.image, rgb=True, name="smear", scale=(0.25, 0.25))
    widget = AnalyzeWidget(viewer)
    widget.model.value = None
    _run(widget, qtbot)
    cells = viewer.layers["smear cells"]
    assert cells.metadata["napari_bloodcell"]["parameters"]["pixel_size_um"] is None  # pixels
    image.units = ("micrometer", "micrometer")
    _run(widget, qtbot)
    from_scale = cells.features.copy()
    assert cells.metadata["napari_bloodcell"]["parameters"]["pixel_size_um"] == 0.25
    widget.pixel_size.value = 0.25  # typed: the same analysis
    _run(widget, qtbot)
    pd.testing.assert_frame_equal(cells.features, from_scale)


def test_a_stack_calibrated_in_seconds_and_micrometres_is_tracked_in_them(
    make_napari_viewer, qtbot, dask_movie
):
    """The frame interval came from the field only: a stack opened with its calibration
    was tracked per frame (px/frame speeds) unless the user typed the interval again."""
    from napari_bloodcell._napari._batch import BatchWidget

    viewer = make_napari_viewer()
    viewer.add_image(
        dask_movie, rgb=True, name="movie", scale=(5.0, 0.5, 0.5),
        units=("second", "micrometer", "micrometer"),
    )  # fmt: skip
    widget = BatchWidget(viewer)
    widget.model.value = None
    _run(widget, qtbot)
    _track(widget, qtbot)
    assert widget.tracking.settings["frame_interval_s"] == 5.0
    assert widget.tracking.settings["pixel_size_um"] == 0.5
    assert widget.tracking.settings["speed_unit"] == "um_per_min"
    widget.frame_interval.value = 2.0  # typed: the field wins
    _track(widget, qtbot)
    assert widget.tracking.settings["frame_interval_s"] == 2.0
