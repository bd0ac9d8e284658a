"""Classifier: architectures, model files, training that learns, inference and scoring."""

import json
import random
import sys
import zipfile
from dataclasses import replace as replace_config
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from napari_bloodcell.classification.datasets import (
    CropDataset,
    find_labelled_files,
    load_crop_dataset,
    prepare_crop_files,
    source_id,
    split_by_source,
)
from napari_bloodcell.classification.evaluation import classification_metrics, evaluate_classifier
from napari_bloodcell.classification.inference import (
    UNCERTAIN,
    CellClassifier,
    apply_temperature,
    decide,
)
from napari_bloodcell.classification.model_files import (
    ModelMetadata,
    read_metadata,
    resolve_model_path,
    save_model,
)
from napari_bloodcell.errors import DatasetError, ModelError, OutputExistsError

from .helpers import running_children, write_crop_folder


def test_coursework_network_is_the_seed_architecture():
    from napari_bloodcell.classification.architectures import build_model

    model = build_model("coursework", 4)
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 4)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert len(convs) == 1 + 9 * 4  # stem + 9 bottleneck blocks × (3 convs + projection)
    assert convs[0].kernel_size == (7, 7) and convs[0].strides == (2, 2)
    assert sorted(c.filters for c in convs[-4:]) == [256, 256, 1024, 1024]
    assert 7.0e6 < model.count_params() < 8.0e6


def test_compact_network_is_small():
    from napari_bloodcell.classification.architectures import build_model

    model = build_model("compact", 8)
    assert model.input_shape == (None, 80, 80, 3)
    assert 0.5e6 < model.count_params() < 1.0e6


def test_model_file_round_trip_keeps_weights_and_metadata(tmp_path):
    from napari_bloodcell.classification.architectures import build_model
    from napari_bloodcell.classification.model_files import load_keras_model

    model = build_model("compact", 3, 32)
    metadata = ModelMetadata(
        classes=["a", "b", "c"], input_size=32, crop_scale=2.2, architecture="compact"
    )
    path = save_model(model, tmp_path / "m.keras", metadata)
    assert read_metadata(path) == metadata
    crops = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        load_keras_model(path).predict_on_batch(crops), model.predict_on_batch(crops), atol=1e-6
    )


def test_training_learns_a_separable_task(tiny_model, tiny_heldout):
    metrics, _ = evaluate_classifier([tiny_heldout], tiny_model)
    assert metrics["n"] == 40
    assert metrics["accuracy"] >= 0.8  # chance is 0.5; these images were never trained on
    training = read_metadata(tiny_model).training
    train, validation = set(training["train_sources"]), set(training["validation_sources"])
    assert train and validation and not train & validation and not training["test_sources"]
    data = tiny_model.parent / "data"  # every source of the folder is in one recorded part
    assert train | validation == {f"data/{p.stem.split('__')[0]}" for p in data.rglob("*.png")}
    assert training["config"]["seed"] == 0


def test_learning_curves_are_written_next_to_the_model(tiny_model):
    history = tiny_model.with_name(f"{tiny_model.stem}_history.csv").read_text().splitlines()
    assert history[0].split(",")[:3] == ["epoch", "accuracy", "loss"]
    assert "val_loss" in history[0] and len(history) >= 2
    assert tiny_model.with_name(f"{tiny_model.stem}_history.png").stat().st_size > 1000


def test_classifier_outputs_probabilities_and_uncertain(tiny_model, tiny_heldout, tmp_path):
    import shutil

    from napari_bloodcell.classification.model_files import update_metadata

    soft = shutil.copy(tiny_model, tmp_path / "soft.keras")  # the tiny model says 1.0
    metadata = read_metadata(soft)
    metadata.temperature = 50.0
    update_metadata(soft, metadata)
    classifier = CellClassifier(soft)
    data = load_crop_dataset([tiny_heldout], size=32, scale=2.2, classes=classifier.classes)
    table = classifier.classify(data.images / 255.0, uncertain_threshold=0.99)
    assert (table["confidence"] < 0.99).all() and (table["cell_class"] == UNCERTAIN).all()
    decided = classifier.classify(data.images / 255.0, uncertain_threshold=0.0)
    assert not (decided["cell_class"] == UNCERTAIN).any()
    np.testing.assert_allclose(table[["p_lobed", "p_round"]].sum(axis=1), 1.0, rtol=1e-5)


def test_cell_types_must_be_one_per_crop(tiny_model):
    """A wrong count failed with numpy's 'operands could not be broadcast'."""
    crops = np.zeros((3, 32, 32, 3), np.float32)
    with pytest.raises(ModelError, match="2 cell types for 3 crops; give one per crop"):
        CellClassifier(tiny_model).classify(crops, cell_types=["wbc", "platelet"])


def test_decide_never_maps_uncertain_cells_to_the_first_class():
    """The seed rounded probabilities before argmax: unsure cells silently became class 0."""
    table = decide(np.array([[0.2, 0.45, 0.35], [0.05, 0.9, 0.05]]), ["a", "b", "c"], 0.5)
    assert table["cell_class"].tolist() == [UNCERTAIN, "b"]
    assert table["confidence"].tolist() == pytest.approx([0.45, 0.9])


def test_temperature_softens_probabilities():
    p = np.array([[0.9, 0.1]])
    softened = apply_temperature(p, 2.0)
    assert softened[0, 0] < 0.9 and softened.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(apply_temperature(p, 1.0), p)


