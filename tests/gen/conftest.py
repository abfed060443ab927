"""Shared tiny-model fixtures for the Gen tests (a 2-block Vim on a 4x4 patch grid)."""
import jax
import pytest

from configs import common
from ouromamba_jax.models import build_model


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


def tiny_gen_config(**overrides):
  c = common.gen_config()
  c.num_images = 4
  c.images_per_step = 2
  c.iterations = 6
  c.num_positives = 4
  c.log_every = 2
  c.checkpoint_every = 2
  c.warmup_fraction = 0.0
  c.lr = 0.1
  c.update(overrides)
  return c
