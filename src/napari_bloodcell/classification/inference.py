"""Classifying crops with a trained model (probabilities, calibrated, with "uncertain",
and how novel each crop looks to the model: :mod:`.novelty`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ..classes import UNCERTAIN, is_platelet_name
from ..errors import ModelError
from .model_files import (
    ModelMetadata,
    check_network_shape,
    checked_views,
    load_keras_model,
    read_metadata,
    read_novelty_reference,
    resolve_model_path,
)
from .novelty import novelty

PREDICT_BATCH = 256


class ModelFileClassifier:
    """What every classifier of a model file shares: metadata and the decision rule.

    Subclasses implement :meth:`predict`. ``chosen_stamp``: the file's :attr:`stamp` when
    it was chosen (by another process, which sends its choice here); a file changed since
    is refused (:class:`ModelError`), now and when the network is loaded.
    """

    def __init__(
        self, model: str | Path = "default", *, chosen_stamp: tuple[int, int] | None = None
    ):
        self.path = resolve_model_path(model)
        # (modification time in ns, size) of the file when it was chosen
        self.stamp = _file_stamp(self.path) if chosen_stamp is None else tuple(chosen_stamp)
        self.check_unchanged()
        self.metadata: ModelMetadata = read_metadata(self.path)
        self.novelty_reference = read_novelty_reference(self.path)

    def check_unchanged(self) -> None:
        """Refuse (:class:`ModelError`) to load the network of a file replaced since it was
        chosen: its classes, temperature or threshold may no longer be these."""
        if _file_stamp(self.path) != self.stamp:
            raise ModelError(
                f"{self.path} changed on disk after it was chosen; choose the model again"
            )

    @property
    def classes(self) -> list[str]:
        return self.metadata.classes

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    @property
    def crop_scale(self) -> float:
        return self.metadata.crop_scale

    @property
    def name(self) -> str:
        return self.path.stem

    def predict(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities (N, K) and pooled CNN features (N, D) of crops."""
        raise NotImplementedError

    def checked_crops(self, crops) -> np.ndarray:
        """Crops (N, S, S, 3) of this model's input size as :func:`crop_array` keeps them,
        or :class:`ModelError`."""
        crops = crop_array(crops)
        if crops.ndim != 4 or crops.shape[1:] != (self.input_size, self.input_size, 3):
            raise ModelError(
                f"crops of shape {crops.shape[1:]} do not fit model {self.name} "
                f"(expects {self.input_size}×{self.input_size}×3)"
            )
        return crops

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (N, K) of crops (N, S, S, 3) (see :meth:`predict`)."""
        return self.predict(crops)[0]

    def classify(
        self,
        crops: np.ndarray,
        uncertain_threshold: float | None = None,
        cell_types=None,
    ) -> pd.DataFrame:
        """Per crop: ``cell_class``, ``confidence``, ``novelty`` and ``p_<class>`` columns.

        ``cell_class`` is the most probable class — among those plausible for each
        crop's segmented ``cell_types`` when given — or ``"uncertain"`` when its
        probability is below the threshold (default: the model's own). ``novelty`` > 1:
        the crop looks less like the training images than 99 % of the validation crops of
        the least familiar training microscope — of every other one, fewer than 1 % pass
        1 (NaN for a model without a novelty reference; see :mod:`.novelty`).
        """
        threshold = (
            self.metadata.uncertain_threshold
            if uncertain_threshold is None
            else uncertain_threshold
        )
        check_uncertain_threshold(threshold)
        if cell_types is not None and len(cell_types) != len(crops):
            raise ModelError(
                f"{len(cell_types)} cell types for {len(crops)} crops; give one per crop"
            )
        allowed = None if cell_types is None else plausible_class_mask(cell_types, self.classes)
        probabilities, features = self.predict(crops)
        table = decide(probabilities, self.classes, threshold, allowed)
        table.insert(
            2,
            "novelty",
            np.full(len(table), np.nan)
            if self.novelty_reference is None or len(table) == 0
            else novelty(features, self.novelty_reference),
        )
        return table


class CellClassifier(ModelFileClassifier):
    """A model file ready to classify crops in this process.

    The metadata is read at once (cheap); TensorFlow is imported and the network
    loaded on first use.
    """

    def __init__(
        self, model: str | Path = "default", *, chosen_stamp: tuple[int, int] | None = None
    ):
        super().__init__(model, chosen_stamp=chosen_stamp)
        self._model = None

    def load(self) -> None:
        """Load the network now rather than on first use (:class:`ModelError` if unusable)."""
        self.keras_model()

    def keras_model(self):
        """The loaded Keras network (loaded on first call; :class:`ModelError` if unusable)."""
        return self._networks()[0]

    def _networks(self):
        """(the network, the same network answering (pooled features, probabilities))."""
        if self._model is None:
            self.check_unchanged()
            model = load_keras_model(self.path)
            check_network_shape(model, self.path, self.metadata)
            self._model = model, with_features(model)
        return self._model

    def predict(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated class probabilities (N, K) and pooled features (N, D) for crops
        (N, S, S, 3), floats in [0, 1] or uint8 (converted a batch at a time): the mean over
        the model's ``test_time_views`` views, then (probabilities) its temperature."""
        crops = self.checked_crops(crops)
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, 0), np.float32)
        probabilities, features = predict_over_views(
            self._networks()[1],
            (
                as_unit_floats(crops[i : i + PREDICT_BATCH])
                for i in range(0, len(crops), PREDICT_BATCH)
            ),
            self.metadata.test_time_views,
        )
        return apply_temperature(probabilities, self.metadata.temperature), features


