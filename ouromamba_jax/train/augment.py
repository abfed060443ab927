"""On-device augmentation, jittable: random crop with zero padding + flip (the training
recipe), and random-resized-crop + flip (the official calibration batch's transform)."""
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


def random_resized_crop_flip(key, images, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                             flip: bool = True):
  """images: (B, H, W, C). timm's train-time RandomResizedCrop + horizontal flip (what the
  official calibration applies to its batch): per image a crop of area fraction U(scale) and
  log-uniform aspect `ratio`, clipped to the image (timm retries 10 times, then center-crops),
  resized back to (H, W) bicubically."""
  b, h, w, _ = images.shape
  k_area, k_ratio, k_y, k_x, k_flip = jax.random.split(key, 5)
  area = jax.random.uniform(k_area, (b,), minval=scale[0], maxval=scale[1]) * h * w
  log_r = jax.random.uniform(k_ratio, (b,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
  crop_w = jnp.clip(jnp.sqrt(area * jnp.exp(log_r)), 1.0, w)
  crop_h = jnp.clip(jnp.sqrt(area / jnp.exp(log_r)), 1.0, h)
  y0 = jax.random.uniform(k_y, (b,)) * (h - crop_h)
  x0 = jax.random.uniform(k_x, (b,)) * (w - crop_w)

  def resize(img, ch, cw, y, x):
    s = jnp.stack([h / ch, w / cw])
    return jax.image.scale_and_translate(img, img.shape, (0, 1), s, -jnp.stack([y, x]) * s,
                                         method='cubic')

  out = jax.vmap(resize)(images, crop_h, crop_w, y0, x0)
  if flip:
    do_flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    out = jnp.where(do_flip, out[:, :, ::-1], out)
  return out
