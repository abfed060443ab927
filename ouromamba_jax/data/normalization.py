"""Input normalisation: uint8 pixels -> the model's input space, with a dataset's MEAN / STD.

Each dataset module exports its MEAN and STD; this is the one function that applies them
(evaluation, training and real-image calibration all go through it; jittable).
"""
from __future__ import annotations

import jax.numpy as jnp


def normalize(images_uint8, mean, std):
  """(x / 255 - mean) / std per channel, float32."""
  x = jnp.asarray(images_uint8).astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