def _file_stamp(path: Path) -> tuple[int, int]:
    """(modification time in ns, size) of a model file (:class:`ModelError` if it is gone)."""
    try:
        status = Path(path).stat()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
    return status.st_mtime_ns, status.st_size


def crop_array(crops) -> np.ndarray:
    """Crops as a contiguous array: uint8 ones kept (4× smaller), floats as float32.

    Other integer types, and floats outside [0, 1] or not finite, are refused
    (:class:`ModelError`): their range is unknown (16-bit crops taken as floats in [0, 1]
    changed probabilities by up to 0.95)."""
    crops = np.ascontiguousarray(crops)
    if crops.dtype == np.uint8:
        return crops
    scale_first = "scale them first, e.g. with napari_bloodcell.reading.image_from_array"
    if crops.dtype.kind not in "f" and crops.size:
        raise ModelError(
            f"crops must be uint8 (0–255) or floats in [0, 1], got {crops.dtype}; {scale_first}"
        )
    crops = crops.astype(np.float32, copy=False)
    if crops.size and not (np.isfinite(crops).all() and crops.min() >= 0 and crops.max() <= 1):
        raise ModelError(
            f"float crops must hold finite values in [0, 1], got values from "
            f"{np.nanmin(crops):g} to {np.nanmax(crops):g}; {scale_first}"
        )
    return crops


def as_unit_floats(crops: np.ndarray) -> np.ndarray:
    """Crops as float32 in [0, 1] (uint8 ones divided by 255)."""
    return crops.astype(np.float32) / 255 if crops.dtype == np.uint8 else crops


