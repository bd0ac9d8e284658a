"""MixStyle: feature-statistics mixing between crops, a domain-generalisation regulariser.

Zhou, Yang, Qiao & Xiang, *Domain Generalization with MixStyle*, ICLR 2021. A
microscope's stain, lamp and camera show up in a CNN's early feature maps as per-channel
means and standard deviations (the "style"). During training, with probability
``probability`` per batch, each crop's style is replaced by a random mixture of its own
and that of another crop of the batch (weight λ ~ Beta(α, α)), so the network cannot lean
on one microscope's style. At inference the layer is the identity.

The layer only exists in the network that is trained: :func:`.training.fit` copies the
weights into the same network built without it (MixStyle has no weights), so saved model
files hold built-in Keras layers only and load in safe mode. This module imports Keras
at import time: import it only where a network is built.
"""

from __future__ import annotations

import keras
from keras import ops

MIXSTYLE_ALPHA = 0.1
"""Beta(α, α) of the mixing weight, the paper's value: λ is mostly near 0 or 1."""
_EPSILON = 1e-6


class MixStyle(keras.layers.Layer):
    """Mix per-instance channel statistics of (N, Y, X, C) feature maps during training."""

    def __init__(
        self,
        probability: float = 0.5,
        alpha: float = MIXSTYLE_ALPHA,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.probability = probability
        self.alpha = alpha
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # Beta sampling has no XLA kernel: keep Keras' "auto" jit_compile (XLA on a GPU) off
        self.supports_jit = False

    def call(self, x, training: bool | None = None):
        if not training or self.probability <= 0:
            return x
        batch = ops.shape(x)[0]
        mean = ops.stop_gradient(ops.mean(x, axis=(1, 2), keepdims=True))
        std = ops.stop_gradient(ops.sqrt(ops.var(x, axis=(1, 2), keepdims=True) + _EPSILON))
        weight = keras.random.beta(
            (batch, 1, 1, 1), self.alpha, self.alpha, seed=self.seed_generator, dtype=x.dtype
        )
        partner = keras.random.shuffle(ops.arange(batch), seed=self.seed_generator)
        mixed_mean = weight * mean + (1 - weight) * ops.take(mean, partner, axis=0)
        mixed_std = weight * std + (1 - weight) * ops.take(std, partner, axis=0)
        mixed = (x - mean) / std * mixed_std + mixed_mean
        apply = keras.random.uniform((), seed=self.seed_generator) < self.probability
        return ops.where(apply, mixed, x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config() | {
            "probability": self.probability,
            "alpha": self.alpha,
            "seed": self.seed,
        }
