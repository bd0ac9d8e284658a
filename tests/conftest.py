"""Shared fixtures: paths to the shared data, tiny crop folders and a tiny trained model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from .helpers import write_crop_folder

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

requires_bccd = pytest.mark.skipif(
    not (SHARED_DATA / "bccd" / "JPEGImages").is_dir(), reason="../shared/data/bccd not available"
)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A compact model (32 px input) trained for a few epochs on round vs lobed nuclei."""
    from napari_bloodcell.classification.training import TrainingConfig, train_classifier

    root = tmp_path_factory.mktemp("tiny")
    data = write_crop_folder(root / "data", n_per_class=48, seed=0)
    config = TrainingConfig(
        input_size=32,
        epochs=8,
        batch_size=16,
        learning_rate=3e-3,
        patience=8,
        validation_fraction=0.2,
        test_fraction=0.0,
    )
    return train_classifier([data], root / "tiny.keras", config).model_path


@pytest.fixture(scope="session")
def tiny_model_with_novelty(tiny_model, tmp_path_factory) -> Path:
    """A copy of ``tiny_model`` with a novelty reference, fitted by ``calibrate`` with the
    minimum sizes lowered to its 96 crops (the real minimums are for real models)."""
    import shutil

    from napari_bloodcell.classification import novelty
    from napari_bloodcell.classification.calibration import calibrate_model_file

    copy = shutil.copy(tiny_model, tmp_path_factory.mktemp("novel") / "tiny_novelty.keras")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(novelty, "MIN_TRAINING_CROPS", 10)
        patch.setattr(novelty, "MIN_VALIDATION_CROPS", 10)
        assert calibrate_model_file(copy, [tiny_model.parent / "data"])["novelty_reference"]
    return copy


@pytest.fixture(scope="session")
def tiny_heldout(tmp_path_factory) -> Path:
    """Fresh round/lobed images (another seed) never seen in training."""
    return write_crop_folder(tmp_path_factory.mktemp("heldout"), n_per_class=20, seed=99)


@pytest.fixture(scope="module")
def no_tensorflow_in_this_process():
    """Viewer tests must not share a process with TensorFlow (Mesa llvmpipe segfaults)."""
    if "tensorflow" in sys.modules:
        reason = "TensorFlow was imported in this process; run `pytest -m napari` on its own"
        if os.environ.get("CI"):  # CI runs the napari tests in their own process: never skip
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def notifications(monkeypatch):
    """Messages shown with napari's show_error / show_warning / show_info."""
    import napari.utils.notifications as notes

    shown: list[tuple[str, str]] = []
    for kind in ("error", "warning", "info"):
        monkeypatch.setattr(notes, f"show_{kind}", lambda m, kind=kind: shown.append((kind, m)))
    return shown
