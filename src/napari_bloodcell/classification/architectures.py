"""Residual CNN architectures (Keras 3).

* ``coursework`` — the seed network, reproduced exactly: 224×224 input,
  Conv 7×7/2 (64) + BN + ReLU + MaxPool 3×3/2, nine bottleneck blocks with
  projection shortcuts ([64, 64, 128]×3 stride 1, [128, 128, 512]×3 stride 2,
  [256, 256, 1024]×3 stride 2), global average pooling, Dense softmax.
* ``compact`` — a small residual net sized for CPUs: a 3×3 stride-2 stem, 4 stages ×
  2 basic blocks with 16/32/64/128 filters (~0.7 M parameters), 80×80 input by default.
  The strided stem runs the first stage at half the input resolution: the default
  model (80 px) classifies 2,667 crops/s on 2 cores, 20× the seed's network; with a
  stride-1 stem (64 px) it was 7.6× (docs/benchmarks.md).

Models take float crops in [0, 1] (see :mod:`napari_bloodcell.crops`) and end in
a softmax over the classes. Keras is imported inside the builders, never at
import time.
"""

from __future__ import annotations

ARCHITECTURES = ("compact", "coursework")
DEFAULT_INPUT_SIZE = {"compact": 80, "coursework": 224}
"""Input side (px) when none is given; the compact one is the default model's."""
NORMALIZATIONS = ("batch", "group")
HEAD_LAYER = "class_probabilities"
MIXSTYLE_PREFIX = "mixstyle_"
"""Names of the MixStyle layers of a network being trained (``mixstyle_1`` …)."""
LUMINANCE_LAYER = "luminance"
"""A colour-blind network's first layer: frozen, also when fine-tuned."""
LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G, B."""
COMPACT_BN_MOMENTUM = 0.9
"""Keras' default 0.99 leaves the moving statistics far from the batch ones after the
few hundred steps of a CPU training run, so validation swings wildly; 0.9 settles."""


def build_model(
    architecture: str,
    n_classes: int,
    input_size: int | None = None,
    *,
    normalization: str = "batch",
    mixstyle: float = 0.0,
    grey_input: bool = False,
    seed: int = 0,
):
    """Build an uncompiled Keras model.

    Parameters
    ----------
    architecture : ``"compact"`` or ``"coursework"``.
    n_classes : size of the softmax output.
    input_size : side of the square RGB input in pixels (default per architecture).
    normalization : ``"batch"`` (BatchNorm) or ``"group"`` (GroupNorm), compact only.
    mixstyle : probability per batch of MixStyle after each of the first three stages
        (compact only; 0: none). For training only: the layers are not built-in, so a
        network to save is built without them (see :mod:`.style_mixing`).
    grey_input : a colour-blind network: a frozen 1×1 convolution first replaces every
        channel by the luminance (a diagnostic: is colour what differs between microscopes?).
    seed : seed for weight initialisation.
    """
    import keras

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")
    keras.utils.set_random_seed(seed)
    size = input_size or DEFAULT_INPUT_SIZE[architecture]
    inputs = keras.Input((size, size, 3), name="crop")
    pixels = _luminance(inputs) if grey_input else inputs
    if architecture == "coursework":
        if mixstyle:
            raise ValueError("MixStyle is built into the compact architecture only")
        features = _coursework_body(pixels)
    else:
        features = _compact_body(pixels, normalization, mixstyle, seed)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name=HEAD_LAYER)(features)
    return keras.Model(inputs, outputs, name=f"bloodcell_{architecture}")


def _luminance(inputs):
    """(N, Y, X, 3) RGB → the luminance in all three channels, by a frozen 1×1 convolution."""
    import keras
    import numpy as np

    layer = keras.layers.Conv2D(3, 1, use_bias=False, trainable=False, name=LUMINANCE_LAYER)
    grey = layer(inputs)
    layer.set_weights([np.tile(np.array(LUMINANCE_WEIGHTS, "float32")[:, None], 3)[None, None]])
    return grey


def _norm(x, normalization: str):
    import keras

    if normalization == "group":
        return keras.layers.GroupNormalization(groups=min(8, x.shape[-1]))(x)
    if normalization != "batch":
        raise ValueError(
            f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}"
        )
    return keras.layers.BatchNormalization(momentum=COMPACT_BN_MOMENTUM)(x)


def _coursework_body(inputs):
    """Seed network: stem + 3 stages of 3 bottleneck blocks + global average pooling."""
    import keras
    from keras import layers

    x = layers.Conv2D(64, 7, strides=2, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for filters, stride in (([64, 64, 128], 1), ([128, 128, 512], 2), ([256, 256, 1024], 2)):
        for _ in range(3):
            x = _bottleneck_block(x, filters, stride)
    return keras.layers.GlobalAveragePooling2D()(x)


def _bottleneck_block(x, filters: list[int], stride: int):
    """1×1 conv (stride) → 3×3 conv → 1×1 conv, each with BN; 1×1 projection shortcut; add; ReLU.

    As in the seed, every block (not only the first of a stage) uses the given
    stride and a projection shortcut.
    """
    from keras import layers

    f1, f2, f3 = filters
    shortcut = layers.Conv2D(f3, 1, strides=stride)(x)
    shortcut = layers.BatchNormalization()(shortcut)
    y = layers.Conv2D(f1, 1, strides=stride)(x)
    y = layers.BatchNormalization()(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(f2, 3, padding="same")(y)
    y = layers.BatchNormalization()(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(f3, 1)(y)
    y = layers.BatchNormalization()(y)
    y = layers.Add()([y, shortcut])
    return layers.Activation("relu")(y)


def _compact_body(inputs, normalization: str, mixstyle: float = 0.0, seed: int = 0):
    """Stem 3×3/2 conv (16) + 4 stages × 2 basic residual blocks (16/32/64/128) + GAP + dropout,
    with MixStyle after the first three stages when ``mixstyle`` > 0."""
    from keras import layers

    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = _norm(x, normalization)
    x = layers.Activation("relu")(x)
    for stage, filters in enumerate((16, 32, 64, 128)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, stride, normalization)
        if mixstyle > 0 and stage < 3:
            from .style_mixing import MixStyle

            x = MixStyle(mixstyle, seed=seed + stage, name=f"{MIXSTYLE_PREFIX}{stage + 1}")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dropout(0.3)(x)


def _basic_block(x, filters: int, stride: int, normalization: str):
    """Two 3×3 convs with normalisation; projection shortcut when the shape changes."""
    from keras import layers

    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
        shortcut = _norm(shortcut, normalization)
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = _norm(y, normalization)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = _norm(y, normalization)
    y = layers.Add()([y, shortcut])
    return layers.Activation("relu")(y)