def test_split_is_by_source_and_seeded(tmp_path):
    data = write_crop_folder(tmp_path, n_per_class=30, seed=1, n_sources=10)
    dataset = load_crop_dataset([data], size=16, scale=2.2, workers=1)
    train, val, test = split_by_source(dataset, (0.2, 0.2), seed=3)
    parts = [set(dataset.sources[i]) for i in (train, val, test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    again = split_by_source(dataset, (0.2, 0.2), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    others = [split_by_source(dataset, (0.2, 0.2), seed=seed)[1] for seed in range(4, 8)]
    assert any(not np.array_equal(val, other) for other in others)  # the seed is used


@pytest.mark.parametrize(
    "n_sources, fractions, expected",
    [
        (1, (0.15, 0.15), (0, 0)),  # trained on, not validated
        (2, (0.15, 0.15), (1, 0)),  # rounding alone set none aside for validation
        (3, (0.15, 0.15), (1, 0)),
        (4, (0.15, 0.15), (1, 1)),
        (10, (0.15, 0.15), (2, 2)),  # large classes: the rounded fractions
        (3, (0.5, 0.4), (2, 0)),  # at least one source is left to train on
        (5, (0.2, 0.0), (1, 0)),  # no test part asked for
    ],
)
def test_small_classes_get_a_validation_source_and_keep_one_to_train_on(
    n_sources, fractions, expected
):
    from napari_bloodcell.classification.datasets import sources_set_aside

    assert sources_set_aside(n_sources, *fractions) == expected


@pytest.mark.parametrize(
    "n_sources, fractions, expected",
    [
        (1, (0.2, 0.0), (1, 0)),  # trained on elsewhere: its one source validates
        (2, (0.2, 0.0), (1, 0)),
        (3, (0.5, 0.4), (2, 1)),  # none need be left to train on
    ],
)
def test_a_class_trained_on_elsewhere_may_set_all_its_sources_aside(n_sources, fractions, expected):
    from napari_bloodcell.classification.datasets import sources_set_aside

    assert sources_set_aside(n_sources, *fractions, keep_one_to_train=False) == expected


def test_a_class_of_two_source_images_is_validated(tmp_path):
    """round(0.15 × 2) = 0 left such a class out of validation and calibration."""
    labels = np.array([0] * 20 + [1] * 4)
    sources = np.array([f"d/a{i}" for i in range(20)] + ["d/b0", "d/b0", "d/b1", "d/b1"])
    dataset = CropDataset(None, labels, ["a", "b"], sources, np.zeros(24, int), np.zeros(24))
    for seed in range(5):
        train, val, _ = split_by_source(dataset, (0.15, 0.15), seed)
        assert set(labels[val]) == {0, 1} and set(labels[train]) == {0, 1}


def test_training_data_without_two_source_images_in_any_class_is_explained(tmp_path):
    from napari_bloodcell.classification.training import TrainingConfig, split_training_data

    data = write_crop_folder(tmp_path / "one_slide", n_per_class=6, seed=0, n_sources=1)
    with pytest.raises(DatasetError, match=r"found lobed 1, round 1\. Crops whose .* '__'"):
        split_training_data([data], TrainingConfig())
    (tmp_path / "one_class").mkdir()
    (data / "round").rename(tmp_path / "one_class" / "round")
    with pytest.raises(DatasetError, match="found only the class 'round'"):
        split_training_data([tmp_path / "one_class"], TrainingConfig())


def test_a_class_with_one_source_image_is_trained_on_and_reported(tmp_path):
    from napari_bloodcell.classification.training import (
        TrainingConfig,
        split_training_data,
        training_notes,
    )

    data = write_crop_folder(tmp_path / "crops", n_per_class=6, seed=0, n_sources=3)
    for extra in (data / "round").glob("round[12]__*"):  # round: one source image left
        extra.unlink()
    split = split_training_data([data], TrainingConfig())
    assert split.classes_not_validated == ["round"]
    assert split.dataset.classes.index("round") in split.dataset.labels[split.train]
    metadata = ModelMetadata(["lobed", "round"], 32, 2.2, "compact")
    metadata.training = {"classes_not_validated": split.classes_not_validated}
    assert "no validation crops for round" in training_notes(metadata)[0]
    metadata.training["calibration"] = {"temperature": 1.0, "temperature_fitted": False}
    assert "not calibrated" in training_notes(metadata)[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_unusable_crop_files_are_named_together(tmp_path, workers):
    """The first bad file ended the reading (after all before it were read), worded for
    segmentation ("nothing to segment"), and only that one was named."""
    data = write_crop_folder(tmp_path, n_per_class=40, seed=0)
    (data / "round" / "round3.png").write_bytes(b"not a png")
    iio.imwrite(data / "lobed" / "blank.png", np.full((30, 30, 3), 200, np.uint8))
    speck = np.full((40, 40, 3), 250, np.uint8)
    speck[0, 5] = 200  # all black once cropped and normalised
    iio.imwrite(data / "lobed" / "speck.png", speck)
    files = sorted(data.rglob("*.png"))
    with pytest.raises(DatasetError) as error:
        prepare_crop_files(files, size=32, scale=2.2, workers=workers, min_contrast=32)
    message = str(error.value)
    assert message.startswith("3 of 82 files cannot be used as single-cell crops")
    assert "round3.png: cannot be read" in message and "blank.png: the image is constant" in message
    assert "speck.png: nearly uniform" in message
    # classifying (predict, evaluate) takes such a crop as it is
    assert prepare_crop_files([data / "lobed" / "speck.png"], size=32, scale=2.2).shape[0] == 1
    assert not running_children()


def test_crops_are_read_without_forking_a_process_that_runs_tensorflow(monkeypatch):
    """Forking a process with TensorFlow's threads running can deadlock the child."""
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from napari_bloodcell.classification.datasets import _worker_pool

    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    with _worker_pool(2) as pool:
        assert isinstance(pool, ProcessPoolExecutor)
        assert pool._mp_context.get_start_method() == "fork"  # whatever Python's default
    monkeypatch.setitem(sys.modules, "tensorflow", object())
    with _worker_pool(2) as pool:
        assert isinstance(pool, ThreadPoolExecutor)
    monkeypatch.delitem(sys.modules, "tensorflow")
    monkeypatch.setattr(sys, "platform", "darwin")  # processes spawned: a script's main
    with _worker_pool(2) as pool:  # guard would be needed
        assert isinstance(pool, ThreadPoolExecutor)


def test_reading_crops_stops_when_asked_and_leaves_no_worker_running(tmp_path):
    from napari_bloodcell.classification.datasets import LoadingStopped

    data = write_crop_folder(tmp_path, n_per_class=40, seed=0)
    files = sorted(data.rglob("*.png"))
    read = []

    def stop_after_three() -> bool:
        read.append(1)
        return len(read) >= 3

    with pytest.raises(LoadingStopped):
        prepare_crop_files(files, size=16, scale=2.2, workers=2, stop_requested=stop_after_three)
    assert len(read) == 3 and not running_children()


def test_crops_of_one_frame_in_two_folders_stay_in_one_part():
    """Crops of frame ``f1`` filed in folders A and B were two sources, split apart."""
    sources = np.array(["A/f1", "B/f1", "A/f2", "B/f3", "A/f4", "B/f4"] * 5)
    dataset = CropDataset(
        images=np.zeros((30, 1)),
        labels=np.zeros(30, int),
        classes=["a"],
        sources=sources,
        domains=np.zeros(30, int),
        files=np.zeros(30),
    )
    for seed in range(10):
        parts = [
            set(s.split("/")[1] for s in sources[i])
            for i in split_by_source(dataset, (0.3, 0.3), seed)
        ]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert set().union(*parts) == {"f1", "f2", "f3", "f4"}


def test_a_class_found_only_in_frames_of_other_classes_is_always_trained_on():
    """Sources are drawn per class of their first item: platelets cut from neutrophil
    frames belonged to no draw, and for some seeds every one went to validation or test
    (a head column never trained, weight 0, no note)."""
    labels = np.array([0] * 10 + [1] * 10 + [2])  # lymphocyte, neutrophil, platelet
    sources = np.array([f"d/L{i}" for i in range(10)] + [f"d/N{i}" for i in range(10)] + ["d/N0"])
    dataset = CropDataset(None, labels, ["l", "n", "p"], sources, np.zeros(21, int), np.zeros(21))
    for seed in range(40):
        train, validation, test = split_by_source(dataset, (0.2, 0.2), seed)
        assert set(labels[train]) == {0, 1, 2}
        parts = [set(sources[i]) for i in (train, validation, test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_the_current_folder_is_recorded_by_its_name(tmp_path, monkeypatch):
    """``train .`` recorded sources as "/name": no folder name to match them by."""
    monkeypatch.chdir(tmp_path)
    assert source_id(tmp_path / "round" / "x__1.png", Path(".")) == f"{tmp_path.name}/x"


def test_class_folders_are_searched_to_the_bottom_and_must_hold_images(tmp_path):
    write_crop_folder(tmp_path, n_per_class=2, seed=0)
    nested = tmp_path / "round" / "day2"
    nested.mkdir()
    (tmp_path / "round" / "round0.png").rename(nested / "round0.png")
    (tmp_path / "lobed" / ".thumbnails").mkdir()
    (tmp_path / "lobed" / "lobed0.png").rename(tmp_path / "lobed" / ".thumbnails" / "x.png")
    found, _ = find_labelled_files([tmp_path])
    assert sorted(f.name for f, _, _ in found) == ["lobed1.png", "round0.png", "round1.png"]
    (tmp_path / "basophil").mkdir()
    with pytest.raises(DatasetError, match="basophil: no image files"):
        find_labelled_files([tmp_path])


def test_small_data_folders_are_repeated_to_a_quarter_of_the_largest():
    from napari_bloodcell.classification.training import oversample_small_domains

    domains = np.repeat([0, 1], [100, 11])  # 11 × round(2.27) = 22 < 25 % of 100
    dataset = CropDataset(
        np.zeros((111, 1)), np.zeros(111, int), ["a"], np.arange(111).astype(str), domains,
        np.zeros(111),
    )  # fmt: skip
    repeated = oversample_small_domains(dataset, np.arange(111), np.random.default_rng(0))
    assert np.bincount(domains[repeated]).tolist() == [100, 33]


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"batch_size": 0}, "batch_size must be a whole number ≥ 1"),
        ({"seed": -1}, "seed must be a whole number ≥ 0"),
        ({"epochs": 2.5}, "epochs must be a whole number"),
        ({"input_size": 8}, "input_size must be a whole number of pixels ≥ 16"),
        ({"learning_rate": 0.0}, "learning_rate must be above 0"),
        ({"validation_fraction": 0.0}, "validation_fraction"),
        ({"validation_fraction": 0.5, "test_fraction": 0.5}, "both together below 1"),
        ({"seed": 2**32}, "seed must be at most"),
        ({"architecture": "resnet50"}, "unknown architecture 'resnet50'"),
        ({"normalization": "layer"}, "unknown normalization 'layer'"),
        ({"crop_scale": 0.0}, "crop_scale .* must be above 0"),
        ({"test_time_views": 3}, "test-time views must be one of"),
        ({"stain_jitter": 1.5}, r"stain_jitter must be in \[0, 0.9\] \(a channel gain"),
        ({"hue_jitter": 3.0}, r"hue_jitter must be in \[0, 0.5\]"),
        ({"max_blur_sigma": 50.0}, r"max_blur_sigma must be in \[0, 5.0\]"),
    ],
)
def test_impossible_training_settings_are_refused_before_training(setting, message):
    from napari_bloodcell.classification.training import TrainingConfig
    from napari_bloodcell.errors import BloodcellError

    with pytest.raises(BloodcellError, match=message):
        TrainingConfig(**setting).resolved()


@pytest.mark.parametrize(
    ("setting", "kept"),
    [
        ({"input_size": 64}, "input size"),
        ({"architecture": "coursework"}, "architecture"),  # were replaced without a word
        ({"crop_scale": 3.0}, "crop scale"),
        ({"normalization": "group"}, "normalization"),
    ],
)
def test_fine_tuning_refuses_settings_of_another_network(tiny_model, setting, kept):
    from napari_bloodcell.classification.training import TrainingConfig
    from napari_bloodcell.errors import BloodcellError

    with pytest.raises(BloodcellError, match=f"keeps its {kept}"):
        TrainingConfig(init_model=str(tiny_model), **setting).resolved()
    assert TrainingConfig(init_model=str(tiny_model), input_size=32).resolved().size == 32


def test_crops_as_bytes_are_classified_as_their_floats(tiny_model, tiny_heldout):
    classifier = CellClassifier(tiny_model)
    files, _ = find_labelled_files([tiny_heldout])
    crops = prepare_crop_files([f for f, _, _ in files][:10], size=32, scale=classifier.crop_scale)
    assert crops.dtype == np.uint8
    np.testing.assert_allclose(
        classifier.predict_proba(crops), classifier.predict_proba(crops / 255), atol=1e-5
    )


def test_a_cut_out_crop_is_read_over_a_white_background(tmp_path):
    """An RGBA crop whose outside is transparent was refused (a 4th channel that varies)."""

    from napari_bloodcell.classification.datasets import prepare_crop_files
    from napari_bloodcell.synthetic import make_smear

    rgb = make_smear(shape=(160, 160), n_rbc=0, n_wbc=1, n_platelets=0, seed=3).image
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:10] = 0  # a transparent band, whatever colour its pixels hold
    cut_out = np.dstack([rgb, alpha])
    cut_out[:10, :, :3] = 0
    iio.imwrite(tmp_path / "cut_out.png", cut_out)
    white = rgb.copy()
    white[:10] = 255
    iio.imwrite(tmp_path / "white.png", white)
    crops = prepare_crop_files(
        [tmp_path / "cut_out.png", tmp_path / "white.png"], size=32, scale=3.0
    )
    np.testing.assert_array_equal(crops[0], crops[1])


def _items(folder, names):
    return [(folder / "round" / f"{name}.png", "round", 0) for name in names]


def test_model_split_parts_follow_the_recorded_sources_and_base_models(tmp_path):
    from napari_bloodcell.classification.datasets import parts_in_model_split

    lab, atlas = tmp_path / "lab", tmp_path / "atlas"
    training = {
        "data_dir_names": ["lab"],
        "train_sources": ["lab/a", "lab/b"],
        "validation_sources": ["lab/c"],
        "test_sources": ["lab/d"],
        "base_models": [  # fine-tuned from a model of version ≤ 5 trained on "atlas"
            {"data_dirs": ["/elsewhere/atlas"], "validation_sources": ["atlas/v"],
             "test_sources": ["atlas/t"]},
        ],
    }  # fmt: skip
    found = _items(lab, ["a", "c", "d", "new__1"])
    assert parts_in_model_split(found, [lab], training).tolist() == [
        "train", "validation", "test", "other",  # added after training: never learnt
    ]  # fmt: skip
    # a version ≤ 5 record lists no training sources: the rest of its folder is training
    found = _items(atlas, ["t", "v", "x"])
    assert parts_in_model_split(found, [atlas], training).tolist() == [
        "test",
        "validation",
        "train",
    ]
    assert (
        parts_in_model_split(found, [atlas], training, with_base_models=False).tolist()
        == ["other"] * 3
    )
    # another folder of a training folder's name, holding none of its sources
    assert (
        parts_in_model_split(
            _items(tmp_path / "x" / "lab", ["e", "f"]), [tmp_path / "x" / "lab"], training
        ).tolist()
        == ["other"] * 2
    )


def test_models_of_version_5_trained_on_the_current_folder_are_still_recognised(
    tmp_path, monkeypatch
):
    from napari_bloodcell.classification.datasets import (
        missing_training_folders,
        parts_in_model_split,
    )

    monkeypatch.chdir(tmp_path)
    training = {"data_dirs": ["."], "validation_sources": ["/v"], "test_sources": ["/t"]}
    found = _items(Path("."), ["v", "t", "x"])
    assert parts_in_model_split(found, [Path(".")], training).tolist() == [
        "validation", "test", "train"
    ]  # fmt: skip
    assert not missing_training_folders(training, [Path(".")])


def test_images_in_linked_sub_folders_count(tmp_path):
    data = write_crop_folder(tmp_path / "data", n_per_class=2, seed=0)
    extra = write_crop_folder(tmp_path / "extra", n_per_class=1, seed=1) / "round"
    (data / "round" / "more").symlink_to(extra, target_is_directory=True)
    (data / "round" / "loop").symlink_to(data / "round", target_is_directory=True)
    found, _ = find_labelled_files([data])
    assert sum(c == "round" for _, c, _ in found) == 3


def test_numpy_numbers_in_a_training_config_are_recorded_as_json(tiny_model):
    from napari_bloodcell.classification.training import TrainingConfig

    config = TrainingConfig(epochs=np.int64(2), seed=np.int64(1), learning_rate=np.float32(1e-3),
                            test_time_views=np.int64(4)).resolved()  # fmt: skip
    assert json.loads(json.dumps(vars(config)))["epochs"] == 2
    tuned = TrainingConfig(init_model=str(tiny_model)).resolved()
    assert tuned.normalization == "batch"  # what the fine-tuned network really has


def test_evaluation_scores_only_images_the_model_never_learnt_from(tiny_model, tiny_heldout):
    data = tiny_model.parent / "data"  # trained on it with no test part
    with pytest.raises(DatasetError, match="learnt from every image in"):
        evaluate_classifier([data], tiny_model)
    metrics, _ = evaluate_classifier([data, tiny_heldout], tiny_model)
    assert metrics["n"] == 40 and metrics["split_parts"] == {"other": 40}
    assert sum(metrics["left_out"][str(data)].values()) == 96
    # the fresh images are named like training ones (round0 …): the name cannot tell them
    # from crops of training frames filed in another folder, so they are counted
    assert metrics["other_named_as_learnt"] == 40
    metrics, _ = evaluate_classifier([data, tiny_heldout], tiny_model, all_images=True)
    assert metrics["n"] == 96 + 40
    assert metrics["split_parts"]["other"] == 40 and metrics["split_parts"]["validation"] > 0


def test_metrics_on_known_predictions():
    metrics = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, -1]), ["a", "b"])
    assert metrics["accuracy"] == 0.5
    assert metrics["uncertain_rate"] == 0.25
    assert metrics["per_class"]["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert metrics["confusion_matrix"] == [[1, 1], [0, 1]]


def test_expected_calibration_error_on_known_probabilities():
    from napari_bloodcell.classification.calibration import (
        confidence_bins,
        expected_calibration_error,
    )

    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])  # right, wrong (0.8 sure), right, right
    # 15 bins: one crop each, |1 − 0.9| + |0 − 0.8| + |1 − 0.6| + |1 − 0.7| over 4
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.4)
    # 2 bins: all four in [0.5, 1], accuracy 0.75 = mean confidence 0.75
    assert expected_calibration_error(probabilities, labels, n_bins=2) == pytest.approx(0.0)
    bins = confidence_bins(probabilities, labels, n_bins=2)
    assert bins == [
        {"bin_low": 0.5, "bin_high": 1.0, "confidence": pytest.approx(0.75), "accuracy": 0.75,
         "count": 4}
    ]  # fmt: skip
    assert np.isnan(expected_calibration_error(np.zeros((0, 2)), np.zeros(0)))


