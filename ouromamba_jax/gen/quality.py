"""A quick check that the synthetic images carry class information for the FP model.

The FP model should predict the target class on most synthetic images (the output loss asks
for it) and on about 1/num_classes of plain Gaussian noise images; a small gap means the images
did not pick up the targets (bad weights, too few iterations, too high a learning rate).
"""
from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np


def predict(model, params, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
  """FP logits for (N, H, W, C) normalised images, in batches: (N, num_classes) float32."""
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x))
  out = [np.asarray(apply(params, jnp.asarray(images[i:i + batch_size])), np.float32)
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out)


def top1_agreement(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def mean_target_probability(logits: np.ndarray, labels: np.ndarray) -> float:
  probs = jax.nn.softmax(jnp.asarray(logits), axis=-1)
  return float(jnp.mean(jnp.take_along_axis(probs, jnp.asarray(labels)[:, None], axis=-1)))


def quality_report(model, params, images: np.ndarray, labels: np.ndarray, *, seed: int = 0,
                   noise_std: float = 1.0, batch_size: int = 64
                   ) -> Iterator[tuple[str, float]]:
  """Yields (name, value): top-1 agreement with the targets and mean target probability, for
  the synthetic images and for Gaussian noise of the same shape (N(0, noise_std) in the
  normalised space, the generator's starting point) with the same targets."""
  labels = np.asarray(labels)
  noise = noise_std * np.asarray(
      jax.random.normal(jax.random.key(seed), images.shape, jnp.float32))
  for name, x in (('synthetic', images), ('noise', noise)):
    logits = predict(model, params, x, batch_size)
    yield f'{name}_top1_agreement', top1_agreement(logits, labels)
    yield f'{name}_mean_target_prob', mean_target_probability(logits, labels)
