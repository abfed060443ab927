"""Shared tiny-model fixtures for the Gen tests (a 2-block Vim on a 4x4 patch grid)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.gen import objective
from ouromamba_jax.gen.spec import GenSpec
from ouromamba_jax.models import build_model

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiny_model(**overrides):
  fields = dict(img_size=32, patch_size=8, depth=2, d_model=32, num_classes=10)
  fields.update(overrides)
  return build_model('vim_t', **fields)


@pytest.fixture(scope='session')
def tiny():
  """(model, params) with random weights; 16 patches, class token at index 8."""
  model = tiny_model()
  images = jax.numpy.zeros((1, 32, 32, 3))
  params = jax.jit(model.init)(jax.random.key(0), images)['params']
  return model, params


def tiny_gen_spec(**overrides) -> GenSpec:
  fields = dict(num_images=4, images_per_step=2, iterations=6, num_positives=4, log_every=2,
                checkpoint_every=2, warmup_fraction=0.0, lr=0.1, mean=IMAGENET_MEAN,
                std=IMAGENET_STD)
  fields.update(overrides)
  return GenSpec(**fields)


def check_state_losses(model, params, spec, images):
  """The hooked objective on `images` (2 of them): every term finite per image, L_C > 0, the
  total their weighted sum (pse_weight 0.5), and L_C's gradient reaching every image's pixels."""
  objective.check_objective(spec, model)
  gen_model = objective.generation_model(model, spec)
  labels = jnp.array([1, 3])

  def contrastive(x):
    out = objective.per_image_losses(gen_model, params, x, labels, spec)
    return jnp.sum(out['contrastive']), out

  (_, out), grad = jax.jit(jax.value_and_grad(contrastive, has_aux=True))(images)
  for term, value in out.items():
    assert value.shape == (2,) and np.all(np.isfinite(value)), term
  assert np.all(out['contrastive'] > 0)
  np.testing.assert_allclose(out['total'], out['contrastive'] + 0.5 * out['pse'] + out['output'],
                             rtol=1e-6)
  assert np.all(np.isfinite(grad))
  assert np.all(np.abs(np.asarray(grad)).reshape(2, -1).max(axis=1) > 0)