def test_unknown_class_folders_are_refused_unless_ignored(tmp_path):
    write_crop_folder(tmp_path, n_per_class=2, seed=0)
    with pytest.raises(DatasetError, match="not one of the model's classes"):
        find_labelled_files([tmp_path], ["round", "platelet"])
    found, _ = find_labelled_files([tmp_path], ["round", "platelet"], ignore_unknown=True)
    assert {c for _, c, _ in found} == {"round"}
    # all skipped: said so, not "no image files found"
    with pytest.raises(DatasetError, match=r"none of the class folders \(lobed, round\) of"):
        find_labelled_files([tmp_path], ["x", "y"], ignore_unknown=True)


def test_a_folder_given_twice_is_refused(tmp_path, monkeypatch):
    write_crop_folder(tmp_path / "crops", n_per_class=2, seed=0)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="are the same folder; give it once"):
        find_labelled_files([tmp_path / "crops", Path("crops")])


def test_folder_names_match_case_insensitively(tmp_path):
    write_crop_folder(tmp_path, n_per_class=1, seed=0)
    (tmp_path / "round").rename(tmp_path / "Round")
    found, names = find_labelled_files([tmp_path], ["lobed", "round"])
    assert {c for _, c, _ in found} == {"lobed", "round"}


def test_folders_of_any_platelet_name_are_one_platelet_class(tmp_path):
    """`a/platelet` and `b/Platelets` made two classes (a platelet-sized object split
    between them was 'uncertain'), and a `Thrombocytes/` folder was no class of a model
    with a `platelet` class (refused by evaluate, a new head column when fine-tuning)."""
    for data, folder in (("a", "platelet"), ("b", "Platelets"), ("c", "Thrombocytes")):
        write_crop_folder(tmp_path / data, n_per_class=1, seed=0)
        (tmp_path / data / "round").rename(tmp_path / data / folder)
    data_dirs = [tmp_path / "a", tmp_path / "b"]
    found, names = find_labelled_files(data_dirs)
    assert names == ["lobed", "platelet"] and {c for _, c, _ in found} == set(names)
    found, _ = find_labelled_files([tmp_path / "c"], ["lobed", "platelet"])
    assert {c for _, c, _ in found} == {"lobed", "platelet"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a Keras"),
        (b"garbage bytes", "not a Keras"),
        (None, "without napari-bloodcell metadata"),
    ],
)
def test_bad_model_files_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "bad.keras"
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("config.json", json.dumps({}))
    else:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        CellClassifier(path)


