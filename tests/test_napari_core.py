"""The napari plugin's viewer-free parts: manifest, layouts, layer data, stacks, writer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_bloodcell.errors import BloodcellError, InputImageError, OutputExistsError
from napari_bloodcell.pipeline import AnalysisSettings
from napari_bloodcell.synthetic import make_smear, make_timelapse
from napari_bloodcell.table import read_table

pytestmark = pytest.mark.napari


def test_manifest_has_widgets_writer_and_layer_menus():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-bloodcell")
    contributions = manifest.contributions
    assert {w.display_name for w in contributions.widgets} == {
        "Analyze",
        "Batch time-lapse",
        "Train classifier",
    }
    (writer,) = contributions.writers
    assert writer.layer_types == ["points"] and writer.filename_extensions == [".csv", ".parquet"]
    assert {"napari/layers/segment", "napari/layers/classify"} <= set(contributions.menus)
    for command in contributions.commands:  # every command resolves to an importable object
        assert callable(_resolve(command.python_name))


def _resolve(python_name: str):
    import importlib

    module, attribute = python_name.split(":")
    return getattr(importlib.import_module(module), attribute)


@pytest.mark.parametrize(
    ("shape", "rgb", "axes", "expected"),
    [
        ((48, 64, 3), True, "", "YXC"),
        ((5, 48, 64, 3), True, "", "TYXC"),
        ((5, 48, 64), False, "", "TYX"),
        ((5, 3, 48, 64), False, "", "TCYX"),
        ((3, 5, 48, 64), False, "CTYX", "CTYX"),
        ((48, 3, 64), False, "YCX", "YCX"),  # the outputs get a size-1 axis where C is
    ],
)
def test_image_layout(shape, rgb, axes, expected):
    from napari_bloodcell._napari._compute import image_layout

    assert image_layout(shape, rgb, axes).axes == expected


@pytest.mark.parametrize(
    ("shape", "rgb", "axes", "message"),
    [
        ((6, 8, 48, 64), False, "", "Axes field"),
        ((5, 48, 64, 3), True, "TCYX", "last axis is the colour axis"),
        ((5, 48, 64), False, "TYXC", "name 4 axes"),
        # results would land on the wrong axes: the message says how to reorder the layer
        (
            (640, 480, 3),
            True,
            "XYC",
            r"np.transpose\(layer.data, \(1, 0, 2\)\), rgb=True\), and give the axes 'YXC'",
        ),
        ((48, 64, 6), False, "YXT", r"np.transpose\(layer.data, \(2, 0, 1\)\)\), .* 'TYX'"),
        ((2, 48, 6, 64), False, "CYTX", r"\(0, 2, 1, 3\)\)\), and give the axes 'CTYX'"),
    ],
)
def test_image_layout_refuses_ambiguous_or_wrong_axes(shape, rgb, axes, message):
    from napari_bloodcell._napari._compute import image_layout

    with pytest.raises(InputImageError, match=message):
        image_layout(shape, rgb, axes)


def test_class_ids_and_colours_are_fixed():
    from napari_bloodcell._napari._layers import class_colours, class_ids
    from napari_bloodcell.classes import CLASS_COLOURS

    ids = class_ids(["round", "rbc", "lobed"])
    assert ids["rbc"] == class_ids(["rbc"])["rbc"]  # known classes never move
    assert class_ids(["round", "rbc", "lobed", "platelet"])["lobed"] == ids["lobed"]
    colours = class_colours(["round", "rbc", "lobed"])
    assert colours["rbc"] == CLASS_COLOURS["rbc"]
    assert len({colours["round"], colours["lobed"], colours["rbc"]}) == 3


@pytest.fixture(scope="module")
def movie():
    return make_timelapse(n_frames=4, shape=(64, 96), n_leukocytes=2, n_platelets=4, seed=1)


def _job(data, axes="", rgb=True, scale=(2.0, 0.5, 0.5)):
    from napari_bloodcell._napari._compute import AnalysisJob, image_layout

    layout = image_layout(data.shape, rgb, axes)
    return AnalysisJob(
        data=data,
        layout=layout,
        settings=AnalysisSettings(modality="fluorescence"),
        classifier=None,
        source="movie",
        image_id="movie-id",
        scale=scale,
        translate=(0.0,) * (len(scale) - 2) + (10.0, 20.0),
    )


def test_a_batch_reads_each_stored_chunk_of_frames_once(movie):
    """Chunked data (Zarr, dask) whose chunks hold several frames was read whole once per
    frame: a 10-frame chunk decompressed 10 times."""
    import dask.array as da

    from napari_bloodcell._napari._compute import stack_steps

    class CountedReads:  # a stored array: one read per chunk it is asked for
        def __init__(self, array):
            self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, 4
            self.reads = 0

        def __getitem__(self, key):
            self.reads += 1
            return self.array[key]

    stored = CountedReads(np.concatenate([movie.image, movie.image]))  # 8 frames
    chunked = da.from_array(stored, chunks=(4, *movie.image.shape[1:]))  # 2 chunks
    before = stored.reads  # (dask looked at an empty slice for its meta)
    steps = list(stack_steps(_job(chunked)))
    assert stored.reads - before <= 2 + 2  # the intensity sample's reads, then each chunk once
    in_memory = list(stack_steps(_job(movie.image)))[-1].instances  # the same 4 frames
    np.testing.assert_array_equal(np.asarray(steps[-1].instances)[:4], np.asarray(in_memory))


def test_a_batch_merges_the_tables_of_older_frames_as_it_goes(movie, monkeypatch):
    """A redraw concatenated one table per frame on the viewer's thread (0.2–1 s at 2,000
    frames): the worker merges them in blocks, the table itself unchanged."""
    from napari_bloodcell._napari import _compute
    from napari_bloodcell.pipeline import analyze_frame, concat_tables

    monkeypatch.setattr(_compute, "TABLE_BLOCK_FRAMES", 3)
    steps = list(_compute.stack_steps(_job(np.concatenate([movie.image] * 2))))  # 8 frames
    assert [len(step.frame_tables) for step in steps] == [1, 2, 1, 2, 3, 2, 3, 4]
    settings = AnalysisSettings(modality="fluorescence")
    frames = np.concatenate([movie.image] * 2) / np.float32(255)
    expected = concat_tables(
        [
            analyze_frame(frame, None, settings, frame_index=t, source="movie").table
            for t, frame in enumerate(frames)
        ]
    )
    pd.testing.assert_frame_equal(steps[-1].table, expected)


def test_stack_is_read_frame_by_frame_from_dask(movie):
    import dask
    import dask.array as da

    from napari_bloodcell._napari._compute import run_to_end, stack_steps

    class CountingFrames:
        """Array-like recording which frames dask reads from it."""

        def __init__(self, array):
            self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, 4
            self.frames_read: list[int] = []

        def __getitem__(self, index):
            frames = range(*index[0].indices(self.shape[0]))
            self.frames_read += list(frames)
            return self.array[index]

    source = CountingFrames(movie.image)
    lazy = da.from_array(source, chunks=(1, 64, 96, 3))
    with dask.config.set(scheduler="sync"):
        result = run_to_end(stack_steps(_job(lazy)))
    assert result.frames_done == result.n_frames == 4
    # each frame is read once to analyse it, plus once for the bounded intensity sample
    # (<= 16 frames: here all 4): never the whole stack into memory at once
    assert sorted(source.frames_read) == sorted(list(range(4)) * 2)
    instances, classes, points = result.layers
    assert instances[0].shape == classes[0].shape == (4, 64, 96)
    assert instances[1]["scale"] == (2.0, 0.5, 0.5)
    assert instances[1]["translate"] == (0.0, 10.0, 20.0)
    features = points[1]["features"]
    assert points[0].shape == (len(features), 3)
    np.testing.assert_array_equal(points[0][:, 0], features["frame"])
    assert isinstance(features["cell_class"].dtype, pd.CategoricalDtype)


@pytest.mark.parametrize(("axes", "columns"), [("TCYX", 5), ("CTYX", 4)])
def test_tracks_take_the_channel_axis_only_after_time(movie, axes, columns):
    from napari_bloodcell._napari._compute import image_layout
    from napari_bloodcell._napari._layers import tracks_layers
    from napari_bloodcell.tracking import track_table

    shape = dict(zip("TCYX", (4, 3, 64, 96), strict=True))
    layout = image_layout(tuple(shape[a] for a in axes), False, axes)
    placement = layout.placement((1.0, 1.0, 0.5, 0.5), (0.0,) * 4, "TYX")
    tracks = track_table(movie.tracks[movie.tracks["visible"]].drop(columns="visible")).tracks
    ((data, meta, _),) = tracks_layers(tracks, "m", "m-id", placement, {})
    # napari's Tracks: id, then time, then space; with C first, (t, y, x) already line up
    assert data.shape[1] == columns and len(meta["scale"]) == columns - 1
    ordered = tracks.sort_values(["track_id", "frame"])
    np.testing.assert_array_equal(data[:, 1], ordered["frame"])  # time stays time
    if columns == 5:
        assert not data[:, 2].any() and meta["scale"][1] == 3.0  # the stretched channel


def test_tracks_after_a_leading_channel_axis_keep_the_shear_of_their_axes(movie):
    from napari.utils.transforms import Affine

    from napari_bloodcell._napari._compute import image_layout
    from napari_bloodcell._napari._layers import tracks_layers
    from napari_bloodcell.tracking import track_table

    layout = image_layout((3, 4, 64, 96), False, "CTYX")
    shear = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # napari's upper triangle, row by row
    placement = layout.placement((1.0,) * 4, (0.0,) * 4, "TYX", transform={"shear": shear})
    tracks = track_table(movie.tracks[movie.tracks["visible"]].drop(columns="visible")).tracks
    ((_, meta, _),) = tracks_layers(tracks, "m", "m-id", placement, {})
    expected = Affine(shear=[0.4, 0.5, 0.6], ndim=3)  # T, Y, X rows and columns
    np.testing.assert_allclose(Affine(shear=meta["shear"], ndim=3).shear, expected.shear)


def _tracks_layer(classes: list[str], parameters: dict | None = None):
    """A napari Tracks layer (no viewer) of one 3-frame track per class of ``classes``,
    each frame of a track classed as the track, the last frame without a confidence."""
    import napari

    from napari_bloodcell._napari._layers import Placement, tracks_layers

    rows = [
        {
            "track_id": track_id,
            "frame": frame,
            "centroid_y": 10.0 * track_id,
            "centroid_x": float(frame),
            "cell_type": "platelet" if name == "platelet" else "wbc",
            "cell_class": name,
            "confidence": np.nan if frame == 2 else 0.9,
            "track_class": name,
        }
        for track_id, name in enumerate(classes, start=1)
        for frame in range(3)
    ]
    placement = Placement(scale=(1.0, 1.0, 1.0), translate=(0.0, 0.0, 0.0))
    ((data, meta, _),) = tracks_layers(pd.DataFrame(rows), "m", "m-id", placement, parameters or {})
    return napari.layers.Tracks(data, **meta)


def _class_names(layer, column: str) -> list[str]:
    """The class of each point of a tracks layer, from its ``<column>_code`` feature."""
    names = layer.metadata["napari_bloodcell"]["categories"][column]
    return [names[int(code * len(names))] for code in layer.features[f"{column}_code"]]


def test_tracks_of_three_classes_or_more_are_drawn_in_their_class_colours():
    """Codes 0, 1, 2 … against colour bands over 0..1: every class after the first was
    drawn in the last class's colour (a platelet track grey beside an uncertain one)."""
    from matplotlib.colors import to_rgba

    from napari_bloodcell.classes import class_colours

    classes = ["leukocyte", "platelet", "uncertain", "neutrophil"]
    layer = _tracks_layer(classes)
    assert layer.color_by == "track_class_code"
    track_classes = [classes[track_id - 1] for track_id in layer.features["track_id"]]
    colours = class_colours(classes)
    expected = [to_rgba(colours[name]) for name in track_classes]
    np.testing.assert_allclose(layer.track_colors, expected, atol=1e-6)
    assert _class_names(layer, "track_class") == track_classes


