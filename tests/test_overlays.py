"""Overlay images for a quick visual check of the segmentation."""

import numpy as np
import pandas as pd

from napari_bloodcell.classes import class_colours
from napari_bloodcell.overlays import HALO_DARKENING, render_overlay


def test_outlines_take_the_class_colour_with_a_dark_line_outside():
    """A pale pink red-cell outline was drawn straight on the pink cell: invisible."""
    frame = np.full((20, 30, 3), 0.8, np.float32)
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2  # touching the first: no dark line between them
    table = pd.DataFrame({"label": [1, 2], "cell_class": ["rbc", "neutrophil"]})
    out = render_overlay(frame, labels, table)
    colours = class_colours(["rbc", "neutrophil"])
    rbc = tuple(int(colours["rbc"][i : i + 2], 16) for i in (1, 3, 5))
    assert tuple(out[5, 7]) == rbc and tuple(out[10, 5]) == rbc  # its inner edge
    assert tuple(out[10, 10]) == (204, 204, 204)  # inside: the frame
    assert tuple(out[4, 7]) == (204 // HALO_DARKENING,) * 3  # just outside, darkened
    assert tuple(out[10, 14]) == rbc and tuple(out[10, 15]) != (68, 68, 68)  # shared edge
    assert tuple(out[0, 0]) == (204, 204, 204)  # background away from cells


def test_an_overlay_without_classified_cells_is_the_outlined_frame_itself(tmp_path):
    """Drawn through matplotlib (as long as the analysis itself) though it had no text."""
    import imageio.v3 as iio

    from napari_bloodcell.overlays import save_overlay_png

    frame = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 5:15] = 1
    table = pd.DataFrame({"label": [1], "cell_class": ["rbc"], "confidence": [np.nan]})
    path = save_overlay_png(tmp_path / "o.png", frame, labels, table)
    np.testing.assert_array_equal(iio.imread(path), render_overlay(frame, labels, table))
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_saving_figures_leaves_the_users_matplotlib_backend_alone(tmp_path):
    """Annotated overlays, reports and learning curves switched the whole process to Agg
    (a user's inline Jupyter or Qt figures stopped showing)."""
    import matplotlib

    from napari_bloodcell.classification.evaluation import plot_confusion_matrix
    from napari_bloodcell.classification.training import write_learning_curves
    from napari_bloodcell.overlays import save_overlay_png

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        frame = np.full((40, 60, 3), 0.8, np.float32)
        labels = np.zeros((40, 60), np.int32)
        labels[10:30, 10:30] = 1
        table = pd.DataFrame(
            {"label": [1], "cell_class": ["neutrophil"], "confidence": [0.9]}
            | {"bbox_y0": [10], "bbox_x0": [10], "bbox_y1": [30], "bbox_x1": [30]}
        )
        save_overlay_png(tmp_path / "o.png", frame, labels, table)
        plot_confusion_matrix(np.array([[3, 1], [0, 2]]), ["a", "b"], tmp_path / "c.png")
        write_learning_curves({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}, tmp_path / "h")
        assert matplotlib.get_backend() == "svg"
        assert {p.name for p in tmp_path.iterdir()} == {"o.png", "c.png", "h.csv", "h.png"}
    finally:
        matplotlib.use(before)


def test_a_user_models_classes_keep_their_colours_on_every_frame():
    """Colours of a model's own classes followed their order in each frame's table: one
    class changed colour from frame to frame, unlike in the napari layers."""
    frame = np.full((20, 40, 3), 0.9, np.float32)
    labels = np.zeros((20, 40), np.int32)
    labels[5:15, 5:15], labels[5:15, 25:35] = 1, 2
    probabilities = {"p_blast": [0.9, 0.1], "p_promyelocyte": [0.1, 0.9]}  # the model's order
    expected = class_colours(["blast", "promyelocyte"])  # as the napari layers colour them
    for classes in (["blast", "promyelocyte"], ["promyelocyte", "blast"]):
        table = pd.DataFrame({"label": [1, 2], "cell_class": classes, **probabilities})
        out = render_overlay(frame, labels, table)
        for (y, x), name in zip([(5, 5), (5, 25)], classes, strict=True):
            assert "#" + bytes(out[y, x]).hex() == expected[name]


def test_both_channels_of_a_two_channel_frame_are_drawn():
    """Only the first channel was drawn (as grey): a leukocyte channel never showed."""
    frame = np.zeros((10, 10, 2), np.float32)
    frame[..., 0], frame[..., 1] = 0.2, 0.6
    out = render_overlay(frame, np.zeros((10, 10), np.int32), pd.DataFrame())
    assert tuple(out[5, 5]) == (51, 153, 0)


def test_every_class_of_a_user_model_gets_its_own_colour():
    """The 8th class a model added to the fixed ones shared the 1st one's colour (a cycle
    of 7): e.g. a fine-tuned model's "band" and "artifact" looked alike in every layer."""
    from napari_bloodcell.classes import CLASS_COLOURS, class_colours

    own = [f"class {i}" for i in range(40)]
    colours = class_colours([*own, "neutrophil", "platelet"])
    assert len({colours[name] for name in own}) == len(own)
    assert not {colours[name] for name in own} & set(CLASS_COLOURS.values())
    assert colours["neutrophil"] == CLASS_COLOURS["neutrophil"]
    assert class_colours(own[:9]) == {name: colours[name] for name in own[:9]}  # stable