def test_a_model_file_with_an_impossible_number_of_views_is_refused(tiny_model, tmp_path):
    from napari_bloodcell.classification.model_files import METADATA_MEMBER

    path = tmp_path / "views.keras"
    with zipfile.ZipFile(tiny_model) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == METADATA_MEMBER:
                data = json.dumps(json.loads(data) | {"test_time_views": 3}).encode()
            target.writestr(item, data)
    with pytest.raises(ModelError, match="views.keras: incompatible model metadata.*one of"):
        CellClassifier(path)


def test_truncated_model_file_is_refused(tiny_model, tmp_path):
    data = tiny_model.read_bytes()
    cut = tmp_path / "cut.keras"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cut.keras"):
        CellClassifier(cut).predict_proba(np.zeros((1, 32, 32, 3)))


def _with_member(model: Path, path: Path, member: str, data: bytes, deflate: bool) -> Path:
    """A copy of ``model`` whose ``member`` holds ``data`` (compressed when ``deflate``)."""
    compression = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(model) as source, zipfile.ZipFile(path, "w", compression) as target:
        for item in source.infolist():
            target.writestr(item.filename, data if item.filename == member else source.read(item))
    return path


def _damaged_compressed_member(model: Path, path: Path, member: str) -> Path:
    """``member`` compressed, its compressed bytes overwritten (as a disk error would)."""
    _with_member(model, path, member, zipfile.ZipFile(model).read(member), deflate=True)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start : start + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("member", ["napari_bloodcell.json", "config.json"])
@pytest.mark.parametrize("damage", ["latin-1", "deep", "compressed"])
def test_damaged_model_members_are_a_clear_model_error(tiny_model, tmp_path, member, damage):
    """A damaged member raised zlib.error, UnicodeDecodeError or RecursionError (and
    `napari-bloodcell models` stopped listing at the first such file)."""
    from napari_bloodcell.classification.model_files import refuse_custom_code

    path = tmp_path / "damaged.keras"
    if damage == "compressed":
        _damaged_compressed_member(tiny_model, path, member)
    else:
        data = '{"a": "é"}'.encode("latin-1") if damage == "latin-1" else b"[" * 100_000
        _with_member(tiny_model, path, member, data, deflate=False)
    with pytest.raises(ModelError, match="damaged.keras"):
        read_metadata(path) if member == "napari_bloodcell.json" else refuse_custom_code(path)


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ModelError, match="expected 'default'"):
        resolve_model_path("no-such-model")


def test_the_default_model_ships_with_its_metadata():
    metadata = read_metadata(resolve_model_path("default"))
    assert {"neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil", "platelet"} <= set(
        metadata.classes
    )
    assert resolve_model_path("default").stat().st_size < 15e6


def test_temperature_scaling_fixes_overconfidence_and_lowers_ece():
    from napari_bloodcell.classification.calibration import (
        expected_calibration_error,
        fit_temperature,
    )

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 3000)
    logits = rng.normal(0, 1, (3000, 3))
    logits[np.arange(3000), labels] += 1.0  # right ~60 % of the time
    overconfident = np.exp(4 * logits) / np.exp(4 * logits).sum(axis=1, keepdims=True)
    temperature = fit_temperature(overconfident, labels)
    assert 3 < temperature < 5.5
    calibrated = apply_temperature(overconfident, temperature)
    assert expected_calibration_error(calibrated, labels) < 0.05  # 15-bin sampling noise ~0.03
    assert expected_calibration_error(overconfident, labels) > 0.15
    np.testing.assert_array_equal(calibrated.argmax(axis=1), overconfident.argmax(axis=1))


def test_a_few_confidently_wrong_crops_do_not_drive_the_temperature_to_its_bound():
    """The NLL clipped calibrated probabilities at 1e-12, capping the loss of confidently
    wrong crops: 2 such crops in 400 gave T = 0.05 (every confidence ~1, nothing ever
    uncertain) where the NLL's minimum is at T ≈ 0.55."""
    from napari_bloodcell.classification.calibration import fit_temperature

    probabilities = np.tile([0.85, 0.15], (400, 1))
    labels = np.zeros(400, int)
    labels[-2:] = 1
    probabilities[-2:] = [1 - 1e-6, 1e-6]

    def nll(temperature: float) -> float:
        calibrated = apply_temperature(probabilities, temperature)
        return -float(np.mean(np.log(calibrated[np.arange(400), labels])))

    grid = np.geomspace(0.05, 20, 2000)
    best = grid[np.argmin([nll(t) for t in grid])]
    assert fit_temperature(probabilities, labels) == pytest.approx(best, rel=0.01)


def test_a_validation_without_an_error_keeps_the_temperature_at_one():
    from napari_bloodcell.classification.calibration import calibration_record, fit_temperature

    labels = np.array([0, 1, 2, 0, 1, 2])
    right = np.full((6, 3), 0.2)
    right[np.arange(6), labels] = 0.6  # every crop right, none sure: the NLL wants T → 0
    record = calibration_record(right, labels)
    assert record["temperature"] == 1.0 and record["temperature_fitted"] is False
    one_wrong = right.copy()
    one_wrong[0] = [0.2, 0.6, 0.2]
    assert fit_temperature(one_wrong, labels) != 1.0
    assert calibration_record(one_wrong, labels)["temperature_fitted"] is True


def test_trained_model_records_its_calibration_and_training_time(tiny_model):
    metadata = read_metadata(tiny_model)
    assert metadata.training["seconds"] > 0
    assert metadata.test_time_views == 8  # the temperature is fitted on the 8-view mean
    calibration = metadata.training["calibration"]
    assert metadata.temperature == calibration["temperature"] > 0
    assert 0 <= calibration["validation_ece"] <= 1


