"""Augmentations: the recipe's crop + flip, and the calibration batch's random-resized-crop."""
import jax
import jax.numpy as jnp
import numpy as np

from ouromamba_jax.train import augment


def _images():
  return jax.random.normal(jax.random.key(0), (4, 16, 16, 3))


def test_a_full_crop_without_flip_is_the_identity():
  images = _images()
  out = augment.random_resized_crop_flip(jax.random.key(1), images, scale=(1.0, 1.0),
                                         ratio=(1.0, 1.0), flip=False)
  np.testing.assert_allclose(np.asarray(out), np.asarray(images), atol=1e-5)


def test_crops_zoom_in_flip_and_are_seeded():
  images = _images()
  out = augment.random_resized_crop_flip(jax.random.key(1), images)
  assert out.shape == images.shape and bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_array_equal(out, augment.random_resized_crop_flip(jax.random.key(1), images))
  assert not np.allclose(out, augment.random_resized_crop_flip(jax.random.key(2), images))
  # A zoom-in of white noise is smoother than the noise: neighbouring pixels correlate.
  corr = lambda x: np.corrcoef(np.asarray(x)[:, :, 1:].ravel(), np.asarray(x)[:, :, :-1].ravel())[0, 1]
  assert corr(out) > corr(images) + 0.2
  # A left-right ramp keeps its direction unless flipped; both happen over 64 images.
  ramp = jnp.broadcast_to(jnp.linspace(-1, 1, 16)[None, None, :, None], (64, 16, 16, 1))
  flipped = np.asarray(augment.random_resized_crop_flip(jax.random.key(3), ramp))
  rising = (flipped[:, 8, -1, 0] > flipped[:, 8, 0, 0]).sum()
  assert 10 < rising < 54