def test_tracks_of_a_user_models_classes_have_their_colours_of_the_points():
    """The points, labels, legend and plot colour a model's own classes by their place among
    the model's classes; the tracks coloured them by their place among the classes tracked
    (with no 'blast' track, 'lobed' took blast's colour)."""
    from matplotlib.colors import to_rgba

    from napari_bloodcell.classes import class_colours

    model_classes = ["blast", "lobed", "round"]
    layer = _tracks_layer(["round", "lobed"], {"model": {"classes": model_classes}})
    colours = class_colours(model_classes)
    expected = [to_rgba(colours[name]) for name in _class_names(layer, "track_class")]
    np.testing.assert_allclose(layer.track_colors, expected, atol=1e-6)


def test_every_colour_by_choice_of_a_tracks_layer_works():
    """napari offers every feature to colour by: the class names (text) raised TypeError."""
    from matplotlib.colors import to_rgba

    from napari_bloodcell.classes import class_colours

    layer = _tracks_layer(["neutrophil", "lymphocyte", "platelet"])
    choices = layer.properties_to_color_by
    assert {"track_class_code", "cell_class_code", "cell_type_code", "confidence"} <= set(choices)
    for choice in choices:
        layer.color_by = choice
        assert layer.color_by == choice
        coloured = np.isfinite(layer.features[choice]).to_numpy()
        assert np.isfinite(layer.track_colors[coloured]).all() and coloured.any(), choice
    layer.color_by = "cell_type_code"  # class columns: the fixed class colours
    colours = class_colours(["platelet", "wbc"])
    expected = [to_rgba(colours[name]) for name in _class_names(layer, "cell_type")]
    np.testing.assert_allclose(layer.track_colors, expected, atol=1e-6)