def test_metadata_can_be_updated_without_touching_the_network(tiny_model, tmp_path):
    import shutil

    from napari_bloodcell.classification.model_files import update_metadata

    copy = shutil.copy(tiny_model, tmp_path / "copy.keras")
    metadata = read_metadata(copy)
    metadata.uncertain_threshold = 0.77
    update_metadata(copy, metadata)
    assert read_metadata(copy).uncertain_threshold == 0.77
    crops = np.random.default_rng(1).random((3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        CellClassifier(copy).predict_proba(crops), CellClassifier(tiny_model).predict_proba(crops)
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("uncertain_threshold", 1.5, "uncertain_threshold must be a probability"),
        ("uncertain_threshold", "0.5", "uncertain_threshold must be a probability"),
        ("temperature", 0.0, "temperature must be a positive number"),
        ("classes", ["a", "a"], "classes must be distinct"),
        ("input_size", 0, "input_size must be a positive integer"),
        ("classes", ["Lobed", "Round"], "class names must be lower case"),
        ("format_version", 99, "format_version 99 is not one this napari-bloodcell reads"),
        ("training", [], "training must be a record"),
    ],
)
def test_metadata_no_classifier_can_use_is_refused(tiny_model, tmp_path, field, value, message):
    """A threshold of 1.5 broke the widget's threshold field; a temperature of 0 made every
    cell uncertain (NaN probabilities)."""
    import json
    import shutil
    import zipfile

    from napari_bloodcell.classification.model_files import METADATA_MEMBER, update_metadata

    metadata = read_metadata(tiny_model)
    setattr(metadata, field, value)
    with pytest.raises(ModelError, match=message):  # never written …
        update_metadata(shutil.copy(tiny_model, tmp_path / "written.keras"), metadata)
    forged = tmp_path / "forged.keras"  # … nor read from a file made elsewhere
    with zipfile.ZipFile(tiny_model) as source, zipfile.ZipFile(forged, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == METADATA_MEMBER:
                data = json.dumps({**json.loads(data), field: value}).encode()
            target.writestr(item, data)
    with pytest.raises(ModelError, match=message):
        read_metadata(forged)


def test_crops_of_other_integer_types_and_bad_thresholds_are_refused(tiny_model):
    classifier = CellClassifier(tiny_model)
    crops = np.zeros((2, 32, 32, 3), np.uint16)
    with pytest.raises(ModelError, match="uint8 .* or floats"):
        classifier.predict(crops)
    for outside in (255.0, -0.5, float("nan")):  # floats still 0–255, or broken
        with pytest.raises(ModelError, match=r"finite values in \[0, 1\]"):
            classifier.predict(np.full((2, 32, 32, 3), outside, np.float32))
    for threshold in (float("nan"), 1.5, -0.2):
        with pytest.raises(ModelError, match="probability in"):
            classifier.classify(crops.astype(np.float32), threshold)


def test_a_model_file_replaced_after_it_was_chosen_is_not_loaded(tiny_model, tmp_path):
    """The network came from the new file, the classes and temperature from the old one."""
    import os
    import shutil

    copy = shutil.copy(tiny_model, tmp_path / "copy.keras")
    classifier = CellClassifier(copy)
    later = os.stat(copy).st_mtime_ns + 10**9
    os.utime(copy, ns=(later, later))
    with pytest.raises(ModelError, match="changed on disk"):
        classifier.load()


def test_dihedral_views_are_the_distinct_rotations_and_flips():
    from napari_bloodcell.classification.inference import dihedral_views

    crops = np.random.default_rng(0).random((2, 5, 5, 3))
    for n in (1, 2, 4, 8):
        views = list(dihedral_views(crops, n))
        assert len(views) == n and all(v.shape == crops.shape for v in views)
        assert len({v.tobytes() for v in views}) == n
    np.testing.assert_array_equal(next(dihedral_views(crops, 1)), crops)
    with pytest.raises(ModelError, match="one of"):
        dihedral_views(crops, 3)


def test_eight_view_averaging_makes_predictions_orientation_free():
    from napari_bloodcell.classification.inference import mean_over_views

    weights = np.random.default_rng(1).random((5 * 5 * 3, 2))

    def predict(batch):  # a deliberately orientation-dependent "network"
        logits = batch.reshape(len(batch), -1) @ weights
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    crops = np.random.default_rng(2).random((4, 5, 5, 3))
    rotated = np.rot90(crops, 1, axes=(1, 2))[:, ::-1]
    assert not np.allclose(predict(crops), predict(rotated))
    np.testing.assert_allclose(
        mean_over_views(predict, crops, 8), mean_over_views(predict, rotated, 8)
    )


def test_classifier_averages_the_views_its_model_file_names(tiny_model, tmp_path):
    import shutil

    from napari_bloodcell.classification.inference import mean_over_views
    from napari_bloodcell.classification.model_files import update_metadata

    copy = shutil.copy(tiny_model, tmp_path / "views.keras")
    metadata = read_metadata(copy)
    metadata.test_time_views, metadata.temperature = 4, 1.0
    update_metadata(copy, metadata)
    classifier = CellClassifier(copy)
    crops = np.random.default_rng(3).random((3, 32, 32, 3)).astype(np.float32)

    def one_view(batch):
        return np.asarray(classifier.keras_model().predict_on_batch(batch))

    expected = mean_over_views(one_view, crops, 4)
    np.testing.assert_allclose(classifier.predict_proba(crops), expected, rtol=1e-5)
    assert not np.allclose(expected, one_view(crops))


def test_fine_tuning_keeps_the_initial_models_views_unless_told(tiny_model, tmp_path):
    import shutil

    from napari_bloodcell.classification.model_files import checked_views, update_metadata
    from napari_bloodcell.classification.training import TrainingConfig, fine_tuning_config

    copy = shutil.copy(tiny_model, tmp_path / "two_views.keras")
    metadata = read_metadata(copy)
    metadata.test_time_views = 2
    update_metadata(copy, metadata)
    assert fine_tuning_config(str(copy)).resolved().test_time_views == 2
    assert fine_tuning_config(str(copy), test_time_views=4).resolved().test_time_views == 4
    assert TrainingConfig().resolved().test_time_views == 8
    for wrong in (3, 8.0, True, "8"):
        with pytest.raises(ModelError, match="one of"):
            checked_views(wrong)


def test_validation_predictions_do_not_depend_on_the_chunk_size(tiny_model, tiny_heldout):
    from napari_bloodcell.classification.training import predict_dataset

    model = CellClassifier(tiny_model).keras_model()
    data = load_crop_dataset([tiny_heldout], size=32, scale=2.2, classes=["lobed", "round"])
    whole = predict_dataset(model, data, 16, views=2)
    chunked = predict_dataset(model, data, 16, views=2, chunk=7)
    for part, expected in zip(chunked, whole, strict=True):  # probabilities, features
        np.testing.assert_allclose(part, expected, rtol=1e-5, atol=1e-6)
    assert whole[0].shape == (len(data.labels), 2) and len(whole[1]) == len(data.labels)


def test_cnn_answers_must_fit_the_segmented_cell_type():
    from napari_bloodcell.classification.inference import plausible_class_mask

    classes = ["neutrophil", "platelet"]
    probabilities = np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    allowed = plausible_class_mask(["platelet", "wbc", "wbc"], classes)
    table = decide(probabilities, classes, 0.35, allowed)
    # a platelet-sized fragment the CNN calls a neutrophil is not forced to either
    assert table["cell_class"].tolist() == [UNCERTAIN, "neutrophil", UNCERTAIN]
    assert table["confidence"].tolist() == pytest.approx([0.3, 0.6, 0.2])
    # a model without a platelet class cannot name a platelet-typed object, even at
    # threshold 0; a model of platelets only cannot name a white cell
    classes = ["lobed", "round"]
    assert not plausible_class_mask(["platelet"], classes).any()
    table = decide([[0.9, 0.1]], classes, 0.0, plausible_class_mask(["platelet"], classes))
    assert table["cell_class"].tolist() == [UNCERTAIN]
    assert table["confidence"].tolist() == [0.0]
    assert plausible_class_mask(["wbc", "platelet"], ["platelet"]).tolist() == [[False], [True]]


@pytest.mark.parametrize("name", ["Platelets", "thrombocyte", "PLT"])
def test_a_platelet_class_of_another_name_is_the_platelet_class(name):
    """A model trained on a `Platelets/` folder has a class `platelets`: it was taken for a
    white-cell class (white cells called `platelets`, platelets never classified)."""
    from napari_bloodcell.classes import CLASS_COLOURS, class_colours
    from napari_bloodcell.classification.inference import plausible_class_mask

    classes = ["neutrophil", name]
    assert plausible_class_mask(["wbc", "platelet"], classes).tolist() == [
        [True, False],
        [False, True],
    ]
    assert class_colours(classes)[name] == CLASS_COLOURS["platelet"]


def test_fine_tuning_keeps_the_body_and_rebuilds_the_head(tiny_model, tmp_path):
    from napari_bloodcell.classification.model_files import load_keras_model
    from napari_bloodcell.classification.training import TrainingConfig, train_classifier

    from .helpers import write_crop_folder

    data = write_crop_folder(tmp_path / "data", n_per_class=12, seed=5)
    (data / "round").rename(data / "blob")  # a class the initial model does not know
    config = TrainingConfig(init_model=str(tiny_model), epochs=1, batch_size=8, test_fraction=0.0)
    result = train_classifier([data], tmp_path / "tuned.keras", config)
    assert result.metadata.classes == ["blob", "lobed"]
    assert result.metadata.input_size == 32  # taken from the initial model
    assert result.metadata.training["config"]["init_model"] == str(tiny_model)
    before, after = load_keras_model(tiny_model), load_keras_model(result.model_path)
    assert after.output_shape == (None, 2)
    assert len(before.layers) == len(after.layers)
    base = read_metadata(tiny_model).training  # what the body learnt from, for evaluate
    (base_split,) = result.metadata.training["base_models"]
    assert base_split["train_sources"] == base["train_sources"]
    assert base_split["validation_sources"] == base["validation_sources"]


def test_fine_tuning_head_starts_from_the_known_classes_weights(tiny_model):
    from napari_bloodcell.classification.architectures import HEAD_LAYER
    from napari_bloodcell.classification.model_files import load_keras_model
    from napari_bloodcell.classification.training import model_to_fine_tune

    old_kernel, old_bias = load_keras_model(tiny_model).get_layer(HEAD_LAYER).get_weights()
    assert read_metadata(tiny_model).classes == ["lobed", "round"]
    tuned = model_to_fine_tune(str(tiny_model), ["new", "round", "lobed"])
    kernel, bias = tuned.get_layer(HEAD_LAYER).get_weights()
    np.testing.assert_array_equal(kernel[:, 1:], old_kernel[:, [1, 0]])  # as trained
    np.testing.assert_array_equal(bias[1:], old_bias[[1, 0]])
    assert not np.allclose(kernel[:, 0], old_kernel[:, 1])  # "new" starts at random


def test_head_only_fine_tuning_leaves_the_body_unchanged(tiny_model, tmp_path):
    from napari_bloodcell.classification.architectures import HEAD_LAYER
    from napari_bloodcell.classification.model_files import load_keras_model
    from napari_bloodcell.classification.training import TrainingConfig, train_classifier

    from .helpers import write_crop_folder

    data = write_crop_folder(tmp_path / "data", n_per_class=12, seed=5)
    config = TrainingConfig(
        init_model=str(tiny_model), epochs=2, batch_size=8, test_fraction=0.0, train_body=False
    )
    result = train_classifier([data], tmp_path / "tuned.keras", config)
    before, after = load_keras_model(tiny_model), load_keras_model(result.model_path)
    for old, new in zip(before.layers, after.layers, strict=True):
        same = all(
            np.array_equal(a, b) for a, b in zip(old.get_weights(), new.get_weights(), strict=True)
        )
        assert same == (old.name != HEAD_LAYER), old.name


def test_user_models_are_listed_by_name(tmp_path, monkeypatch, tiny_model):
    import shutil

    from napari_bloodcell.classification import model_files

    monkeypatch.setattr(model_files, "user_models_dir", lambda: tmp_path / "models")
    (tmp_path / "models").mkdir()
    shutil.copy(tiny_model, model_files.check_model_name("mylab"))
    assert list(model_files.list_models()) == ["default", "mylab"]
    assert model_files.resolve_model_path("mylab") == tmp_path / "models" / "mylab.keras"
    for name in ("../escape", "mylab\n"):  # a trailing newline passed "$"
        with pytest.raises(ModelError, match="invalid model name"):
            model_files.check_model_name(name)
    with pytest.raises(ModelError, match="without .keras"):  # a path in the current folder
        model_files.check_model_name("mylab.keras")
    with pytest.raises(OutputExistsError, match="already exists"):
        model_files.check_model_name("mylab")


def test_evaluation_reports_calibration_intervals_and_coverage(tiny_model, tiny_heldout):
    metrics, _ = evaluate_classifier([tiny_heldout], tiny_model, uncertain_threshold=0.9)
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["uncertain_rate"] <= 1
    low, high = metrics["per_class"]["round"]["recall_ci95"]
    assert low <= metrics["per_class"]["round"]["recall"] <= high
    coverage = [point["coverage"] for point in metrics["coverage_curve"]]
    assert coverage[0] == 1.0 and coverage == sorted(coverage, reverse=True)
    assert sum(b["count"] for b in metrics["reliability"]) == metrics["n"]
    assert metrics["test_time_views"] == 8


@pytest.mark.parametrize("threshold", [1.5, -0.1, float("nan"), True])
def test_evaluate_refuses_a_threshold_that_is_no_probability(tiny_heldout, threshold):
    """From Python (the CLI checked it) a threshold of 1.5 made every crop uncertain."""
    with pytest.raises(ModelError, match=r"probability in \[0, 1\]"):
        evaluate_classifier([tiny_heldout], "no-such-model", uncertain_threshold=threshold)


def test_wilson_interval_matches_known_values():
    from napari_bloodcell.classification.evaluation import wilson_interval

    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490, abs=0.002) and high == pytest.approx(0.943, abs=0.002)
    assert np.isnan(wilson_interval(0, 0)[0])
    assert wilson_interval(0, 5) == (0.0, pytest.approx(0.434, abs=0.002))
    assert wilson_interval(5, 5) == (pytest.approx(0.566, abs=0.002), 1.0)