def predict_over_views(
    network, batches, views: int, batch_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Uncalibrated probabilities (N, K) and features (N, D) of a :func:`with_features`
    network for an iterable of float crop batches (at least one), each averaged over
    ``views`` dihedral views; ``batch_size``: Keras ``predict`` in sub-batches of that
    size, else one call per batch."""

    def predict(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if batch_size is None:
            features, probabilities = network.predict_on_batch(crops)
        else:
            features, probabilities = network.predict(crops, batch_size=batch_size, verbose=0)
        return np.asarray(probabilities), np.asarray(features)

    parts = [mean_over_views(predict, batch, views) for batch in batches]
    probabilities, features = (np.concatenate(column) for column in zip(*parts, strict=True))
    return probabilities, features


def with_features(model):
    """The network answering (features (N, D), probabilities (N, K)): the features are the
    input of its last layer, the softmax head (in this project's networks the pooled last
    stage, undropped at inference)."""
    import keras

    head = model.layers[-1]  # (a Sequential network has no defined `output` once loaded)
    return keras.Model(model.inputs, [head.input, head.output])


VIEW_TRANSFORMS = {
    1: [(0, False)],
    2: [(0, False), (0, True)],
    4: [(k, False) for k in range(4)],
    8: [(k, flip) for k in range(4) for flip in (False, True)],
}
"""Per number of views: (quarter turns, horizontal flip) of each view."""


def dihedral_views(crops: np.ndarray, views: int) -> Iterator[np.ndarray]:
    """Rotated/flipped copies of crops (N, S, S, C), one at a time (a copy each: 8 at once
    would be 7 batches more in memory): 1 the crops, 2 + their horizontal flip, 4 the 90°
    rotations, 8 the rotations and their flips."""
    transforms = VIEW_TRANSFORMS[checked_views(views)]  # checked now, not when iterated
    return (_dihedral_view(crops, turns, flip) for turns, flip in transforms)


def _dihedral_view(crops: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    view = np.rot90(crops, turns, axes=(1, 2))
    return np.ascontiguousarray(view[:, :, ::-1] if flip else view)


def mean_over_views(predict, crops: np.ndarray, views: int):
    """Mean of ``predict`` (crops → probabilities (N, K), or a tuple of arrays each averaged)
    over ``views`` dihedral views: a blood cell has no preferred orientation, so averaging
    them removes orientation noise."""
    answers = [predict(view) for view in dihedral_views(crops, views)]  # one view at a time
    if isinstance(answers[0], tuple):
        return tuple(np.mean(column, axis=0) for column in zip(*answers, strict=True))
    return np.mean(answers, axis=0)


def plausible_class_mask(cell_types, classes: list[str]) -> np.ndarray:
    """(N, K) bool: which model classes fit each object's segmented type.

    A platelet-sized fragment can only be a platelet (a class named by
    :data:`~napari_bloodcell.classes.PLATELET_NAMES`, e.g. ``platelets``); a WBC-sized
    object anything but a platelet. A row is all False where the model has no fitting
    class (a platelet for a model of white cells only): :func:`decide` then answers
    "uncertain".
    """
    platelet_like = np.array([is_platelet_name(c) for c in classes], dtype=bool)
    is_platelet = np.array([t == "platelet" for t in cell_types], dtype=bool)[:, None]
    return np.where(is_platelet, platelet_like, ~platelet_like).reshape(-1, len(classes))


def decide(
    probabilities: np.ndarray,
    classes: list[str],
    uncertain_threshold: float,
    allowed: np.ndarray | None = None,
) -> pd.DataFrame:
    """Turn probabilities (N, K) into a table: class (or "uncertain"), confidence, p_*.

    The class is the most probable one among ``allowed`` (an (N, K) bool mask; default
    all); its probability — not renormalised — is the confidence, so an object whose
    CNN answer contradicts its segmented type ends up "uncertain", not forced. A row
    allowing no class is "uncertain" with confidence 0.
    """
    probabilities = np.asarray(probabilities, dtype=float).reshape(-1, len(classes))
    if allowed is None:
        allowed = np.ones(probabilities.shape, dtype=bool)
    best = np.where(allowed, probabilities, -1.0).argmax(axis=1)
    answerable = allowed.any(axis=1)
    confidence = np.where(answerable, probabilities[np.arange(len(best)), best], 0.0)
    names = np.array(classes, dtype=object)[best] if len(best) else np.array([], dtype=object)
    cell_class = np.where(answerable & (confidence >= uncertain_threshold), names, UNCERTAIN)
    table = pd.DataFrame({"cell_class": cell_class.astype(object), "confidence": confidence})
    for k, name in enumerate(classes):
        table[f"p_{name}"] = probabilities[:, k]
    return table


def check_uncertain_threshold(threshold) -> None:
    """Refuse (:class:`ModelError`) an uncertain threshold that is not a probability."""
    if not (
        isinstance(threshold, (int, float, np.number))
        and not isinstance(threshold, (bool, np.bool_))
        and 0 <= threshold <= 1
    ):
        raise ModelError(f"the uncertain threshold is a probability in [0, 1], got {threshold!r}")


PROBABILITY_FLOOR = 1e-12
"""Probabilities are taken as at least this before their log (a float32 softmax gives 0)."""


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale softmax probabilities by a temperature (T > 1 softens, T = 1 leaves them)."""
    if temperature == 1.0:
        return probabilities
    logits = np.log(np.clip(probabilities, PROBABILITY_FLOOR, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)
