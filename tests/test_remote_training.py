"""Training jobs: input checked before the process starts; a trained model never installed
over one saved under the same name meanwhile."""

import pytest

from napari_bloodcell.classification.remote_training import TrainingDone, TrainingJob
from napari_bloodcell.errors import DatasetError

from .helpers import write_crop_folder


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_model_saved_meanwhile_under_the_name_is_kept_unless_overwrite(tmp_path, overwrite):
    data = write_crop_folder(tmp_path / "crops", n_per_class=2, seed=0)
    models = tmp_path / "models"
    job = TrainingJob([data], "mine", models_dir=models, overwrite=overwrite)
    work = models / ".training-x"  # what the training process wrote
    work.mkdir(parents=True)
    (work / "mine.keras").write_bytes(b"trained")
    (work / "mine_history.csv").write_text("epoch")
    (work / "mine_history.png").write_bytes(b"curves")
    (models / "mine.keras").write_bytes(b"saved meanwhile")  # e.g. by the command line

    done = job._install(TrainingDone(work / "mine.keras", {}, ["lobed", "round"]))

    expected = models / ("mine.keras" if overwrite else "mine-2.keras")
    assert isinstance(done, TrainingDone) and done.model_path == expected
    assert expected.read_bytes() == b"trained"
    assert expected.with_name(f"{expected.stem}_history.csv").read_text() == "epoch"
    assert expected.with_name(f"{expected.stem}_history.png").read_bytes() == b"curves"
    if not overwrite:
        assert (models / "mine.keras").read_bytes() == b"saved meanwhile"
    assert not (work / "mine.keras").exists()


def test_data_that_cannot_be_validated_is_refused_before_the_process_starts(tmp_path):
    data = write_crop_folder(tmp_path / "crops", n_per_class=4, seed=0, n_sources=1)
    with pytest.raises(DatasetError, match="too few source images"):
        TrainingJob([data], "mine", models_dir=tmp_path / "models")