def test_scores_count_uncertain_answers_and_the_accuracy_of_the_decided():
    from napari_bloodcell.classification.evaluation import score_probabilities

    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])  # right, wrong, right, right
    metrics = score_probabilities(probabilities, labels, ["a", "b"], uncertain_threshold=0.7)
    assert metrics["uncertain_rate"] == 0.5  # 0.6 and 0.55 are below 0.7
    assert metrics["accuracy_when_decided"] == 1.0 and metrics["accuracy"] == 0.75
    assert metrics["confusion_matrix"] == [[2, 0], [1, 1]]
    assert metrics["per_class"]["b"]["precision_ci95"][1] == 1.0  # 1 of 1 predicted b right


def test_evaluation_files_are_strict_json_and_replaced_together(tmp_path, monkeypatch):
    from napari_bloodcell.classification import evaluation

    probabilities = np.array([[0.9, 0.1], [0.8, 0.2]])
    metrics = evaluation.score_probabilities(probabilities, np.array([0, 1]), ["a", "b"], 0.5)
    evaluation.write_evaluation(metrics, tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text())  # no NaN token
    assert written["per_class"]["b"]["precision_ci95"] == [None, None]  # b never predicted
    before = {name: (tmp_path / name).read_bytes() for name in evaluation.EVALUATION_FILES}

    def broken_plot(metrics, path):
        raise OSError("disk full")

    monkeypatch.setattr(evaluation, "plot_reliability", broken_plot)
    with pytest.raises(OSError, match="disk full"):
        evaluation.write_evaluation(metrics, tmp_path, overwrite=True)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(evaluation.EVALUATION_FILES)


def test_augmentation_keeps_shape_and_range_and_changes_images():
    from napari_bloodcell.classification.training import make_augmenter

    images = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
    augmented = np.asarray(make_augmenter(0, stain_jitter=0.15, max_blur_sigma=1.5)(images))
    assert augmented.shape == images.shape
    assert augmented.min() >= 0 and augmented.max() <= 1
    assert not np.allclose(augmented, images)
    # blur lowers pixel-to-pixel variation of noise images
    assert np.abs(np.diff(augmented, axis=1)).mean() < np.abs(np.diff(images, axis=1)).mean()


def test_tensorflow_colour_normalisation_matches_the_crops_one():
    from napari_bloodcell.classification.training import normalise_colour_tf
    from napari_bloodcell.crops import normalise_colour

    images = np.random.default_rng(1).random((5, 17, 23, 3)).astype(np.float32) ** 2
    images[0, ..., 2] *= 0.6  # a yellow cast
    images[1, ..., 1] = 5e-7  # a (nearly) black channel: below the smallest divisor
    images[2] = 1.0  # all white
    np.testing.assert_allclose(
        np.asarray(normalise_colour_tf(images)), normalise_colour(images), atol=1e-5
    )


def test_lamp_jitter_clips_and_renormalises_like_analyze():
    from napari_bloodcell.classification.training import make_augmenter

    rows, columns = np.mgrid[:16, :16]
    distance = np.hypot(rows - 7.5, columns - 7.5)
    cell = np.select([distance < 2, distance < 5], [0.2, 0.7], 1.0)  # nucleus, cytoplasm, white
    grey = cell[None, ..., None].repeat(8, 0).repeat(3, -1)
    grey = grey.astype(np.float32)
    lamp = np.asarray(make_augmenter(0, lamp_jitter=0.6, hue_jitter=0.0)(grey))
    plain = np.asarray(make_augmenter(0, hue_jitter=0.0)(grey))
    # grey stays grey without the lamp; with it, channels clip unequally: colour casts
    assert np.ptp(plain, axis=-1).max() < 1e-3
    assert np.ptp(lamp, axis=-1).max() > 0.1
    # the lamp's re-normalisation comes first: the brightness jitter still acts after it
    assert np.ptp(lamp.max(axis=(1, 2, 3))) > 0.1


def test_hue_is_jittered_per_image():
    import tensorflow as tf

    from napari_bloodcell.classification.training import make_augmenter

    red = np.zeros((16, 8, 8, 3), np.float32)
    red[..., 0], red[..., 1] = 0.6, 0.15  # uniform (geometry cannot change it), hue 1/24
    augmented = np.asarray(make_augmenter(0, hue_jitter=0.2)(red))
    hues = np.asarray(tf.image.rgb_to_hsv(augmented))[:, 4, 4, 0]
    hues = np.where(hues > 0.5, hues - 1, hues)  # red sits at hue 0 on the circle
    assert np.ptp(hues) > 0.1 and np.all(np.abs(hues - 1 / 24) <= 0.2 + 1e-3)


def test_training_keeps_the_best_validation_epoch_even_without_early_stop(tmp_path):
    """EarlyStopping restores best weights only when it stops early: the checkpoint must."""
    import keras

    from napari_bloodcell.classification.model_files import load_keras_model
    from napari_bloodcell.classification.training import TrainingConfig, train_classifier

    from .helpers import write_crop_folder

    class WreckLastEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == self.params["epochs"] - 1:  # after the checkpoint saw this epoch
                self.model.set_weights([np.zeros_like(w) for w in self.model.get_weights()])

    data = write_crop_folder(tmp_path / "data", n_per_class=10, seed=2)
    config = TrainingConfig(input_size=32, epochs=2, batch_size=8, test_fraction=0.0)
    result = train_classifier([data], tmp_path / "m.keras", config, callbacks=[WreckLastEpoch()])
    weights = load_keras_model(result.model_path).get_weights()
    assert any(np.abs(w).sum() > 0 for w in weights)
    assert not list(tmp_path.glob(".*checkpoint*"))


def test_the_same_seed_trains_the_same_weights(tmp_path):
    """Parallel augmentation calls drew random numbers in another order each run."""
    from napari_bloodcell.classification.model_files import load_keras_model
    from napari_bloodcell.classification.training import TrainingConfig, train_classifier

    from .helpers import write_crop_folder

    data = write_crop_folder(tmp_path / "data", n_per_class=12, seed=4)
    config = TrainingConfig(
        input_size=32, epochs=2, batch_size=4, test_fraction=0.0, stain_jitter=0.1,
        max_blur_sigma=1.0, seed=7,
    )  # fmt: skip
    weights = [
        load_keras_model(
            train_classifier([data], str(tmp_path / name), config).model_path
        ).get_weights()
        for name in ("first.keras", "second.keras")  # (a str is a path too)
    ]
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))
    # fine-tuned (its Dropout layer loaded from the file) in a fresh process, where
    # Python's generator has another state each time: imitated by two states here
    tuning = replace_config(config, init_model=str(tmp_path / "first.keras"))
    tuned = []
    for python_state, name in ((1, "tuned1.keras"), (2, "tuned2.keras")):
        random.seed(python_state)
        model_path = train_classifier([data], tmp_path / name, tuning).model_path
        tuned.append(load_keras_model(model_path).get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*tuned, strict=True))


def test_training_stopped_after_its_last_epoch_saves_nothing(tmp_path):
    from napari_bloodcell.classification.training import (
        TrainingConfig,
        TrainingStopped,
        train_classifier,
    )

    from .helpers import write_crop_folder

    data = write_crop_folder(tmp_path / "data", n_per_class=6, seed=2)
    config = TrainingConfig(input_size=32, epochs=1, batch_size=8, test_fraction=0.0)
    epochs_done = []
    with pytest.raises(TrainingStopped):
        train_classifier(
            [data],
            tmp_path / "m.keras",
            config,
            on_epoch_end=lambda epoch, logs: epochs_done.append(epoch),
            stop_requested=lambda: bool(epochs_done),  # asked after the last epoch
        )
    assert epochs_done == [0] and not list(tmp_path.glob("*m*"))