@pytest.mark.parametrize(("axes", "letters", "frame"), [("TYX", "YX", 2), ("CYX", "YX", None)])
def test_outputs_land_on_their_plane_of_a_rotated_and_sheared_image(axes, letters, frame):
    """The frame offset (or channel centring) is turned with the image: a rotation that
    mixes T or C with Y placed a frame's cells beside it."""
    from napari.utils.transforms import Affine
    from scipy.spatial.transform import Rotation

    from napari_bloodcell._napari._compute import image_layout

    layout = image_layout((3, 64, 96), False, axes)
    rotate = Rotation.from_euler("x", 25, degrees=True).as_matrix()  # mixes axes 1 and 2
    rotate = Rotation.from_euler("z", 20, degrees=True).as_matrix() @ rotate  # and 0 and 1
    transform = {"rotate": rotate, "shear": [0.1, 0.2, 0.3]}
    scale, translate = (4.0, 0.5, 0.25), (1.0, 2.0, 3.0)
    image = Affine(scale=scale, translate=translate, ndim=3, **transform)
    placement = layout.placement(scale, translate, letters, frame=frame, transform=transform)
    output = Affine(ndim=3, **placement.layer_arguments)
    plane = frame if frame is not None else 1  # the channel plane sits at the middle one
    for yx in ([0.0, 0.0], [10.0, 7.0]):
        np.testing.assert_allclose(output([0.0, *yx]), image([plane, *yx]), atol=1e-9)


