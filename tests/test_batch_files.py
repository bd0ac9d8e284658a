"""Files of a batch run and of a training run: never over files they do not own."""

import numpy as np
import tifffile

from napari_bloodcell import batch


def test_large_label_stacks_are_written_as_bigtiff(tmp_path, monkeypatch):
    frames = np.arange(3 * 16 * 20, dtype=np.uint32).reshape(3, 16, 20)
    small = batch.write_label_stack(tmp_path / "small.tif", iter(frames), n_frames=3,
                                    frame_shape=(16, 20))  # fmt: skip
    monkeypatch.setattr(batch, "BIGTIFF_FROM_BYTES", frames.nbytes)  # as if it were 4 GiB
    large = batch.write_label_stack(tmp_path / "large.tif", iter(frames), n_frames=3,
                                    frame_shape=(16, 20))  # fmt: skip
    with tifffile.TiffFile(small) as tif:
        assert not tif.is_bigtiff
    with tifffile.TiffFile(large) as tif:
        assert tif.is_bigtiff
        np.testing.assert_array_equal(tif.asarray(), frames)


def test_learning_curves_of_a_dotted_model_name_keep_the_whole_name(tmp_path):
    from napari_bloodcell.classification.training import write_learning_curves

    (tmp_path / "run.csv").write_text("a user's table")
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "accuracy": [0.5, 0.7]}
    written = write_learning_curves(history, tmp_path / "run.1_history")
    assert [p.name for p in written] == ["run.1_history.csv", "run.1_history.png"]
    assert (tmp_path / "run.csv").read_text() == "a user's table"


def test_a_model_replaced_during_a_run_is_refused_never_mixed_in(tmp_path, tiny_model):
    """A worker loading the model after it was replaced used the new file's network with
    the run's classes; now it refuses the input, and the units already classified keep the
    model the run chose."""
    import shutil

    import imageio.v3 as iio

    from napari_bloodcell.classification.model_files import read_metadata, update_metadata
    from napari_bloodcell.pipeline import AnalysisSettings
    from napari_bloodcell.synthetic import make_smear

    model = shutil.copy(tiny_model, tmp_path / "model.keras")
    inputs = []
    for seed in (1, 2):
        inputs.append(tmp_path / f"smear{seed}.png")
        smear = make_smear(shape=(240, 320), n_rbc=6, n_wbc=1, n_platelets=2, seed=seed)
        iio.imwrite(inputs[-1], smear.image)

    def replace_the_model(_progress) -> None:
        if read_metadata(model).uncertain_threshold != 0.99:
            metadata = read_metadata(model)
            metadata.uncertain_threshold = 0.99
            update_metadata(model, metadata)
            batch.cached_classifier.cache_clear()  # as a new Dask worker process would start

    summary = batch.analyze_files(
        inputs, tmp_path / "out", AnalysisSettings(), model=model, on_progress=replace_the_model
    )
    assert list(summary.failures) == [str(inputs[1])]
    assert "changed on disk after it was chosen" in summary.failures[str(inputs[1])]
    assert summary.table["p_lobed"].notna().any()  # the first input, classified
