"""On-device augmentation: random crop with zero padding and horizontal flip, jittable."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def random_crop_flip(key, images, pad: int, flip: bool = True):
  """images: (B, H, W, C). Pads by `pad` with zeros, crops back at a random offset, flips."""
  b, h, w, _ = images.shape
  k_off, k_flip = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(k_off, (b, 2), 0, 2 * pad + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

  out = jax.vmap(crop)(padded, offsets)
  if flip:
    do_flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    out = jnp.where(do_flip, out[:, :, ::-1], out)
  return out