def test_a_singleton_z_axis_is_analysed_and_kept_in_the_outputs(movie):
    """A T Z Y X C layer with Z of size 1 (e.g. from bioio readers) was refused, after an
    error message that advised naming that axis Z."""
    from napari_bloodcell._napari._compute import image_layout, run_to_end, stack_steps
    from napari_bloodcell._napari._layers import cells_table, tracks_layers
    from napari_bloodcell.tracking import track_table

    tzyxc = movie.image[:, None]
    result = run_to_end(stack_steps(_job(tzyxc, "TZYXC", scale=(2.0, 1.0, 0.5, 0.5))))
    pd.testing.assert_frame_equal(result.table, run_to_end(stack_steps(_job(movie.image))).table)
    (instances, _, _), _, (points, meta, _) = result.layers
    assert instances.shape == (4, 1, 64, 96) and points.shape[1] == 4
    pd.testing.assert_frame_equal(cells_table(points, meta["features"], meta["metadata"]),
                                  meta["features"])  # fmt: skip
    tracks = track_table(result.table).tracks
    ((data, _, _),) = tracks_layers(tracks, "m", "m-id", result.placement, {})
    assert data.shape[1] == 5  # id, t, z, y, x
    with pytest.raises(InputImageError, match="the Z axis has 2 planes"):
        image_layout((4, 2, 64, 96, 3), True, "TZYXC")
    # T Z C Y X: two sliders besides time, more than napari's Tracks can line up with
    five_d = image_layout((4, 1, 3, 64, 96), False, "TZCYX")
    placement = five_d.placement((1.0,) * 5, (0.0,) * 5, "TYX")
    assert placement.extra_axes == (1, 2)
    with pytest.raises(BloodcellError, match="at most one axis besides T, Y and X"):
        tracks_layers(tracks, "m", "m-id", placement, {})


def test_stack_of_another_axis_order_gives_the_same_cells(movie):
    from napari_bloodcell._napari._compute import run_to_end, stack_steps

    tyxc = run_to_end(stack_steps(_job(movie.image))).table
    tcyx_job = _job(movie.image.transpose(0, 3, 1, 2), rgb=False, scale=(2.0, 1.0, 0.5, 0.5))
    tcyx = run_to_end(stack_steps(tcyx_job))
    pd.testing.assert_frame_equal(tyxc, tcyx.table)
    # napari lines layers up by their last axes: the outputs get a size-1 channel axis,
    # one plane as wide as the 3 channels and centred on them (shown at every channel)
    (instances, meta, _), _, (points, _, _) = tcyx.layers
    assert instances.shape == (4, 1, 64, 96) and meta["scale"] == (2.0, 3.0, 0.5, 0.5)
    assert meta["translate"] == (0.0, 1.0, 10.0, 20.0)
    np.testing.assert_array_equal(
        instances[:, 0], run_to_end(stack_steps(_job(movie.image))).layers[0][0][:]
    )
    assert points.shape[1] == 4 and not points[:, 1].any()