def test_a_failed_model_write_leaves_no_temporary_file(tiny_model, tmp_path):
    from napari_bloodcell.classification.model_files import read_metadata, save_model

    class FullDisk:
        def save(self, path):
            Path(path).write_bytes(b"half a model")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_model(FullDisk(), tmp_path / "m.keras", read_metadata(tiny_model))
    assert list(tmp_path.iterdir()) == []


def test_trained_model_files_hold_no_optimizer_state(tiny_model):
    import io

    import h5py

    with zipfile.ZipFile(tiny_model) as archive:
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        assert "optimizer" not in weights


def _standardised(maps: np.ndarray) -> np.ndarray:
    """(N, Y, X, C) maps with each instance's channels at mean 0 and std 1."""
    return (maps - maps.mean(axis=(1, 2), keepdims=True)) / maps.std(axis=(1, 2), keepdims=True)


def test_mixstyle_mixes_feature_statistics_in_training_only():
    from napari_bloodcell.classification.style_mixing import MixStyle

    rng = np.random.default_rng(0)
    # 8 instances, each channel with its own mean and spread (a "style" per crop)
    means, stds = rng.uniform(-2, 2, (8, 1, 1, 4)), rng.uniform(0.5, 3, (8, 1, 1, 4))
    x = (rng.standard_normal((8, 6, 6, 4)) * stds + means).astype(np.float32)
    assert np.array_equal(np.asarray(MixStyle(1.0, seed=0)(x, training=False)), x)
    assert np.array_equal(np.asarray(MixStyle(0.0, seed=0)(x, training=True)), x)
    mixed = np.asarray(MixStyle(1.0, seed=0)(x, training=True))
    # the content (each instance's standardised map) is kept ...
    np.testing.assert_allclose(_standardised(mixed), _standardised(x), atol=1e-3)
    # ... while the per-instance statistics move within the range of the batch's
    new_means = mixed.mean(axis=(1, 2))
    old_means = x.mean(axis=(1, 2))
    assert not np.allclose(new_means, old_means, atol=1e-2)
    assert np.all(new_means >= old_means.min(axis=0) - 1e-4)
    assert np.all(new_means <= old_means.max(axis=0) + 1e-4)


def test_mixstyle_training_saves_a_network_of_built_in_layers(tmp_path):
    from napari_bloodcell.classification.model_files import load_keras_model
    from napari_bloodcell.classification.training import TrainingConfig, train_classifier

    data = write_crop_folder(tmp_path / "data", n_per_class=10, seed=3)
    config = TrainingConfig(input_size=32, epochs=1, batch_size=8, test_fraction=0.0, mixstyle=1)
    result = train_classifier([data], tmp_path / "m.keras", config)
    network = load_keras_model(result.model_path)  # safe mode, built-in layers only
    assert not [layer.name for layer in network.layers if "mixstyle" in layer.name]
    assert read_metadata(result.model_path).training["config"]["mixstyle"] == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mixstyle": 1.5}, "mixstyle is a probability"),
        ({"mixstyle": -0.1}, "mixstyle is a probability"),
        ({"mixstyle": 0.5, "architecture": "coursework"}, "compact architecture only"),
        ({"mixstyle": 0.5, "init_model": "default"}, "mixstyle cannot be used when fine-tuning"),
        ({"grey_probability": 2.0}, "grey_probability is a probability"),
    ],
)
def test_training_settings_outside_their_use_are_refused(settings, message):
    from napari_bloodcell.classification.training import TrainingConfig
    from napari_bloodcell.errors import BloodcellError

    with pytest.raises(BloodcellError, match=message):
        TrainingConfig(**settings).resolved()


