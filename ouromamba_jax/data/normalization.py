"""Input normalisation: uint8 pixels -> the model's input space, with a dataset's MEAN / STD.

Each dataset module exports its MEAN and STD; this is the one function that applies them
(evaluation, training and real-image calibration all go through it; jittable), and
`denormalize` is its inverse for pictures.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def normalize(images_uint8, mean, std):
  """(x / 255 - mean) / std per channel, float32."""
  x = jnp.asarray(images_uint8).astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def denormalize(images, mean, std) -> np.ndarray:
  """Normalised NHWC float images -> uint8 pixels in [0, 255] (host numpy, for PNGs)."""
  pixels = np.asarray(images, np.float32) * np.asarray(std, np.float32) + np.asarray(
      mean, np.float32)
  return np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)


def renormalize(images, mean, std, new_mean, new_std) -> np.ndarray:
  """Normalised NHWC images re-expressed in another normalisation (same pixels), so a model
  trained with other statistics sees the picture it would have seen; float32, no clipping."""
  pixels = np.asarray(images, np.float32) * np.asarray(std, np.float32) + np.asarray(
      mean, np.float32)
  return (pixels - np.asarray(new_mean, np.float32)) / np.asarray(new_std, np.float32)