def test_a_frame_of_a_stack_is_analysed_as_the_batch_analyses_it(movie):
    from napari_bloodcell._napari._compute import frame_steps, run_to_end, stack_steps

    # a 16-bit stack growing brighter: each frame alone would be stretched its own way
    gains = np.arange(1, 5, dtype=np.float64)[:, None, None, None]
    stack = (movie.image.astype(np.float64) * 40 * gains).astype(np.uint16)
    batch = run_to_end(stack_steps(_job(stack))).table
    alone = run_to_end(frame_steps(_job(stack), 3))[-1][1]["features"]  # the points' table
    assert len(alone)
    pd.testing.assert_frame_equal(
        _plain(alone).reset_index(drop=True),
        _plain(batch[batch["frame"] == 3]).reset_index(drop=True),
    )


def test_a_good_frame_of_a_stack_with_a_bad_frame_is_still_analysed(movie):
    from napari_bloodcell._napari._compute import read_frame

    stack = movie.image.astype(np.float32) / 255
    stack[1, 3, 3] = np.nan  # the stack's intensity sample refuses it
    layout = _job(stack).layout
    assert np.isfinite(read_frame(stack, layout, 2)).all()
    with pytest.raises(InputImageError, match="NaN"):
        read_frame(stack, layout, 1)


def test_empty_frames_give_no_cells_and_are_reported(movie):
    from napari_bloodcell._napari._compute import run_to_end, stack_steps

    stack = movie.image.copy()
    stack[2] = 0
    result = run_to_end(stack_steps(_job(stack)))
    assert result.empty_frames == [2]
    assert 2 not in set(result.table["frame"])
    assert not result.layers[0][0][2].any()


def test_batch_refuses_a_single_frame(movie):
    from napari_bloodcell._napari._compute import run_to_end, stack_steps

    with pytest.raises(BloodcellError, match="no time axis"):
        run_to_end(stack_steps(_job(movie.image[0], scale=(0.5, 0.5))))


def test_a_varying_4th_channel_is_a_channel_only_when_the_axes_are_typed():
    from napari_bloodcell._napari._compute import image_layout, read_frame

    rgba = np.random.default_rng(0).random((48, 64, 4)).astype(np.float32)
    with pytest.raises(InputImageError, match="varying 4th channel"):
        read_frame(rgba, image_layout(rgba.shape, True))  # an RGBA layer, axes inferred
    assert read_frame(rgba, image_layout(rgba.shape, False, "YXC")).shape == (48, 64, 4)


def test_a_16_bit_rgb_layer_keeps_its_colours_and_three_channels_are_stretched():
    from napari_bloodcell._napari._compute import image_layout, read_frame

    rgb = make_smear(shape=(240, 320), n_rbc=6, n_wbc=1, n_platelets=2, seed=2).image
    deep = rgb.astype(np.uint16) * 257
    expected = rgb / np.float32(255)
    np.testing.assert_allclose(read_frame(deep, image_layout(deep.shape, True)), expected)
    movie = np.stack([deep, deep])  # as a time-lapse layer: the stack's mapping
    colours = read_frame(movie, image_layout(movie.shape, True, "TYXC"), 1)
    np.testing.assert_allclose(colours, expected)
    channels = read_frame(deep, image_layout(deep.shape, False, "YXC"))  # not an RGB layer
    assert channels.max() == 1 and channels.min() == 0


def test_missing_channel_is_refused():
    from napari_bloodcell._napari._compute import check_channels, image_layout

    layout = image_layout((5, 48, 64), False)
    with pytest.raises(InputImageError, match="has 1 channel"):
        check_channels(AnalysisSettings(channels={"platelet": 2}), layout)


@pytest.mark.parametrize(
    ("leukocyte", "platelet", "n_channels", "expected"),
    [
        (None, None, 3, None),  # all default: the pipeline's own defaults
        (-1, None, 3, {"platelet": 0}),  # 'none' drops one role, the other keeps its default
        (None, -1, 3, {"leukocyte": 1}),
        (None, 2, 3, {"leukocyte": 1, "platelet": 2}),
        (0, None, 1, {"leukocyte": 0}),  # one channel has no default platelet channel
        (0, None, 2, {"leukocyte": 0, "platelet": 1}),  # red leukocytes: the defaults swap
        (None, 1, 3, {"leukocyte": 0, "platelet": 1}),
        (2, None, 3, {"leukocyte": 2, "platelet": 0}),  # no clash: the default stays
    ],
)
def test_channel_choices_keep_the_defaults_of_roles_left_at_default(
    leukocyte, platelet, n_channels, expected
):
    from napari_bloodcell._napari._compute import channel_mapping

    choices = {"leukocyte": leukocyte, "platelet": platelet}
    assert channel_mapping(choices, n_channels) == expected


