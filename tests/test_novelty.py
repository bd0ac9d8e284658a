"""Novelty: how unlike the training crops a crop looks (classification/novelty.py)."""

import io

import numpy as np
import pytest

from napari_bloodcell.classification.novelty import (
    NoveltyReference,
    fit_novelty_reference,
    novelty,
    novelty_warning,
)
from napari_bloodcell.errors import ModelError


def _clusters(rng, n_per_class, shift=0.0):
    """Three Gaussian classes in 6-D with correlated noise; ``shift`` moves them all."""
    centres = np.array([[0, 0, 0, 0, 0, 0], [4, 0, 0, 1, 0, 0], [0, 4, 0, 0, 1, 0]], float)
    mixing = np.eye(6) + 0.5 * np.eye(6, k=1)
    labels = np.repeat(np.arange(3), n_per_class)
    features = centres[labels] + rng.normal(size=(len(labels), 6)) @ mixing + shift
    return features, labels


def _fit(rng, n_per_class=400):
    """A reference from two microscopes: the second has few crops, shifted and twice as noisy."""
    first, first_labels = _clusters(rng, n_per_class)
    second, second_labels = _clusters(rng, n_per_class // 10, shift=3.0)
    second = 3.0 + 2 * (second - 3.0)
    validation = [_clusters(rng, 300)[0], 3.0 + 2 * (_clusters(rng, 30, shift=3.0)[0] - 3.0)]
    return fit_novelty_reference(
        np.concatenate([first, second]),
        np.concatenate([first_labels, second_labels]),
        np.repeat([0, 1], [len(first), len(second)]),
        np.concatenate(validation),
        np.repeat([0, 1], [len(v) for v in validation]),
    )


def test_every_training_microscope_is_familiar_and_a_new_one_is_not():
    rng = np.random.default_rng(0)
    reference = _fit(rng)
    assert len(reference.class_means) == 6  # one mean per class and microscope
    first = novelty(_clusters(rng, 2000)[0], reference)
    second = novelty(3.0 + 2 * (_clusters(rng, 500, shift=3.0)[0] - 3.0), reference)
    assert np.mean(first > 1) < 0.02 and np.mean(second > 1) < 0.05
    shifted = novelty(_clusters(rng, 200, shift=np.array([0, 0, 12, 0, 0, -12]))[0], reference)
    assert np.mean(shifted > 1) > 0.95


def test_at_most_1_percent_of_a_microscopes_validation_crops_are_novel():
    """With fewer than 100 validation crops the interpolated 99th percentile lay below the
    largest distance: 1 of 51 (2 %) was beyond 1 on the microscope's own crops."""
    rng = np.random.default_rng(1)
    train, labels = _clusters(rng, 400)
    for per_class in (17, 50):  # 51 and 150 validation crops
        validation = _clusters(rng, per_class)[0]
        reference = fit_novelty_reference(
            train, labels, np.zeros(len(train)), validation, np.zeros(len(validation))
        )
        assert np.mean(novelty(validation, reference) > 1) <= 0.01
        # as the model file stores it (float32): the crop at the percentile was 1.00000001
        stored = NoveltyReference.from_bytes(reference.to_bytes())
        assert np.mean(novelty(validation, stored) > 1) <= 0.01


def test_too_few_crops_give_no_reference():
    rng = np.random.default_rng(2)
    features, labels = _clusters(rng, 300)  # 900 training crops: fewer than 1,000
    validation = _clusters(rng, 100)[0]
    domains = np.zeros(len(features), int)
    assert fit_novelty_reference(features, labels, domains, validation, domains[:300]) is None
    more, more_labels = _clusters(rng, 400)
    # enough training crops, but a microscope with 30 validation crops, or none
    validation_domains = np.repeat([0, 1], [270, 30])
    for training_domains in (more_labels % 2, more_labels):  # (microscope 2: no validation)
        assert (
            fit_novelty_reference(
                more, more_labels, training_domains, validation, validation_domains
            )
            is None
        )
    one_microscope = np.zeros(len(more), int)
    assert fit_novelty_reference(more, more_labels, one_microscope, validation, domains[:300])


def test_reference_round_trips_and_bad_bytes_are_a_clear_error():
    rng = np.random.default_rng(1)
    reference = _fit(rng)
    features = _clusters(rng, 50)[0]
    again = NoveltyReference.from_bytes(reference.to_bytes())
    np.testing.assert_allclose(novelty(features, again), novelty(features, reference), rtol=1e-4)
    with pytest.raises(ModelError, match="novelty reference"):
        NoveltyReference.from_bytes(b"not an npz archive")
    truncated = reference.to_bytes()[:-40]  # an npz (zip) cut short
    with pytest.raises(ModelError, match="novelty reference is unreadable"):
        NoveltyReference.from_bytes(truncated)
    reference.class_means[0, 0] = np.nan
    with pytest.raises(ModelError, match="NaN or infinite"):
        NoveltyReference.from_bytes(reference.to_bytes())
    two_thresholds = io.BytesIO()
    np.savez(two_thresholds, class_means=reference.class_means, precision=reference.precision,
             threshold=np.ones(2))  # fmt: skip
    with pytest.raises(ModelError, match="novelty reference is unreadable"):
        NoveltyReference.from_bytes(two_thresholds.getvalue())
    with pytest.raises(ModelError, match="do not fit"):
        novelty(features[:, :4], reference)


def test_a_warning_needs_many_novel_cells_not_a_few_by_chance():
    assert novelty_warning([2.0, 0.5, 0.3] + [0.5] * 17) is None  # 1 of 20: chance
    assert novelty_warning([2.0] * 2 + [0.5] * 198) is None  # 1 %: as expected
    message = novelty_warning([1.5] * 30 + [0.5] * 70 + [np.nan] * 50)
    assert "30 of 100 classified cells (30%)" in message and "--init default" in message
    assert novelty_warning([]) is None and novelty_warning([np.nan]) is None
    assert "30 of 100 white cells" in novelty_warning([1.5] * 30 + [0.5] * 70, "white cells")


def test_the_warning_after_an_analysis_counts_white_cells_only():
    import pandas as pd

    from napari_bloodcell.classification.novelty import white_cell_novelty

    table = pd.DataFrame({"cell_type": ["wbc", "platelet", "rbc"], "novelty": [0.4, 3.0, np.nan]})
    np.testing.assert_array_equal(white_cell_novelty(table), [0.4])
    assert len(white_cell_novelty(table.drop(columns="novelty"))) == 0  # an older table


def test_classifier_reports_novelty_per_crop(tiny_model_with_novelty, tiny_heldout, tiny_model):
    from napari_bloodcell.classification.datasets import load_crop_dataset
    from napari_bloodcell.classification.inference import CellClassifier

    data = load_crop_dataset([tiny_heldout], size=32, scale=2.2, classes=["lobed", "round"])
    crops = data.images.astype(np.float32) / 255
    classifier = CellClassifier(tiny_model_with_novelty)
    table = classifier.classify(crops)
    assert list(table.columns[:3]) == ["cell_class", "confidence", "novelty"]
    assert np.isfinite(table["novelty"]).all() and (table["novelty"] >= 0).all()
    # solid green squares are nothing like the stained nuclei it was trained on
    green = np.zeros_like(crops)
    green[..., 1] = 1.0
    assert classifier.classify(green)["novelty"].min() > table["novelty"].median()
    # trained on 96 crops, the model itself got no reference: it answers NaN, not an error
    assert CellClassifier(tiny_model).novelty_reference is None
    assert CellClassifier(tiny_model).classify(crops)["novelty"].isna().all()


def test_a_damaged_novelty_member_is_a_clear_model_error(tiny_model_with_novelty, tmp_path):
    import zipfile

    from napari_bloodcell.classification.inference import CellClassifier
    from napari_bloodcell.classification.model_files import NOVELTY_MEMBER

    damaged = tmp_path / "damaged.keras"
    with (
        zipfile.ZipFile(tiny_model_with_novelty) as source,
        zipfile.ZipFile(damaged, "w") as target,
    ):
        for item in source.infolist():
            data = b"garbage" if item.filename == NOVELTY_MEMBER else source.read(item)
            target.writestr(item, data)
    with pytest.raises(ModelError, match="damaged.keras: the model's novelty reference"):
        CellClassifier(damaged)
