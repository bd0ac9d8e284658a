"""Bad model files: truncated, foreign, other classes, and networks that need custom code
(refused although Keras safe mode would load a registered custom object)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import imageio.v3 as iio
import pytest

from napari_bloodcell.classification.inference import CellClassifier
from napari_bloodcell.classification.model_files import (
    METADATA_MEMBER,
    ModelMetadata,
    save_model,
)
from napari_bloodcell.cli import main
from napari_bloodcell.errors import ModelError

from .corpus import smear_rgb

CLASSES = ["lobed", "round"]


def _metadata(classes=CLASSES) -> ModelMetadata:
    return ModelMetadata(classes=list(classes), input_size=16, crop_scale=2.2, architecture="x")


def _network(middle=None, activation="softmax"):
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    if middle is not None:
        x = middle(x)
    return keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation=activation)(x))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Model files: one good, the rest broken in one way each."""
    import keras

    @keras.saving.register_keras_serializable(package="robustness_tests")
    class Doubling(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    folder = tmp_path_factory.mktemp("models")
    good = save_model(_network(), folder / "good.keras", _metadata())
    paths = {"good": good}
    paths["truncated"] = folder / "truncated.keras"
    paths["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    paths["not keras"] = folder / "notes.keras"
    paths["not keras"].write_text("these are my notes, not a model")
    paths["other classes"] = save_model(
        _network(), folder / "other.keras", _metadata(["a", "b", "c"])
    )
    paths["no network"] = folder / "metadata_only.keras"
    with zipfile.ZipFile(paths["no network"], "w") as archive, zipfile.ZipFile(good) as source:
        archive.writestr(METADATA_MEMBER, source.read(METADATA_MEMBER))
    lambda_layer = keras.layers.Lambda(lambda x: x + 1.0)
    paths["Lambda layer"] = save_model(_network(lambda_layer), folder / "lambda.keras", _metadata())
    paths["custom object"] = save_model(_network(Doubling()), folder / "custom.keras", _metadata())
    paths["no softmax"] = save_model(
        _network(activation=None), folder / "logits.keras", _metadata()
    )  # its raw scores were written as probabilities (confidence 13.7)
    paths["sequential"] = save_model(
        keras.Sequential(
            [
                keras.Input((16, 16, 3)),
                keras.layers.Conv2D(4, 3),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(len(CLASSES), activation="softmax"),
            ]
        ),
        folder / "sequential.keras",
        _metadata(),
    )
    paths["Keras function"] = _with_dense_activation(
        good, folder / "get_file.keras", {"module": "keras.utils", "class_name": "function",
                                          "config": "get_file", "registered_name": "get_file"}
    )  # fmt: skip
    return paths


def _with_dense_activation(model: Path, path: Path, activation) -> Path:
    """A copy of ``model`` whose Dense layer's activation config is ``activation``."""
    import json

    with zipfile.ZipFile(model) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                (dense,) = [c for c in config["config"]["layers"] if c["class_name"] == "Dense"]
                dense["config"]["activation"] = activation
                data = json.dumps(config).encode()
            target.writestr(item, data)
    return path


BROKEN = {
    "truncated": "not a Keras .keras model file",
    "not keras": "not a Keras .keras model file",
    "other classes": "does not match its metadata",
    "no network": "not a Keras .keras model file",
    "Lambda layer": "custom code (Lambda layer)",
    "custom object": "custom code (robustness_tests>Doubling",
    "Keras function": "custom code (function 'get_file' from module keras.utils)",
    "no softmax": "gives no class probabilities: end the network with a softmax",
}


def test_a_good_model_file_loads(models):
    CellClassifier(models["good"]).load()


def test_a_sequential_network_classifies(models):
    """A Keras Sequential network (loaded, it has no defined `output`) failed at its first
    classification: an AttributeError traceback, exit 1."""
    import numpy as np

    crops = np.random.default_rng(0).random((3, 16, 16, 3)).astype(np.float32)
    probabilities, features = CellClassifier(models["sequential"]).predict(crops)
    assert probabilities.shape == (3, 2) and features.shape == (3, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(("kind", "message"), BROKEN.items(), ids=list(BROKEN))
def test_a_broken_model_is_a_model_error(models, kind, message):
    with pytest.raises(ModelError, match=re.escape(message)) as error:
        CellClassifier(models[kind]).load()
    assert models[kind].name in str(error.value)


@pytest.mark.parametrize("kind", ["truncated", "other classes", "Lambda layer"])
def test_the_cli_refuses_a_broken_model_before_analysing(tmp_path, models, kind, capsys):
    frame = tmp_path / "smear.png"
    iio.imwrite(frame, smear_rgb())
    out = tmp_path / "out"
    assert main(["analyze", str(frame), "--out", str(out), "--model", str(models[kind])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and models[kind].name in err and BROKEN[kind] in err
    assert [p for p in out.rglob("*") if p.is_file()] == []