def test_leaving_every_cell_type_out_is_refused():
    from napari_bloodcell._napari._compute import channel_mapping

    with pytest.raises(InputImageError, match="no cell type is left"):
        channel_mapping({"leukocyte": -1, "platelet": -1}, 3)
    # one channel, given to the platelets: the leukocytes' default has nowhere to go
    with pytest.raises(InputImageError, match="choose the leukocyte channel too"):
        channel_mapping({"leukocyte": None, "platelet": 0}, 1)


def test_frame_counts_count_frames_without_cells_as_zero():
    from napari_bloodcell.table import frame_counts

    table = pd.DataFrame({"frame": [0, 0, 2], "cell_class": ["a", "b", "a"], "label": [1, 2, 1]})
    counts = frame_counts(table, n_frames=4)
    assert counts.index.tolist() == [0, 1, 2, 3]
    assert counts["a"].tolist() == [1, 0, 1, 0] and counts["b"].tolist() == [1, 0, 0, 0]
    assert frame_counts(table.iloc[:0], n_frames=3).index.tolist() == [0, 1, 2]


def test_export_writes_table_and_sidecar_and_never_overwrites(tmp_path, movie):
    from napari_bloodcell._napari._compute import run_to_end, stack_steps
    from napari_bloodcell._napari._writer import export_table, write_cells_table

    result = run_to_end(stack_steps(_job(movie.image)))
    points, meta, _ = result.layers[-1]
    parameters = meta["metadata"]["napari_bloodcell"]["parameters"]
    written = export_table(tmp_path / "cells.csv", meta["features"], parameters)
    assert {p.suffix for p in written} >= {".csv", ".json"}
    for path in written[:-1]:
        pd.testing.assert_frame_equal(
            _plain(read_table(path)), _plain(meta["features"]), check_dtype=False
        )
    sidecar = json.loads(written[-1].read_text())
    assert sidecar["modality"] == "fluorescence" and sidecar["frames"] == 4
    before = written[0].read_bytes()
    with pytest.raises(OutputExistsError, match="already exist"):
        export_table(tmp_path / "cells.csv", meta["features"].iloc[:1], parameters)
    assert written[0].read_bytes() == before
    assert write_cells_table(str(tmp_path / "other.csv"), points, meta)[0].endswith("other.csv")
    # napari asks before replacing other.csv; its sidecar goes with it, a stranger's JSON not
    assert write_cells_table(str(tmp_path / "other.csv"), points, meta)[0].endswith("other.csv")
    (tmp_path / "notes.json").write_text("mine")
    with pytest.raises(OutputExistsError, match="does not belong to notes.csv"):
        write_cells_table(str(tmp_path / "notes.csv"), points, meta)
    assert (tmp_path / "notes.json").read_text() == "mine"
    with pytest.raises(BloodcellError, match="no napari-bloodcell cell table"):
        write_cells_table(str(tmp_path / "x.csv"), None, {"name": "pts", "features": None})


@pytest.mark.parametrize(
    ("saved", "copy"), [("cells.csv", "cells.parquet"), ("cells.parquet", "cells.csv")]
)
def test_saving_a_cells_layer_keeps_the_other_copy_of_an_export_in_step(
    tmp_path, movie, saved, copy
):
    """File → Save Layers over an exported cells.csv left the old cells.parquet beside it."""
    pytest.importorskip("pyarrow")
    from napari_bloodcell._napari._compute import run_to_end, stack_steps
    from napari_bloodcell._napari._writer import export_table, write_cells_table

    points, meta, _ = run_to_end(stack_steps(_job(movie.image))).layers[-1]
    export_table(tmp_path / "cells.csv", meta["features"], {})
    fewer = {**meta, "features": meta["features"].iloc[:3]}
    written = write_cells_table(str(tmp_path / saved), points[:3], fewer)
    assert sorted(Path(p).name for p in written) == ["cells.csv", "cells.json", "cells.parquet"]
    assert len(read_table(tmp_path / copy)) == 3


def test_saving_a_cells_layer_as_parquet_writes_a_parquet_table(tmp_path, movie):
    """File → Save Selected Layers as cells.parquet found no writer: npe2 matched only .csv."""
    pytest.importorskip("pyarrow")
    import npe2
    from napari.components import LayerList
    from napari.layers import Points

    from napari_bloodcell._napari._compute import run_to_end, stack_steps

    points, meta, _ = run_to_end(stack_steps(_job(movie.image))).layers[-1]
    npe2.PluginManager.instance().discover()  # what napari does when it starts
    written = LayerList([Points(points, **meta)]).save(str(tmp_path / "cells.parquet"))
    assert sorted(Path(p).name for p in written) == ["cells.json", "cells.parquet"]
    assert not (tmp_path / "cells.csv").exists()  # nobody asked for a CSV
    pd.testing.assert_frame_equal(
        _plain(read_table(tmp_path / "cells.parquet")), _plain(meta["features"])
    )
    assert (
        json.loads((tmp_path / "cells.json").read_text())
        == (meta["metadata"]["napari_bloodcell"]["parameters"])
    )


