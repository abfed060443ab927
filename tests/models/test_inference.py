"""models.inference: trees laid out for the batch a forward runs."""
import jax
import numpy as np
import pytest

from ouromamba_jax.models import build_model
from ouromamba_jax.models import inference
from ouromamba_jax.models import vim
from ouromamba_jax.models.vim import VisionMamba


def _tiny_vim(**fields):
  model = VisionMamba(img_size=32, patch_size=8, depth=2, d_model=16, num_classes=3,
                      scan_implementation='xla', **fields)
  images = np.random.default_rng(4).standard_normal((1, 32, 32, 3)).astype(np.float32)
  return model, jax.jit(model.init)(jax.random.key(0), images)['params'], images


def test_vim_directions_are_stacked_where_the_forward_vmaps_them(monkeypatch):
  """The GPU's rule (directions vmapped below DIRECTIONS_AS_ONE_BATCH_BELOW samples) decides;
  a model's own batch_directions overrides it; the prepared tree's logits are the plain
  tree's bit for bit."""
  monkeypatch.setattr(vim, 'directions_as_one_batch',
                      lambda setting, batch: batch < 64 if setting is None else bool(setting))
  model, params, images = _tiny_vim()
  small = inference.prepared_for_inference(model, params, batch=1)
  assert vim.holds_stacked_directions(small)
  assert inference.prepared_for_inference(model, params, batch=64) is params
  looped = model.clone(batch_directions=False)
  assert inference.prepared_for_inference(looped, params, batch=1) is params
  assert inference.prepared_for_inference(model, small, batch=1) == small  # prepared already
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x))
  np.testing.assert_array_equal(forward(small, images), forward(params, images))


def test_other_families_and_the_cpu_rule_keep_the_tree():
  model, params, _ = _tiny_vim()
  assert inference.prepared_for_inference(model, params, batch=1) is params  # CPU: looped
  vmamba = build_model('vmamba_t')
  tree = {'anything': np.zeros(2)}
  assert inference.prepared_for_inference(vmamba, tree, batch=1) is tree


def test_a_batch_below_one_is_refused():
  model, params, _ = _tiny_vim()
  with pytest.raises(ValueError, match='batch must be >= 1'):
    inference.prepared_for_inference(model, params, batch=0)
