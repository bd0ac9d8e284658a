"""Training a crop classifier from labelled folders (Keras 3 + tf.data).

What the seed course work did, kept: residual CNN, augmentation (brightness
0.5–1.5, zoom 0.2, shifts 0.15, horizontal flip), Adam, early stopping on
validation loss (patience 5, best weights restored), checkpointing. What it got
wrong, fixed: the split is by source image and seeded (recorded in the model
file), classes are balanced with class weights, smaller data folders (other
microscopes) are oversampled, and augmentation also covers vertical flips, 90°
rotations and hue/saturation jitter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np

from ..crops import COLOUR_PERCENTILES, CROP_SCALE, MIN_DIVISOR
from ..errors import DatasetError, ModelError
from .architectures import (
    ARCHITECTURES,
    DEFAULT_INPUT_SIZE,
    HEAD_LAYER,
    LUMINANCE_LAYER,
    LUMINANCE_WEIGHTS,
    MIXSTYLE_PREFIX,
    NORMALIZATIONS,
    build_model,
)
from .calibration import calibration_record
from .datasets import (
    MIN_CROP_CONTRAST,
    SOURCE_SEPARATOR,
    SPLIT_RECORD_KEYS,
    CropDataset,
    LoadingStopped,
    find_crop_dataset,
    folder_name,
    parts_in_model_split,
    split_by_source,
    with_images,
)
from .inference import predict_over_views, with_features
from .model_files import (
    ModelMetadata,
    check_model_file_name,
    check_network_shape,
    checked_views,
    load_keras_model,
    read_metadata,
    resolve_model_path,
    save_model,
)
from .novelty import fit_novelty_reference

MIN_DOMAIN_SHARE = 0.25
MIN_INPUT_SIZE = 16
"""Smallest crop side (pixels) the networks' downsampling stages accept."""
DEFAULT_TEST_TIME_VIEWS = 8
"""Views of a newly trained model (chosen for the default model on validation data)."""
LR_CUT_FACTOR = 0.3
"""Learning-rate cut on a validation-loss plateau (three cuts at most)."""
AUGMENTATION_RANGES = {
    "stain_jitter": 0.9,
    "max_blur_sigma": 5.0,
    "hue_jitter": 0.5,
    "lamp_jitter": 2.0,
}
"""Largest value of each augmentation setting (the reasons: :data:`AUGMENTATION_LIMITS`)."""
AUGMENTATION_LIMITS = {
    "stain_jitter": "a channel gain of 1 ± 1 or more would zero or negate a channel",
    "max_blur_sigma": "pixels; a blur of 5 px erases a cell's inner structure at 80 px",
    "hue_jitter": "a fraction of the hue circle; ± 0.5 is every hue",
    "lamp_jitter": "an over-exposure gain up to e² clips most of a crop",
}
MAX_SEED = 2**32 - 3
"""Largest seed: the augmentation seeds its layers with seed, seed + 1, seed + 2, and Keras
takes seeds below 2³²."""