def test_saving_as_parquet_leaves_a_strangers_csv_intact(tmp_path, movie):
    pytest.importorskip("pyarrow")
    from napari_bloodcell._napari._compute import run_to_end, stack_steps
    from napari_bloodcell._napari._writer import write_cells_table

    points, meta, _ = run_to_end(stack_steps(_job(movie.image))).layers[-1]
    (tmp_path / "notes.csv").write_text("mine")  # napari asked about notes.parquet only
    with pytest.raises(OutputExistsError, match="notes.csv already exists .* not belong"):
        write_cells_table(str(tmp_path / "notes.parquet"), points, meta)
    assert (tmp_path / "notes.csv").read_text() == "mine"
    assert not (tmp_path / "notes.parquet").exists() and not (tmp_path / "notes.json").exists()


def test_saving_a_cells_layer_refuses_parquet_without_pyarrow_and_other_suffixes(
    tmp_path, movie, monkeypatch
):
    from napari_bloodcell import table as table_module
    from napari_bloodcell._napari import _writer
    from napari_bloodcell._napari._compute import run_to_end, stack_steps

    points, meta, _ = run_to_end(stack_steps(_job(movie.image))).layers[-1]
    with pytest.raises(BloodcellError, match=r"must end in \.csv or \.parquet"):
        _writer.write_cells_table(str(tmp_path / "cells"), points, meta)  # no extension typed
    monkeypatch.setattr(table_module, "parquet_available", lambda: False)
    monkeypatch.setattr(_writer, "parquet_available", lambda: False)
    with pytest.raises(BloodcellError, match="needs pyarrow"):
        _writer.write_cells_table(str(tmp_path / "cells.parquet"), points, meta)
    assert list(tmp_path.iterdir()) == []


def test_exports_keep_every_dot_of_the_file_name(tmp_path):
    from napari_bloodcell._napari._writer import export_paths

    names = [p.name for p in export_paths(tmp_path / "run.2.csv")]
    assert names[0] == "run.2.csv" and names[-1] == "run.2.json"


def test_the_cells_table_follows_moved_points_and_refuses_added_ones(movie):
    from napari_bloodcell._napari._compute import run_to_end, stack_steps
    from napari_bloodcell._napari._layers import cells_table

    job = _job(movie.image)
    job = replace(job, settings=replace(job.settings, pixel_size_um=0.5))
    points, meta, _ = run_to_end(stack_steps(job)).layers[-1]
    features, metadata = meta["features"], meta["metadata"]
    pd.testing.assert_frame_equal(cells_table(points, features, metadata), features)
    moved = points.copy()
    moved[0, -2:] += (5.0, -3.0)  # (frame, y, x): dragged within its frame
    table = cells_table(moved, features, metadata)
    assert table.loc[0, ["centroid_y", "centroid_x"]].tolist() == pytest.approx(
        [features.loc[0, "centroid_y"] + 5, features.loc[0, "centroid_x"] - 3]
    )
    pixel_size_um = metadata["napari_bloodcell"]["parameters"]["pixel_size_um"]
    assert table.loc[0, ["centroid_y_um", "centroid_x_um"]].tolist() == pytest.approx(
        [
            (features.loc[0, "centroid_y"] + 5) * pixel_size_um,
            (features.loc[0, "centroid_x"] - 3) * pixel_size_um,
        ]
    )
    added = np.vstack([points, points[2]])  # napari copies a row's features for a new point
    with pytest.raises(BloodcellError, match=f"point\\(s\\) {len(points)} were added by hand"):
        cells_table(added, pd.concat([features, features.iloc[[2]]]), metadata)
    elsewhere = added.copy()
    elsewhere[-1, 0] = (points[2, 0] + 1) % (points[:, 0].max() + 1)  # added on another frame
    with pytest.raises(BloodcellError, match="added by hand"):
        cells_table(elsewhere, pd.concat([features, features.iloc[[2]]]), metadata)


