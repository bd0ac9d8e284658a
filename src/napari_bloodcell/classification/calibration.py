"""Confidence calibration: temperature scaling and expected calibration error (ECE).

Temperature scaling (Guo et al., 2017) divides the network's log-probabilities by one
scalar T fitted on validation data to minimise the negative log-likelihood; it
changes confidences, never the predicted class. T is stored in the model file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from .inference import PROBABILITY_FLOOR, apply_temperature

ECE_BINS = 15


TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T in [0.05, 20] minimising validation NLL of ``probabilities`` (N, K),
    or 1 (no change) where the validation crops cannot tell it (:func:`temperature_fit`)."""
    fitted = temperature_fit(probabilities, labels)
    return 1.0 if fitted is None else fitted


def temperature_fit(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    """The temperature minimising validation NLL, or None where no finite one does.

    None when the labels hold fewer than two classes, or when every validation crop is
    right (the NLL then falls for ever sharper answers, down to the lower bound): a
    sample with no error does not show how sure the model may be.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    labels = np.asarray(labels, dtype=int)
    if len(np.unique(labels)) < 2 or np.all(probabilities.argmax(axis=1) == labels):
        return None

    # the NLL in the log domain: a clip of the calibrated probabilities capped the loss of
    # confidently wrong crops, and the fit ran to the lower bound (every confidence ~1)
    log_p = np.log(np.clip(probabilities, PROBABILITY_FLOOR, 1.0))
    truth = log_p[np.arange(len(labels)), labels]

    def nll(log_t: float) -> float:
        temperature = float(np.exp(log_t))
        return float(np.mean(logsumexp(log_p / temperature, axis=1) - truth / temperature))

    result = minimize_scalar(nll, bounds=np.log(TEMPERATURE_BOUNDS), method="bounded")
    return float(np.exp(result.x))


def confidence_bins(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> list[dict]:
    """The crops binned by confidence (``n_bins`` equal bins of [0, 1]): per non-empty bin
    its ``bin_low``, ``bin_high``, mean ``confidence``, ``accuracy`` and ``count``."""
    probabilities = np.asarray(probabilities, dtype=float)
    labels = np.asarray(labels, dtype=int)
    confidence = probabilities.max(axis=1) if len(labels) else np.zeros(0)
    correct = probabilities.argmax(axis=1) == labels if len(labels) else np.zeros(0, bool)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    return [
        {
            "bin_low": b / n_bins,
            "bin_high": (b + 1) / n_bins,
            "confidence": float(confidence[bins == b].mean()),
            "accuracy": float(correct[bins == b].mean()),
            "count": int((bins == b).sum()),
        }
        for b in np.unique(bins)
    ]


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE: |accuracy − confidence| per confidence bin (:func:`confidence_bins`), averaged
    weighted by the bins' counts; NaN without crops."""
    bins = confidence_bins(probabilities, labels, n_bins)
    n = sum(b["count"] for b in bins)
    if n == 0:
        return float("nan")
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins))


def calibration_record(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Fit T on validation probabilities; report accuracy and ECE before/after.

    ``temperature_fitted`` is false where the crops could not tell a temperature (T = 1).
    """
    fitted = temperature_fit(probabilities, labels)
    temperature = 1.0 if fitted is None else fitted
    calibrated = apply_temperature(probabilities, temperature)
    return {
        "temperature": temperature,
        "temperature_fitted": fitted is not None,
        "validation_accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)),
        "validation_ece_uncalibrated": expected_calibration_error(probabilities, labels),
        "validation_ece": expected_calibration_error(calibrated, labels),
    }


def calibrate_model_file(
    model_path: Path, data_dirs: list[Path], *, views: int | None = None
) -> dict:
    """Fit the temperature and the novelty reference of a model file on its recorded split
    and store them.

    ``data_dirs`` must include every folder the model was trained on (matched by name;
    another folder is not training data and is ignored). The temperature and the novelty
    threshold are fitted on the items whose source image is in the model's
    ``validation_sources``; the novelty's class means and covariance on its training items.
    ``views`` first changes the model's test-time views (both depend on them). The novelty
    reference is replaced, or removed when the crops are too few for one. The record
    returned counts the validation sources found against those recorded.
    """
    from ..errors import DatasetError
    from .datasets import (
        find_labelled_files,
        missing_training_folders,
        parts_in_model_split,
        prepare_crop_files,
        source_name,
    )
    from .inference import CellClassifier
    from .model_files import check_not_packaged, checked_views, update_metadata
    from .novelty import fit_novelty_reference

    classifier = CellClassifier(model_path)
    check_not_packaged(classifier.path)
    metadata = classifier.metadata
    if views is not None:
        metadata.test_time_views = checked_views(views)
    data_dirs = [Path(d) for d in data_dirs]
    recorded = len(metadata.training.get("validation_sources", []))
    if not recorded:
        raise DatasetError(
            f"{classifier.name} records no validation images (a model made by another "
            f"program?): there is nothing to fit its temperature on"
        )
    missing = missing_training_folders(metadata.training, data_dirs)
    if missing:
        raise DatasetError(
            f"{classifier.name} was trained on folders named {', '.join(sorted(missing))} too; "
            f"give every folder it was trained on (a temperature fitted on part of its "
            f"validation images would fit that part only)"
        )
    found, _ = find_labelled_files(data_dirs, metadata.classes, ignore_unknown=True)
    part_of_item = parts_in_model_split(found, data_dirs, metadata.training, with_base_models=False)
    parts = {
        name: [item for item, part in zip(found, part_of_item, strict=True) if part == name]
        for name in ("validation", "train")
    }
    found_sources = {(d, source_name(f)) for f, _, d in parts["validation"]}
    if not parts["validation"]:
        raise DatasetError(
            f"none of the model's {recorded} validation sources are in "
            f"{', '.join(map(str, data_dirs))}; give the folders it was trained on"
        )
    if not parts["train"]:
        raise DatasetError(
            f"{', '.join(map(str, data_dirs))} hold no training images of the model, "
            f"only held-out ones"
        )
    metadata.temperature = 1.0  # uncalibrated probabilities, averaged over the views
    prepared = {}  # every part read (in forked processes) before TensorFlow starts here
    for name, items in parts.items():
        files, classes, domains = zip(*items, strict=True)
        crops = prepare_crop_files(files, size=metadata.input_size, scale=metadata.crop_scale)
        prepared[name] = crops, np.array([metadata.classes.index(c) for c in classes]), domains
    predicted = {
        name: (*classifier.predict(crops), labels, domains)
        for name, (crops, labels, domains) in prepared.items()
    }
    probabilities, validation_features, labels, validation_domains = predicted["validation"]
    _, train_features, train_labels, train_domains = predicted["train"]
    record = calibration_record(probabilities, labels)
    record["test_time_views"] = metadata.test_time_views
    record["validation_sources"] = {"recorded": recorded, "found": len(found_sources)}
    metadata.temperature = record["temperature"]
    metadata.training["calibration"] = record
    novelty = fit_novelty_reference(
        train_features, train_labels, train_domains, validation_features, validation_domains
    )
    record["novelty_reference"] = metadata.training["novelty_reference"] = novelty is not None
    classifier.check_unchanged()  # not a file replaced while the crops were classified
    update_metadata(classifier.path, metadata, novelty)  # a model name resolved to its file
    return record