@dataclass
class TrainingConfig:
    """Hyper-parameters of one training run (all recorded in the model file)."""

    architecture: str = "compact"
    input_size: int | None = None
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 5
    lr_patience: int = 0
    """Epochs without a better validation loss before the learning rate is cut to
    ``LR_CUT_FACTOR`` × itself (0: constant learning rate)."""
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    crop_scale: float = CROP_SCALE
    normalization: str = "batch"
    stain_jitter: float = 0.0
    max_blur_sigma: float = 0.0
    hue_jitter: float = 0.05
    lamp_jitter: float = 0.0
    """Another lamp and camera, simulated before the crop's colour normalisation: per crop
    and channel an over-exposure gain in 1–exp(``lamp_jitter``) (bright parts clip) and a
    linear illumination ramp across the crop (± ``lamp_jitter`` / 2 at the middle of the
    edges, ≈ ± 0.7 × ``lamp_jitter`` at the corners); the crop is then re-normalised as
    ``analyze`` normalises it, before the other colour jitters (0: off)."""
    grey_probability: float = 0.0
    """Probability per training crop of turning it grey (its luminance in all channels), so
    the network also learns to classify without colour (0: off)."""
    grey_input: bool = False
    """A colour-blind network (see :func:`.architectures.build_model`); a diagnostic."""
    mixstyle: float = 0.0
    """Probability per batch of MixStyle (feature-statistics mixing between crops, see
    :mod:`.style_mixing`) after each of the compact body's first three stages, in training
    only; the saved network has no MixStyle layers (0: off). Not with ``init_model``."""
    test_time_views: int | None = None
    """Dihedral views averaged when the model classifies (stored in the model file; the
    temperature is fitted on the averaged validation probabilities). None: the
    ``init_model``'s when fine-tuning, else :data:`DEFAULT_TEST_TIME_VIEWS`."""
    init_model: str | None = None
    """Fine-tune from this model ("default", a user model name or a path) instead of
    training from scratch: its body is kept, the head rebuilt when the classes differ;
    its architecture, input size and crop scale are used."""
    train_body: bool = True
    """With ``init_model``: False trains the head only (the body, BatchNorm statistics
    included, stays as it is), for very few crops per class."""

    @property
    def size(self) -> int:
        return self.input_size or DEFAULT_INPUT_SIZE[self.architecture]

    def resolved(self) -> TrainingConfig:
        """This config checked, numpy numbers made Python ones, with architecture, input
        size, crop scale, normalisation and colour-blindness taken from ``init_model``, and
        its test-time views unless set (:class:`BloodcellError` for impossible settings)."""
        from dataclasses import fields, replace

        from ..errors import BloodcellError

        numpy_scalars = {
            f.name: getattr(self, f.name).item()
            for f in fields(self)
            if isinstance(getattr(self, f.name), np.generic)
        }
        if numpy_scalars:  # recorded as JSON in the model file
            return replace(self, **numpy_scalars).resolved()
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("patience", 0),
                              ("lr_patience", 0), ("seed", 0)):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, Integral) or value < minimum:
                raise BloodcellError(f"{name} must be a whole number ≥ {minimum}, got {value}")
        if self.input_size is not None and not (
            isinstance(self.input_size, Integral) and self.input_size >= MIN_INPUT_SIZE
        ):
            raise BloodcellError(
                f"input_size must be a whole number of pixels ≥ {MIN_INPUT_SIZE}, "
                f"got {self.input_size}"
            )
        if self.seed > MAX_SEED:
            raise BloodcellError(f"seed must be at most {MAX_SEED}, got {self.seed}")
        if self.architecture not in ARCHITECTURES:
            raise BloodcellError(
                f"unknown architecture {self.architecture!r}; expected one of "
                f"{', '.join(ARCHITECTURES)}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise BloodcellError(
                f"unknown normalization {self.normalization!r}; expected one of "
                f"{', '.join(NORMALIZATIONS)}"
            )
        if self.test_time_views is not None:
            checked_views(self.test_time_views)
        if not self.learning_rate > 0:
            raise BloodcellError(f"learning_rate must be above 0, got {self.learning_rate}")
        if not self.crop_scale > 0:
            raise BloodcellError(
                f"crop_scale (crop side / cell diameter) must be above 0, got {self.crop_scale}"
            )
        if not (
            0 < self.validation_fraction < 1
            and 0 <= self.test_fraction < 1
            and self.validation_fraction + self.test_fraction < 1
        ):
            raise BloodcellError(
                f"validation_fraction ({self.validation_fraction}) must be in (0, 1), "
                f"test_fraction ({self.test_fraction}) in [0, 1), and both together below 1"
            )
        for name, top in AUGMENTATION_RANGES.items():
            if not 0 <= getattr(self, name) <= top:
                raise BloodcellError(
                    f"{name} must be in [0, {top}] ({AUGMENTATION_LIMITS[name]}), "
                    f"got {getattr(self, name)}"
                )
        for name in ("mixstyle", "grey_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise BloodcellError(
                    f"{name} is a probability in [0, 1], got {getattr(self, name)}"
                )
        if self.mixstyle and self.architecture != "compact":
            raise BloodcellError("mixstyle works with the compact architecture only")
        if self.mixstyle and self.init_model is not None:
            raise BloodcellError(
                "mixstyle cannot be used when fine-tuning (init_model, --init): it is built "
                "into a network trained from scratch"
            )
        if self.init_model is None:
            return replace(self, test_time_views=self.test_time_views or DEFAULT_TEST_TIME_VIEWS)
        if isinstance(self.init_model, Path):  # recorded in the model file's JSON
            return replace(self, init_model=str(self.init_model)).resolved()
        init = read_metadata(resolve_model_path(self.init_model))
        init_config = init.training.get("config", {})
        kept = {
            "architecture": init.architecture,
            "input_size": init.input_size,
            "crop_scale": init.crop_scale,
            "grey_input": bool(init_config.get("grey_input", False)),
            "normalization": init_config.get("normalization", "batch"),
        }
        defaults = TrainingConfig()
        for name, value in kept.items():
            asked = getattr(self, name)
            if asked != getattr(defaults, name) and asked != value:
                raise BloodcellError(
                    f"{name} {asked!r} differs from the {value!r} of {self.init_model}: a "
                    f"fine-tuned network keeps its {name.replace('_', ' ')}"
                )
        return replace(self, **kept, test_time_views=self.test_time_views or init.test_time_views)