def test_the_legend_lists_the_models_classes_only_when_it_classified_cells():
    from napari_bloodcell._napari._layers import legend_html

    model = ["lymphocyte", "neutrophil"]
    fluorescence = pd.DataFrame({"cell_class": ["leukocyte", "platelet", "platelet"]})
    assert "neutrophil" not in legend_html(fluorescence, model)  # the model was not used
    assert "platelet: 2" in legend_html(fluorescence, model)
    smear = pd.DataFrame({"cell_class": ["neutrophil", "rbc"]})
    assert "lymphocyte: 0" in legend_html(smear, model)  # a 0 of a differential is a finding
    assert "lymphocyte: 0" in legend_html(pd.DataFrame({"cell_class": ["uncertain"]}), model)


def test_the_legend_leaves_out_a_model_that_classified_nothing_though_it_has_the_class():
    """The default model has a platelet class: a fluorescence batch's segmented platelets
    (no model probability) listed its seven white-cell classes, all 0, above the counts."""
    from napari_bloodcell._napari._layers import legend_html

    model = ["lymphocyte", "neutrophil", "platelet"]
    fluorescence = pd.DataFrame(
        {"cell_class": ["leukocyte", "platelet", "platelet"], "confidence": [np.nan] * 3}
    )
    assert "neutrophil" not in legend_html(fluorescence, model)
    assert "platelet: 2" in legend_html(fluorescence, model)
    smear = pd.DataFrame({"cell_class": ["platelet", "rbc"], "confidence": [0.9, np.nan]})
    assert "lymphocyte: 0" in legend_html(smear, model)  # the model typed the platelet


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    """Category columns as plain strings (CSV does not keep the category dtype)."""
    return table.astype({c: str for c in ("source", "cell_type", "cell_class")})


def test_exported_parameters_record_the_calibration_of_the_models_confidences(tmp_path):
    """The sidecar says which model file (stamp) and calibration made the confidences:
    temperature, test-time views and the model's own threshold beside the one used."""
    from napari_bloodcell._napari._compute import image_layout, run_parameters
    from napari_bloodcell._napari._writer import export_table
    from napari_bloodcell.classification.model_files import resolve_model_path
    from napari_bloodcell.classification.remote import RemoteClassifier

    from .helpers import model_copy

    model = model_copy(
        resolve_model_path("default"), tmp_path, temperature=1.7, uncertain_threshold=0.375
    )
    with RemoteClassifier(model) as classifier:  # metadata only: no worker is started
        settings = AnalysisSettings(uncertain_threshold=0.9)
        parameters = run_parameters(settings, classifier, "smear", image_layout((8, 8, 3), True))
    table = pd.DataFrame({"label": [1], "cell_class": ["rbc"]})
    sidecar = json.loads(export_table(tmp_path / "cells.csv", table, parameters)[-1].read_text())
    status = model.stat()
    assert sidecar["uncertain_threshold"] == 0.9
    assert sidecar["model"] == {
        **sidecar["model"],
        "temperature": 1.7,
        "test_time_views": classifier.metadata.test_time_views,
        "uncertain_threshold": 0.375,
        "file_modified_ns": status.st_mtime_ns,
        "file_size_bytes": status.st_size,
    }


def test_the_pixel_size_comes_from_a_layer_scale_in_lengths():
    from napari.layers import Image

    from napari_bloodcell._napari._compute import (
        calibrated_frame_interval_s,
        calibrated_pixel_size_um,
        image_layout,
    )

    def size(units, scale=(2.0, 0.25, 0.25), shape=(5, 16, 16)):
        layer = Image(np.zeros(shape), scale=scale, units=units)
        return calibrated_pixel_size_um(image_layout(shape, False), layer.scale, layer.units)

    assert size(("second", "micrometer", "micrometer")) == 0.25
    assert size(("second", "nanometer", "nanometer"), scale=(1, 250, 250)) == 0.25
    assert size(None) is None  # napari's default unit: pixel
    assert size(("second", "micrometer", "micrometer"), scale=(1, -0.25, -0.25)) == 0.25  # flipped
    layout = image_layout((5, 16, 16), False)
    for scale, interval in (((-2.0, 1, 1), 2.0), ((2.0, 1, 1), 2.0)):
        layer = Image(np.zeros((5, 16, 16)), scale=scale, units=("second", "pixel", "pixel"))
        assert calibrated_frame_interval_s(layout, layer.scale, layer.units) == interval
    rgb = Image(np.zeros((16, 16, 3)), rgb=True, scale=(0.5, 0.5), units="mm")
    assert calibrated_pixel_size_um(image_layout((16, 16, 3), True), rgb.scale, rgb.units) == 500
    with pytest.raises(InputImageError, match="0.25 µm wide and 0.5 µm high"):
        size(("second", "micrometer", "micrometer"), scale=(1, 0.5, 0.25))