def test_network_without_mixstyle_keeps_the_trained_weights():
    from napari_bloodcell.classification.architectures import build_model
    from napari_bloodcell.classification.training import TrainingConfig, _without_mixstyle

    trained = build_model("compact", 3, 32, mixstyle=0.5, seed=1)
    # Beta sampling has no XLA kernel: Keras' automatic XLA (on a GPU) must see that
    assert not all(layer.supports_jit for layer in trained.layers)
    rng = np.random.default_rng(1)
    for weight in trained.weights:  # not the initial weights: weights another build has too
        weight.assign(rng.normal(size=weight.shape).astype(np.float32) * 0.1)
    plain = _without_mixstyle(trained, TrainingConfig(input_size=32, mixstyle=0.5, seed=7))
    crops = rng.random((4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        plain(crops, training=False), trained(crops, training=False), rtol=1e-5, atol=1e-6
    )


def test_grey_input_network_is_colour_blind_also_after_fine_tuning(tmp_path):
    from napari_bloodcell.classification.architectures import LUMINANCE_LAYER
    from napari_bloodcell.classification.model_files import load_keras_model
    from napari_bloodcell.classification.training import TrainingConfig, train_classifier

    data = write_crop_folder(tmp_path / "data", n_per_class=10, seed=4)
    config = TrainingConfig(input_size=32, epochs=1, batch_size=8, test_fraction=0.0)
    grey = train_classifier([data], tmp_path / "g.keras", replace_config(config, grey_input=True))
    tuned = train_classifier(
        [data], tmp_path / "t.keras", replace_config(config, init_model=str(grey.model_path))
    )
    assert read_metadata(tuned.model_path).training["config"]["grey_input"] is True
    rng = np.random.default_rng(0)
    crops = rng.random((4, 32, 32, 3)).astype(np.float32)
    # colour removed, luminance kept: a colour-blind network cannot tell the difference
    luma = crops @ np.array([0.299, 0.587, 0.114], np.float32)
    recoloured = np.repeat(luma[..., None], 3, axis=-1)
    for path in (grey.model_path, tuned.model_path):
        network = load_keras_model(path)
        assert not network.get_layer(LUMINANCE_LAYER).trainable
        np.testing.assert_allclose(
            network.predict_on_batch(crops), network.predict_on_batch(recoloured), atol=1e-5
        )


def test_grey_probability_turns_that_share_of_crops_grey():
    from napari_bloodcell.classification.training import make_augmenter

    purple = np.zeros((200, 8, 8, 3), np.float32)
    purple[..., 0], purple[..., 2] = 0.5, 0.8  # uniform: geometry cannot change it
    never = np.asarray(make_augmenter(0, hue_jitter=0.0)(purple))
    always = np.asarray(make_augmenter(0, hue_jitter=0.0, grey_probability=1.0)(purple))
    half = np.asarray(make_augmenter(0, hue_jitter=0.0, grey_probability=0.5)(purple))
    grey = np.ptp(half, axis=-1).max(axis=(1, 2)) < 1e-3
    assert np.ptp(never, axis=-1).min() > 0.1
    assert 0.35 < grey.mean() < 0.65
    # the grey draw comes last: each crop's luminance of what the other jitters made of it
    luminance = never @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(always, np.repeat(luminance[..., None], 3, axis=-1), atol=1e-5)


def test_a_model_without_a_platelet_class_leaves_platelets_their_segmented_type(tiny_model):
    from napari_bloodcell.classification.inference import CellClassifier
    from napari_bloodcell.pipeline import analyze_frame
    from napari_bloodcell.synthetic import make_smear

    smear = make_smear(shape=(240, 320), n_rbc=6, n_wbc=1, n_platelets=4, seed=4)
    table = analyze_frame(smear.image / 255, CellClassifier(tiny_model)).table
    platelets, white = table[table.cell_type == "platelet"], table[table.cell_type == "wbc"]
    assert len(platelets) and len(white)
    assert (platelets.cell_class == "platelet").all()  # not "lobed" or "round"
    assert platelets[["confidence", "p_lobed", "p_round"]].isna().all().all()
    assert set(white.cell_class) <= {"lobed", "round", UNCERTAIN}
    assert white.confidence.notna().all()


def test_each_cells_answer_is_the_classification_of_its_own_crop(tiny_model):
    """Answers written to the wrong rows (e.g. reversed) passed every test: each was
    checked on frames of one white cell, or as sets."""
    from napari_bloodcell.classification.inference import ModelFileClassifier
    from napari_bloodcell.crops import as_bytes, crop_cells
    from napari_bloodcell.pipeline import analyze_frame
    from napari_bloodcell.segmentation import segment_frame
    from napari_bloodcell.synthetic import make_smear

    received = []

    class MeanBrightness(ModelFileClassifier):
        """p_round = the crop's mean value: a probability that tells the crops apart."""

        def predict(self, crops):
            received.append(np.asarray(crops).dtype)
            mean = np.asarray(crops, np.float64).reshape(len(crops), -1).mean(axis=1)
            mean = mean / 255 if np.asarray(crops).dtype == np.uint8 else mean
            return np.stack([1 - mean, mean], axis=1), np.zeros((len(crops), 1))

    classifier = MeanBrightness(tiny_model)
    frame = make_smear(shape=(360, 480), n_rbc=4, n_wbc=4, n_platelets=2, seed=6).image / 255
    table = analyze_frame(frame, classifier).table.set_index("label")
    cells = segment_frame(frame, "smear").cells.set_index("label")
    white = cells[cells["cell_type"] == "wbc"]
    assert len(white) >= 3
    crops = crop_cells(
        frame, white[["centroid_y", "centroid_x"]].to_numpy(), white["crop_diameter_px"].to_numpy(),
        size=classifier.input_size, scale=classifier.crop_scale,
    )  # fmt: skip
    # the crops as the model was trained, calibrated and evaluated on: uint8 (analyze gave
    # it float crops, whose probabilities differed from predict's on the same crops)
    assert received == [np.dtype(np.uint8)]
    expected = classifier.predict(as_bytes(crops))[0][:, 1]
    assert np.ptp(expected) > 0.01  # the crops differ
    np.testing.assert_allclose(table.loc[white.index, "p_round"], expected, rtol=1e-6)


def test_intervals_resample_whole_frames_when_crops_share_them():
    """The intervals took crops of one frame as independent: with every frame's crops
    all right or all wrong, the frame-level interval must be the wider one."""
    from napari_bloodcell.classification.evaluation import add_confidence_intervals

    rng = np.random.default_rng(0)
    frame_right = rng.random(40) < 0.8  # 40 frames of 10 crops, right or wrong together
    labels = np.zeros(400, int)
    predicted = np.where(np.repeat(frame_right, 10), 0, 1)
    widths = []
    for groups in (None, np.repeat(np.arange(40), 10)):
        metrics = classification_metrics(labels, predicted, ["a", "b"])
        add_confidence_intervals(metrics, labels, predicted, groups=groups)
        low, high = metrics["per_class"]["a"]["recall_ci95"]
        assert low <= metrics["per_class"]["a"]["recall"] <= high
        widths.append(high - low)
    assert widths[1] > 2 * widths[0]  # ~√10 wider: 40 frames, not 400 crops


def test_intervals_of_a_class_from_one_frame_are_never_narrower_than_by_crops():
    """Resampling whole frames gave a zero-width interval for a class whose crops all came
    from one frame (every resample holding it reproduced the same ratio)."""
    from napari_bloodcell.classification.evaluation import (
        add_confidence_intervals,
        wilson_interval,
    )

    labels = np.r_[np.zeros(40, int), np.ones(200, int)]
    predicted = np.r_[np.tile([0, 1], 20), np.ones(200, int)]  # class a: 20 of 40 right
    groups = np.r_[np.zeros(40, int), np.repeat(np.arange(1, 51), 4)]  # a from one frame
    metrics = classification_metrics(labels, predicted, ["a", "b"])
    add_confidence_intervals(metrics, labels, predicted, groups=groups)
    low, high = metrics["per_class"]["a"]["recall_ci95"]
    assert (low, high) == pytest.approx(wilson_interval(20, 40))  # 0.35–0.65, not 0.5–0.5
    f1_low, f1_high = metrics["per_class"]["a"]["f1_ci95"]
    assert f1_high - f1_low > 0.1


def test_fine_tuning_validates_only_on_crops_the_starting_model_did_not_train_on(
    tiny_model, tmp_path
):
    """Re-splitting from scratch put crops the body had trained on into the fine-tuning's
    validation: early stopping, temperature and novelty were fitted on seen crops."""
    import shutil

    from napari_bloodcell.classification.model_files import read_metadata
    from napari_bloodcell.classification.training import fine_tuning_config, split_training_data

    from .helpers import write_crop_folder

    data = shutil.copytree(tiny_model.parent / "data", tmp_path / "data")  # the same folder …
    added = write_crop_folder(tmp_path / "added", n_per_class=6, seed=5)
    for crop in added.rglob("*.png"):  # … with crops added since
        shutil.copy(crop, data / crop.parent.name / f"new_{crop.name}")
    trained_on = set(read_metadata(tiny_model).training["train_sources"])
    for seed in range(5):
        config = fine_tuning_config(str(tiny_model), seed=seed).resolved()
        split = split_training_data([data], config)
        validation = set(split.dataset.sources[split.validation])
        train = set(split.dataset.sources[split.train])
        assert validation and not validation & trained_on
        assert trained_on <= train
    # one new crop per class is enough: the learnt crops train every class
    for crop in data.rglob("*.png"):
        learnt = f"data/{crop.stem}" in trained_on
        if not learnt and crop.name not in ("new_round0.png", "new_lobed0.png"):
            crop.unlink()
    split = split_training_data([data], fine_tuning_config(str(tiny_model)).resolved())
    assert sorted(Path(f).name for f in split.dataset.files[split.validation]) == [
        "new_lobed0.png",
        "new_round0.png",
    ]
    # … but only when nothing else can validate: then a class's one new crop is trained on
    for crop in added.glob("round/*.png"):
        shutil.copy(crop, data / "round" / f"new_{crop.name}")
    split = split_training_data([data], fine_tuning_config(str(tiny_model)).resolved())
    validation = {Path(f).name for f in split.dataset.files[split.validation]}
    assert validation and validation <= {f"new_round{i}.png" for i in range(6)}
    assert "new_lobed0.png" in {Path(f).name for f in split.dataset.files[split.train]}


def test_library_training_requests_fail_before_training_not_after(tiny_model, tmp_path):
    """An init model given as a Path failed json.dumps when the result was saved, and an
    output not ending in .keras was refused once trained."""
    from napari_bloodcell.classification.training import (
        TrainingConfig,
        fine_tuning_config,
        train_classifier,
    )

    config = fine_tuning_config(tiny_model).resolved()  # a Path
    assert config.init_model == str(tiny_model)
    json.dumps(config.__dict__)
    with pytest.raises(ModelError, match="model.h5: model files must end in .keras"):
        train_classifier([tmp_path / "no-data-read"], tmp_path / "model.h5", TrainingConfig())


def test_a_class_named_uncertain_is_refused(tmp_path):
    """It made a confident answer of that class and a cell below the threshold the same."""
    from napari_bloodcell.classification.datasets import find_labelled_files
    from napari_bloodcell.classification.model_files import ModelMetadata, check_metadata

    from .helpers import write_crop_folder

    data = write_crop_folder(tmp_path / "data", n_per_class=2, seed=0)
    (data / "round").rename(data / "Uncertain")
    with pytest.raises(DatasetError, match="Uncertain: 'uncertain' is the answer of a class"):
        find_labelled_files([data])
    # scoring a model: an annotators' "uncertain" folder is another class's, skippable
    with pytest.raises(DatasetError, match="not one of the model's classes"):
        find_labelled_files([data], ["lobed", "round"])
    found, _ = find_labelled_files([data], ["lobed", "round"], ignore_unknown=True)
    assert {name for _, name, _ in found} == {"lobed"}
    with pytest.raises(ModelError, match="'uncertain' cannot be a class"):
        check_metadata(ModelMetadata(["lobed", "uncertain"], 32, 2.2, "compact"))


def test_fine_tuning_a_network_unlike_its_metadata_is_a_clear_error(tiny_model, tmp_path):
    """It fine-tuned until TensorFlow failed in the loss (or raised 'No such layer')."""
    import keras

    from napari_bloodcell.classification.model_files import METADATA_MEMBER, save_model
    from napari_bloodcell.classification.training import model_to_fine_tune

    metadata = json.loads(zipfile.ZipFile(tiny_model).read(METADATA_MEMBER))
    three = json.dumps(metadata | {"classes": ["lobed", "round", "third"]}).encode()
    edited = _with_member(tiny_model, tmp_path / "edited.keras", METADATA_MEMBER, three, False)
    with pytest.raises(ModelError, match=r"edited.keras: network shape .* 3 classes\)"):
        model_to_fine_tune(str(edited), ["lobed", "round"])
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    foreign = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    path = save_model(foreign, tmp_path / "foreign.keras", read_metadata(tiny_model))
    with pytest.raises(ModelError, match="cannot be fine-tuned: its last layer"):
        model_to_fine_tune(str(path), ["lobed", "round", "new"])


def test_crops_that_are_not_one_grey_or_rgb_image_say_so(tmp_path):
    """A multi-page TIFF was used by its first page silently; a 2-channel crop was told
    to 'give the axes', which no training command takes."""
    import tifffile

    from .helpers import draw_cell

    cell = draw_cell("round", np.random.default_rng(0))
    tifffile.imwrite(tmp_path / "pages.tif", np.stack([cell, cell]), photometric="rgb")
    tifffile.imwrite(tmp_path / "two.tif", cell[..., :2])
    with pytest.raises(DatasetError) as error:
        prepare_crop_files(sorted(tmp_path.glob("*.tif")), size=32, scale=2.2, workers=1)
    message = str(error.value)
    assert "pages.tif: holds 2 frames; a crop is one image" in message
    assert "two.tif" in message and "a crop must be a grey or RGB(A) image" in message


def test_training_refuses_a_nearly_uniform_crop_before_it_trains(tmp_path):
    from napari_bloodcell.classification.training import TrainingConfig, train_classifier

    data = write_crop_folder(tmp_path / "data", n_per_class=4, seed=0)
    speck = np.full((40, 40, 3), 250, np.uint8)
    speck[0, 5] = 200
    iio.imwrite(data / "lobed" / "speck.png", speck)
    with pytest.raises(DatasetError, match="speck.png: nearly uniform"):
        train_classifier([data], tmp_path / "m.keras", TrainingConfig(input_size=32))
    assert not (tmp_path / "m.keras").exists()