FINE_TUNING_RECIPE: dict = {
    "epochs": 60,
    "learning_rate": 1e-3,
    "batch_size": 16,
    "patience": 10,
    "stain_jitter": 0.15,
    "validation_fraction": 0.2,
    "test_fraction": 0.0,
}
"""Fine-tuning settings measured by ``benchmarks/bench_finetune.py`` (~50 crops per class):
small batches, a longer patience for the noisy validation loss of a few dozen crops, stain
jitter, and no test part (the lab keeps its own test images)."""


def fine_tuning_config(init_model: str, **settings) -> TrainingConfig:
    """A :class:`TrainingConfig` that fine-tunes ``init_model`` with
    :data:`FINE_TUNING_RECIPE`; ``settings`` (TrainingConfig fields) override it."""
    return TrainingConfig(init_model=init_model, **(FINE_TUNING_RECIPE | settings))


@dataclass
class TrainingResult:
    model_path: Path
    history: dict[str, list[float]]
    metadata: ModelMetadata
    seconds: float


class TrainingStopped(Exception):
    """Training was stopped on request (``stop_requested``); nothing was saved."""


def train_classifier(
    data_dirs: list[Path],
    out: str | Path,
    config: TrainingConfig | None = None,
    *,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    callbacks: list | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> TrainingResult:
    """Train a classifier on labelled crop folders and save it to ``out`` (``.keras``).

    Also writes learning curves ``<out stem>_history.csv`` / ``.png`` (loss and accuracy per
    epoch, train and validation) next to the model. ``on_epoch_end(epoch, logs)`` is called
    after each epoch (for progress bars); ``callbacks`` are extra Keras callbacks.
    ``stop_requested()`` is asked while the crops are read and before the model is saved:
    when true, :class:`TrainingStopped` is raised and nothing is written (to stop between
    epochs, raise from ``on_epoch_end`` or a callback).
    """
    config = (config or TrainingConfig()).resolved()
    out = Path(out)
    check_model_file_name(out)  # before the training, not when saving its result
    stop_requested = stop_requested or (lambda: False)
    started = time.perf_counter()
    split = split_training_data(data_dirs, config)
    try:
        dataset = with_images(
            split.dataset,
            size=config.size,
            scale=config.crop_scale,
            stop_requested=stop_requested,
            min_contrast=MIN_CROP_CONTRAST,  # (a blank crop teaches nothing)
        )
    except LoadingStopped:
        raise TrainingStopped from None
    train_idx, val_idx, test_idx = split.train, split.validation, split.test
    train_idx = oversample_small_domains(dataset, train_idx, np.random.default_rng(config.seed))
    model, history = fit(dataset, train_idx, val_idx, config, out, on_epoch_end, callbacks)
    validation = dataset.subset(val_idx)
    probabilities, validation_features = predict_dataset(
        model, validation, config.batch_size, config.test_time_views
    )
    calibration = calibration_record(probabilities, validation.labels)
    trained_on = dataset.subset(np.unique(train_idx))  # without the oversampling's repeats
    _, train_features = predict_dataset(
        model, trained_on, config.batch_size, config.test_time_views
    )
    novelty = fit_novelty_reference(
        train_features,
        trained_on.labels,
        trained_on.domains,
        validation_features,
        validation.domains,
    )
    metadata = ModelMetadata(
        classes=dataset.classes,
        input_size=config.size,
        crop_scale=config.crop_scale,
        architecture=config.architecture,
        temperature=calibration["temperature"],
        test_time_views=config.test_time_views,
        training={
            "data_dirs": [str(Path(d)) for d in data_dirs],
            "data_dir_names": [folder_name(d) for d in data_dirs],
            "config": {k: v for k, v in vars(config).items()},
            "n_items": int(len(dataset.labels)),
            "n_train_items_after_oversampling": int(len(train_idx)),
            "class_counts": {
                c: int((dataset.labels == i).sum()) for i, c in enumerate(dataset.classes)
            },
            "classes_not_validated": split.classes_not_validated,
            "train_sources": sorted(set(dataset.sources[train_idx].tolist())),
            "validation_sources": sorted(set(dataset.sources[val_idx].tolist())),
            "test_sources": sorted(set(dataset.sources[test_idx].tolist())),
            "base_models": base_model_splits(config.init_model),
            "epochs_run": len(history.get("loss", [])),
            "best_val_loss": float(min(history.get("val_loss", [np.nan]))),
            "calibration": calibration,
            "novelty_reference": novelty is not None,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    if stop_requested():
        raise TrainingStopped
    save_model(model, out, metadata, novelty)
    write_learning_curves(history, out.with_name(f"{out.stem}_history"))
    return TrainingResult(out, history, metadata, time.perf_counter() - started)


@dataclass
class TrainingSplit:
    """The crops of a training run (images not read yet) and their parts (item indices)."""

    dataset: CropDataset
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    classes_not_validated: list[str]
    """Classes with crops from one source image only: trained on, not validated."""


def split_training_data(data_dirs: list[Path], config: TrainingConfig) -> TrainingSplit:
    """Find the labelled crops of ``data_dirs`` and split them by source image (no image is
    read: quick enough to check a request before training starts); a :class:`DatasetError`
    for fewer than two classes or when nothing can be set aside for validation."""
    found = find_crop_dataset(data_dirs)
    if len(found.classes) < 2:
        raise DatasetError(
            f"{', '.join(map(str, data_dirs))}: found only the class {found.classes[0]!r}; "
            f"training needs at least two class sub-folders"
        )
    learnt = _learnt_by_init_model(found, data_dirs, config.init_model)
    fresh = np.flatnonzero(~learnt)

    def split_fresh(trained_elsewhere: frozenset[int] = frozenset()):
        fractions = (config.validation_fraction, config.test_fraction)
        parts = split_by_source(found.subset(fresh), fractions, config.seed, trained_elsewhere)
        return (fresh[part] for part in parts)

    train, validation, test = split_fresh()
    if len(validation) == 0 and learnt.any():
        # the learnt crops train their classes: a new source of one may validate
        train, validation, test = split_fresh(frozenset(found.labels[learnt].tolist()))
    train = np.sort(np.r_[train, np.flatnonzero(learnt)])
    if len(validation) == 0 and learnt.any():
        raise DatasetError(
            f"nothing to validate the fine-tuning on: {config.init_model} was trained on "
            f"{int(learnt.sum())} of these {len(learnt)} crops (kept for training), and the "
            f"others come from too few source images; add crops it has not seen"
        )
    if len(validation) == 0:
        counts = ", ".join(
            f"{name} {len(np.unique(found.sources[found.labels == i]))}"
            for i, name in enumerate(found.classes)
        )
        raise DatasetError(
            f"too few source images to set some aside for validation: a class needs crops "
            f"from at least two source images, found {counts}. Crops whose file names share "
            f"the part before '{SOURCE_SEPARATOR}' (e.g. slide1{SOURCE_SEPARATOR}3.png) count "
            f"as cut from one image and always stay together; name crops of different images "
            f"differently"
        )
    validated = set(found.labels[validation].tolist())
    not_validated = [name for i, name in enumerate(found.classes) if i not in validated]
    return TrainingSplit(found, train, validation, test, not_validated)


def _learnt_by_init_model(
    found: CropDataset, data_dirs: list[Path], init_model: str | None
) -> np.ndarray:
    """(N,) bool: crops of sources the model fine-tuned from (or its own base models)
    trained on, and crops of sources so named in other folders. Fine-tuning trains on
    them and splits only the others: on its validation crops the body would look better
    than it is (early stopping, temperature and novelty reference fitted on them)."""
    if init_model is None:
        return np.zeros(len(found.labels), dtype=bool)
    training = read_metadata(resolve_model_path(init_model)).training
    files = [
        (Path(file), found.classes[label], int(domain))
        for file, label, domain in zip(found.files, found.labels, found.domains, strict=True)
    ]
    trained = parts_in_model_split(files, [Path(d) for d in data_dirs], training) == "train"
    names = np.array([source.split("/", 1)[-1] for source in found.sources])
    return np.isin(names, names[trained])  # one name, one part (as split_by_source keeps)


def training_notes(metadata: ModelMetadata) -> list[str]:
    """What a user should know about a finished training run (for the terminal and the
    training widget): classes its validation could not judge, a temperature it could not
    fit."""
    notes = []
    not_validated = metadata.training.get("classes_not_validated", [])
    if not_validated:
        notes.append(
            f"no validation crops for {', '.join(not_validated)}: crops from one source image "
            f"only, trained on but judged neither by early stopping nor by the calibration; "
            f"add crops from other images of these classes"
        )
    if not metadata.training.get("calibration", {}).get("temperature_fitted", True):
        notes.append(
            "the confidences are not calibrated (temperature 1): every validation crop was "
            "right or of one class, which does not show how sure the model may be"
        )
    return notes


def base_model_splits(init_model: str | None) -> list[dict]:
    """The split records of the model fine-tuned from and of its own base models (see
    :func:`.datasets.split_records`): what the body learnt from, for ``evaluate``."""
    if init_model is None:
        return []
    training = read_metadata(resolve_model_path(init_model)).training
    own = {key: training[key] for key in SPLIT_RECORD_KEYS if key in training}
    return [own, *training.get("base_models", [])]


def oversample_small_domains(
    dataset: CropDataset, train_idx: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Repeat items of small data folders so each makes up ≥ 25 % of the largest one."""
    domains = dataset.domains[train_idx]
    counts = np.bincount(domains)
    largest = counts.max()
    parts = []
    for domain, count in enumerate(counts):
        members = train_idx[domains == domain]
        if count == 0:
            continue
        repeats = max(1, int(np.ceil(MIN_DOMAIN_SHARE * largest / count)))
        parts.append(np.tile(members, repeats))
    return rng.permutation(np.concatenate(parts))


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced weights n / (k · n_c); classes absent from ``labels`` get weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = np.divide(
        len(labels), n_classes * counts, out=np.zeros_like(counts), where=counts > 0
    )
    return {i: float(w) for i, w in enumerate(weights)}


def fit(
    dataset,
    train_idx,
    val_idx,
    config: TrainingConfig,
    out: Path,
    on_epoch_end=None,
    extra_callbacks: list | None = None,
):
    """Build, compile and fit the model with early stopping and checkpointing."""
    import keras

    # before any layer exists: a loaded Dropout layer draws its seed from Python's
    # generator, unseeded in a fresh process (a fine-tuning process's first run differed)
    keras.utils.set_random_seed(config.seed)
    if config.init_model is None:
        model = build_model(
            config.architecture,
            len(dataset.classes),
            config.size,
            normalization=config.normalization,
            mixstyle=config.mixstyle,
            grey_input=config.grey_input,
            seed=config.seed,
        )
    else:
        model = model_to_fine_tune(config.init_model, dataset.classes)
        for layer in model.layers:  # (a head-only fine-tuned model is saved frozen)
            layer.trainable = (
                config.train_body and layer.name != LUMINANCE_LAYER
            ) or layer.name == HEAD_LAYER
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train = make_tf_dataset(
        dataset,
        train_idx,
        config.batch_size,
        augment=True,
        seed=config.seed,
        stain_jitter=config.stain_jitter,
        max_blur_sigma=config.max_blur_sigma,
        hue_jitter=config.hue_jitter,
        lamp_jitter=config.lamp_jitter,
        grey_probability=config.grey_probability,
    )
    val = make_tf_dataset(dataset, val_idx, config.batch_size, augment=False, seed=config.seed)
    checkpoint = out.with_name(f".{out.stem}.checkpoint.weights.h5")
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(
            checkpoint, monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
    ]
    if config.lr_patience > 0:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=LR_CUT_FACTOR,
                patience=config.lr_patience,
                min_lr=config.learning_rate * LR_CUT_FACTOR**3,
            )
        )
    if on_epoch_end is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end))
    callbacks += extra_callbacks or []
    try:
        history = model.fit(
            train,
            validation_data=val,
            epochs=config.epochs,
            class_weight=class_weights(dataset.labels[train_idx], len(dataset.classes)),
            callbacks=callbacks,
            shuffle=False,  # tf.data shuffles
            verbose=2,
        )
        # EarlyStopping restores the best weights only when it stops training early; a run
        # that uses all its epochs would otherwise keep the last epoch's weights.
        if checkpoint.exists():
            model.load_weights(checkpoint)
    finally:
        checkpoint.unlink(missing_ok=True)
    if config.mixstyle:
        model = _without_mixstyle(model, config)
    return model, {k: [float(v) for v in vs] for k, vs in history.history.items()}


def _without_mixstyle(model, config: TrainingConfig):
    """The trained network rebuilt without its MixStyle layers (identity at inference, no
    weights): every other layer, in the same order, gets its trained weights."""
    plain = build_model(
        config.architecture,
        model.output_shape[-1],
        config.size,
        normalization=config.normalization,
        grey_input=config.grey_input,
        seed=config.seed,
    )
    trained = [layer for layer in model.layers if not layer.name.startswith(MIXSTYLE_PREFIX)]
    if [type(layer) for layer in trained] != [type(layer) for layer in plain.layers]:
        raise RuntimeError("the network without MixStyle differs from the trained one")
    for source, target in zip(trained, plain.layers, strict=True):
        target.set_weights(source.get_weights())
    return plain


def predict_dataset(
    model, dataset: CropDataset, batch_size: int, views: int = 1, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Uncalibrated softmax probabilities (N, K) and pooled features (N, D) of a prepared
    dataset, averaged over ``views`` dihedral views (``chunk`` crops at a time: memory
    stays bounded)."""
    if len(dataset.labels) == 0:
        return np.zeros((0, len(dataset.classes)), np.float32), np.zeros((0, 0), np.float32)
    batches = (
        dataset.images[i : i + chunk].astype(np.float32) / 255
        for i in range(0, len(dataset.labels), chunk)
    )
    return predict_over_views(with_features(model), batches, views, batch_size)


def model_to_fine_tune(init_model: str, classes: list[str]):
    """The network of ``init_model`` ready for new data: body kept; softmax head kept when
    ``classes`` equal the model's (same order), else rebuilt for ``classes``, the classes
    the model already knows starting from their trained head weights (new ones at random)."""
    import keras

    path = resolve_model_path(init_model)
    model = load_keras_model(path)
    metadata = read_metadata(path)
    check_network_shape(model, path, metadata)
    head = model.layers[-1]
    if head.name != HEAD_LAYER or not isinstance(head, keras.layers.Dense):
        raise ModelError(
            f"{path}: cannot be fine-tuned: its last layer ({head.name!r}) is not the softmax "
            f"head ({HEAD_LAYER!r}) of a network trained by napari-bloodcell"
        )
    known = metadata.classes
    if known == list(classes):
        return model
    features = head.input
    new_head = keras.layers.Dense(len(classes), activation="softmax", name=HEAD_LAYER)
    tuned = keras.Model(model.input, new_head(features), name=model.name)
    old_kernel, old_bias = head.get_weights()
    kernel, bias = new_head.get_weights()
    for column, name in enumerate(classes):
        if name in known:
            kernel[:, column] = old_kernel[:, known.index(name)]
            bias[column] = old_bias[known.index(name)]
    new_head.set_weights([kernel, bias])
    return tuned


def make_tf_dataset(
    dataset: CropDataset,
    indices: np.ndarray,
    batch_size: int,
    *,
    augment: bool,
    seed: int,
    stain_jitter: float = 0.0,
    max_blur_sigma: float = 0.0,
    hue_jitter: float = 0.05,
    lamp_jitter: float = 0.0,
    grey_probability: float = 0.0,
):
    """Batched tf.data pipeline of (crop in [0, 1], label) of ``dataset``'s items
    ``indices`` (repeats allowed, e.g. oversampling), in that order or, if ``augment``,
    all shuffled anew every epoch and augmented (deterministic: the same seed gives the
    same batches). Each crop is held once; batches are gathered from it by index, so
    repeats and the shuffle cost indices, not copies of crops."""
    import tensorflow as tf

    used, position = np.unique(indices, return_inverse=True)
    images = tf.constant(dataset.images[used])
    labels = tf.constant(dataset.labels[used])
    ds = tf.data.Dataset.from_tensor_slices(position.astype(np.int32))
    if augment:
        ds = ds.shuffle(len(position), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(
        lambda i: (tf.cast(tf.gather(images, i), tf.float32) / 255.0, tf.gather(labels, i)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if augment:
        augmenter = make_augmenter(
            seed, stain_jitter, max_blur_sigma, hue_jitter, lamp_jitter, grey_probability
        )
        # one call at a time: parallel calls would draw from the augmenter's random
        # generators in a different order each run (same seed, other weights); measured
        # no slower on 2 cores, where each call's operations use both already
        ds = ds.map(lambda x, y: (augmenter(x), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def make_augmenter(
    seed: int,
    stain_jitter: float = 0.0,
    max_blur_sigma: float = 0.0,
    hue_jitter: float = 0.05,
    lamp_jitter: float = 0.0,
    grey_probability: float = 0.0,
) -> Callable:
    """Batch augmentation: the seed's (brightness 0.5–1.5, zoom 0.2, shifts 0.15, horizontal
    flip) plus vertical flip, 90° rotations, and per image a hue shift in ± ``hue_jitter``
    (fraction of the hue circle) and a saturation factor in 0.7–1.3; optionally a stain
    cast (per image and channel gain in 1 ± ``stain_jitter``), another lamp (see
    ``TrainingConfig.lamp_jitter``), a Gaussian blur of random sigma in
    [0, ``max_blur_sigma``] px (other microscopes' stain and focus), and with probability
    ``grey_probability`` per image its luminance in place of its colours. Flips, zoom,
    shifts and the colour jitters are drawn per image; the quarter-turn and the blur's
    sigma once per batch. Output in [0, 1]."""
    import keras
    import tensorflow as tf

    geometric = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
            keras.layers.RandomZoom(0.2, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomTranslation(0.15, 0.15, fill_mode="reflect", seed=seed + 2),
        ]
    )
    generator = tf.random.Generator.from_seed(seed)

    # ±3 sigma of the largest blur (at least the ±3 px the default recipe was trained with)
    radius = max(3, int(np.ceil(3 * max_blur_sigma)))

    def blur(images):
        sigma = generator.uniform((), 1e-3, max_blur_sigma)
        offsets = tf.range(-float(radius), radius + 1.0)
        kernel_1d = tf.exp(-(offsets**2) / (2 * sigma**2))
        kernel_1d /= tf.reduce_sum(kernel_1d)
        kernel = tf.tile((kernel_1d[:, None] * kernel_1d[None, :])[:, :, None, None], [1, 1, 3, 1])
        pad = [[0, 0], [radius, radius], [radius, radius], [0, 0]]
        padded = tf.pad(images, pad, mode="REFLECT")
        return tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")

    def lamp(images):
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        gain = tf.exp(generator.uniform((batch, 1, 1, 3), 0.0, lamp_jitter))
        angle = generator.uniform((batch, 1, 1, 1), 0.0, 2 * np.pi)
        rows = tf.reshape(tf.linspace(-0.5, 0.5, height), (1, -1, 1, 1))
        columns = tf.reshape(tf.linspace(-0.5, 0.5, width), (1, 1, -1, 1))
        slope = generator.uniform((batch, 1, 1, 3), -lamp_jitter, lamp_jitter)
        ramp = 1 + slope * (rows * tf.sin(angle) + columns * tf.cos(angle))
        return normalise_colour_tf(tf.clip_by_value(images * gain * ramp, 0.0, 1.0))

    def augment(images):
        images = geometric(images, training=True)
        images = tf.image.rot90(images, k=generator.uniform((), 0, 4, dtype=tf.int32))
        batch = tf.shape(images)[0]
        if lamp_jitter > 0:  # first: its re-normalisation would divide out the gains below
            images = lamp(images)
        brightness = generator.uniform((batch, 1, 1, 1), 0.5, 1.5)
        images = images * brightness
        if stain_jitter > 0:
            images *= generator.uniform((batch, 1, 1, 3), 1 - stain_jitter, 1 + stain_jitter)
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(images, 0.0, 1.0))
        hue = tf.math.floormod(
            hsv[..., 0] + generator.uniform((batch, 1, 1), -hue_jitter, hue_jitter), 1.0
        )
        saturation = hsv[..., 1] * generator.uniform((batch, 1, 1), 0.7, 1.3)
        saturation = tf.clip_by_value(saturation, 0.0, 1.0)
        images = tf.image.hsv_to_rgb(tf.stack([hue, saturation, hsv[..., 2]], axis=-1))
        if max_blur_sigma > 0:
            images = blur(images)
        if grey_probability > 0:
            luminance = tf.tensordot(images, tf.constant(LUMINANCE_WEIGHTS), axes=[[3], [0]])
            turned = generator.uniform((batch, 1, 1, 1)) < grey_probability
            images = tf.where(turned, tf.repeat(luminance[..., None], 3, axis=-1), images)
        return tf.clip_by_value(images, 0.0, 1.0)

    return augment


def normalise_colour_tf(images):
    """:func:`napari_bloodcell.crops.normalise_colour` in TensorFlow, for a batch
    (N, Y, X, C) in [0, 1] inside a tf.data pipeline (same percentiles, interpolated
    linearly as numpy does)."""
    import tensorflow as tf

    low_pct, high_pct = COLOUR_PERCENTILES
    channels = tf.transpose(images, (0, 3, 1, 2))
    per_channel = tf.reshape(channels, (tf.shape(images)[0], tf.shape(images)[3], -1))
    white = _percentile_tf(per_channel, high_pct)[:, None, None, :]
    balanced = _divided_where(images, white, white > MIN_DIVISOR)
    balanced = tf.clip_by_value(balanced, 0.0, 1.0)
    everything = tf.reshape(balanced, (tf.shape(images)[0], -1))
    low = _percentile_tf(everything, low_pct)[:, None, None, None]
    span = 1.0 - low
    stretched = _divided_where(balanced - low, span, span > MIN_DIVISOR)
    return tf.clip_by_value(stretched, 0.0, 1.0)


def _divided_where(numerator, denominator, where):
    """numerator / denominator where ``where`` holds, else 0 (as numpy's ``out=zeros``)."""
    import tensorflow as tf

    safe = tf.where(where, denominator, tf.ones_like(denominator))
    return tf.where(where, numerator / safe, tf.zeros_like(numerator))


def _percentile_tf(values, percent: float):
    """``np.percentile(values, percent, axis=-1)`` (linear interpolation) for a float tensor."""
    import tensorflow as tf

    n = tf.shape(values)[-1]
    position = percent / 100 * tf.cast(n - 1, tf.float32)
    below = tf.cast(tf.floor(position), tf.int32)
    above = tf.minimum(below + 1, n - 1)
    ascending = tf.sort(values, axis=-1)
    fraction = position - tf.cast(below, tf.float32)
    return (1 - fraction) * tf.gather(ascending, below, axis=-1) + fraction * tf.gather(
        ascending, above, axis=-1
    )


def write_learning_curves(history: dict[str, list[float]], stem: Path) -> list[Path]:
    """Loss and accuracy per epoch, train vs validation: ``<stem>.csv`` and ``<stem>.png``."""
    import pandas as pd
    from matplotlib.figure import Figure

    frame = pd.DataFrame(history)
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="epoch")
    # not with_suffix: a model named "run.1" would write run.csv over another file
    csv_path, png_path = stem.with_name(f"{stem.name}.csv"), stem.with_name(f"{stem.name}.png")
    frame.to_csv(csv_path)
    fig = Figure(figsize=(9, 3.5))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if prefix + metric in frame:
                ax.plot(frame.index, frame[prefix + metric], "o-", label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    return [csv_path, png_path]


def describe(result: TrainingResult) -> str:
    """One-paragraph summary of a training run for the terminal."""
    training = result.metadata.training
    return json.dumps(
        {
            "model": str(result.model_path),
            "classes": result.metadata.classes,
            "epochs_run": training["epochs_run"],
            "best_val_loss": round(training["best_val_loss"], 4),
            "seconds": round(result.seconds, 1),
        }
        | ({"notes": notes} if (notes := training_notes(result.metadata)) else {}),
        indent=2,
    )
