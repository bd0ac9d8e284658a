"""Does a crop look like the images the model was trained on? (novelty, numpy only)

A classifier trained on two microscopes answers confidently on a third one and is
mostly wrong there (docs/benchmarks.md: Zheng 2018). Its confidence does not warn;
the distance of a crop's pooled CNN features from the training crops does (Lee et
al., NeurIPS 2018): the Mahalanobis distance to the nearest mean of a class of one
training microscope, with one shared covariance. It is reported relative to the
distance that at most 1 % of each training microscope's validation crops exceed (the
largest of their 99th percentiles, each taken as a crop's own distance, rounded up: the
largest of fewer than 100 crops), so ``novelty > 1`` reads "less familiar than 99 % of the
crops the model was checked on". On new crops of a microscope with few validation crops
the share beyond 1 is somewhat higher (the tail is estimated from few crops).

One cell beyond 1 means little (up to 1 % of familiar cells are); many do mean the images
differ from the training ones (another microscope, stain or magnification), and the
classes should not be trusted before fine-tuning (``train --init default``).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from ..errors import ModelError

REFERENCE_PERCENTILE = 99.0
"""Validation percentile of the distance that ``novelty = 1`` stands for."""
COVARIANCE_SHRINKAGE = 0.1
"""Weight of the scaled identity in the shared covariance (stable with few crops)."""
MIN_TRAINING_CROPS = 1000
"""Fewer training crops than this (~8 per feature) give no reference: a covariance of 128
features from a fine-tuning set of ~60 crops called 23 % of that microscope's own test
images novel (docs/benchmarks.md)."""
MIN_VALIDATION_CROPS = 50
"""Per training microscope: fewer validation crops cannot place a 99th percentile."""
WARNING_SHARE = 0.05
"""Smallest share of novel cells that is warned about (5 × the validation share)."""
WARNING_P_VALUE = 1e-3
DISTANCE_CHUNK = 1024


@dataclass
class NoveltyReference:
    """Class means (K, D) and shared precision (D, D) of the training crops' features,
    and the validation distance at :data:`REFERENCE_PERCENTILE` (``threshold``)."""

    class_means: np.ndarray
    precision: np.ndarray
    threshold: float

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            class_means=self.class_means.astype(np.float32),
            precision=self.precision.astype(np.float32),
            threshold=np.float64(self.threshold),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> NoveltyReference:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                reference = cls(
                    stored["class_means"], stored["precision"], float(stored["threshold"])
                )
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise ModelError(f"the model's novelty reference is unreadable ({exc})") from None
        means, precision = reference.class_means, reference.precision
        if not (np.isfinite(reference.threshold) and reference.threshold > 0):
            raise ModelError(f"the model's novelty threshold is {reference.threshold}")
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise ModelError(
                f"the model's novelty reference has class means {means.shape} and precision "
                f"{precision.shape}; expected (K, D) and (D, D)"
            )
        if not (np.isfinite(means).all() and np.isfinite(precision).all()):
            raise ModelError("the model's novelty reference holds NaN or infinite values")
        return reference


def fit_novelty_reference(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    train_domains: np.ndarray,
    validation_features: np.ndarray,
    validation_domains: np.ndarray,
) -> NoveltyReference | None:
    """Fit the reference of a model from its training and validation crops (None when there
    are fewer than :data:`MIN_TRAINING_CROPS` of them, or fewer than
    :data:`MIN_VALIDATION_CROPS` validation crops of a training microscope: such a model
    reports no novelty).

    Features (N, D) with class labels and domains (N,): a domain is a training data folder
    (a microscope). Each (class, domain) pair gets its own mean, all share one shrunk
    covariance: one microscope's neutrophils are a tight cluster, two microscopes' are
    two. The threshold is the largest of the domains' validation
    :data:`REFERENCE_PERCENTILE` distances, so every training microscope is familiar
    (the first reference, one mean per class and the pooled percentile, called 14 % of a
    small training microscope's test crops novel; docs/benchmarks.md).
    """
    train_features = np.asarray(train_features, dtype=np.float64)
    validation_domains = np.asarray(validation_domains)
    domains = np.unique(train_domains)
    smallest = min((int((validation_domains == d).sum()) for d in domains), default=0)
    if len(train_features) < MIN_TRAINING_CROPS or smallest < MIN_VALIDATION_CROPS:
        return None
    components = np.unique(
        np.stack([train_labels, train_domains], axis=1), axis=0, return_inverse=True
    )[1]
    components = components.reshape(-1)
    means = np.stack(
        [train_features[components == k].mean(axis=0) for k in range(components.max() + 1)]
    )
    centred = train_features - means[components]
    covariance = centred.T @ centred / max(len(centred) - len(means), 1)
    scale = np.trace(covariance) / len(covariance)
    covariance = (1 - COVARIANCE_SHRINKAGE) * covariance + COVARIANCE_SHRINKAGE * scale * np.eye(
        len(covariance)
    )
    # the threshold is placed with the float32 means and precision the model file stores:
    # placed in float64, the validation crop at the percentile read as novel (1.00000001)
    reference = NoveltyReference(
        means.astype(np.float32), np.linalg.inv(covariance).astype(np.float32), 1.0
    )
    distances = mahalanobis_distances(validation_features, reference)
    reference.threshold = float(  # (a validation folder without training crops: ignored)
        max(
            np.percentile(  # "higher": an interpolated one left 1/n of n < 100 crops beyond
                distances[validation_domains == domain], REFERENCE_PERCENTILE, method="higher"
            )
            for domain in domains
        )
    )
    return reference


def mahalanobis_distances(features: np.ndarray, reference: NoveltyReference) -> np.ndarray:
    """Distance (N,) of each feature vector (N, D) to its nearest class mean."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != reference.class_means.shape[1]:
        raise ModelError(
            f"features of shape {features.shape} do not fit the novelty reference "
            f"({reference.class_means.shape[1]} features)"
        )
    distances = np.empty(len(features))
    for start in range(0, len(features), DISTANCE_CHUNK):  # memory: chunk × means × features
        offsets = features[start : start + DISTANCE_CHUNK, None, :] - reference.class_means[None]
        squared = np.einsum("nkd,nkd->nk", offsets @ reference.precision, offsets)
        distances[start : start + DISTANCE_CHUNK] = np.sqrt(np.maximum(squared.min(axis=1), 0.0))
    return distances


def novelty(features: np.ndarray, reference: NoveltyReference) -> np.ndarray:
    """Per crop (N,): distance / the reference's threshold (> 1: less familiar than 99 %
    of the validation crops of each training microscope)."""
    return mahalanobis_distances(features, reference) / reference.threshold


def novelty_warning(novelty_values, cells: str = "classified cells") -> str | None:
    """A warning when clearly more ``cells`` are novel than the 1 % expected, else None.

    Warned when at least :data:`WARNING_SHARE` of the cells are novel and a binomial test
    against 1 % gives p < :data:`WARNING_P_VALUE` (so a handful of cells never warns by
    chance; the share of 5 % is what keeps a microscope with few validation crops, whose
    familiar cells pass 1 somewhat more than 1 % of the time, from warning on its own
    images). NaN values (cells not classified by the CNN) are ignored.
    """
    from scipy.stats import binomtest  # not at import: the widgets import this module

    values = np.asarray(novelty_values, dtype=float)
    values = values[np.isfinite(values)]
    novel = int((values > 1).sum())
    expected = 1 - REFERENCE_PERCENTILE / 100
    if len(values) == 0 or novel / len(values) < WARNING_SHARE:
        return None
    if binomtest(novel, len(values), expected, alternative="greater").pvalue >= WARNING_P_VALUE:
        return None
    return (
        f"{novel} of {len(values)} {cells} ({novel / len(values):.0%}) look unlike "
        f"the model's training images (expected about {expected:.0%}): another microscope, "
        f"stain or magnification? Their classes are not reliable; fine-tune the model on a "
        f"few labelled crops of yours (napari-bloodcell train --init default, or the Train "
        f"classifier widget in napari)."
    )


def white_cell_novelty(table):
    """The ``novelty`` of the white cells of a per-cell table (pandas), what the warning
    after an analysis counts: the platelet candidates of a smear include clumps and
    fragments the training crops do not, and are novel for that reason, not for the
    microscope (docs/benchmarks.md)."""
    if "novelty" not in table or "cell_type" not in table:  # (tables of earlier versions)
        return np.array([])
    return table.loc[table["cell_type"] == "wbc", "novelty"].to_numpy(dtype=float)
