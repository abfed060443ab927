"""inference.prepared_for_inference: trees prepared for the batch a served forward runs."""
import jax
import numpy as np
import pytest

from ouromamba_jax import inference
from ouromamba_jax.models import build_model
from ouromamba_jax.models import vim
from ouromamba_jax.models.vim import VisionMamba
from ouromamba_jax.quant import qtypes
from tests.quant import coarse


def _tiny_vim(**fields):
  model = VisionMamba(img_size=32, patch_size=8, depth=2, d_model=16, num_classes=3,
                      scan_implementation='xla', **fields)
  images = np.random.default_rng(4).standard_normal((1, 32, 32, 3)).astype(np.float32)
  return model, jax.jit(model.init)(jax.random.key(0), images)['params'], images


def _same_leaves(a, b) -> bool:
  return (jax.tree.structure(a) == jax.tree.structure(b)
          and all(x is y for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def test_vim_directions_are_stacked_where_the_forward_vmaps_them(monkeypatch):
  """The GPU's rule (directions vmapped below DIRECTIONS_AS_ONE_BATCH_BELOW samples) decides;
  a model's own batch_directions overrides it; the prepared tree's logits are the plain
  tree's bit for bit."""
  monkeypatch.setattr(vim, 'directions_as_one_batch',
                      lambda setting, batch: batch < 64 if setting is None else bool(setting))
  model, params, images = _tiny_vim()
  small = inference.prepared_for_inference(model, params, batch=1)
  assert vim.holds_stacked_directions(small)
  assert _same_leaves(inference.prepared_for_inference(model, params, batch=64), params)
  looped = model.clone(batch_directions=False)
  assert _same_leaves(inference.prepared_for_inference(looped, params, batch=1), params)
  assert _same_leaves(inference.prepared_for_inference(model, small, batch=1), small)
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x))
  np.testing.assert_array_equal(forward(small, images), forward(params, images))


def test_parameter_sites_are_folded_with_the_same_logits():
  """A quantized tree's A/D sites come back folded (`quant.fold_parameter_sites`), for every
  family; the logits are the stored tree's bit for bit."""
  model, params, images = _tiny_vim()
  qparams, _ = coarse.quantize((model, params, np.repeat(images, 2, axis=0)), 'w4a4', mode='int')
  served = inference.prepared_for_inference(model, qparams, batch=1)
  mixer = served['layers_0']['mixer']
  assert isinstance(mixer['A_quantizer'], qtypes.FoldedSite)
  assert isinstance(mixer['D_b_quantizer'], qtypes.FoldedSite)
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x))
  np.testing.assert_array_equal(forward(served, images), forward(qparams, images))


def test_other_families_keep_their_layout():
  model, params, _ = _tiny_vim()
  assert _same_leaves(inference.prepared_for_inference(model, params, batch=1), params)  # CPU
  vmamba = build_model('vmamba_t')
  tree = {'anything': np.zeros(2)}
  assert _same_leaves(inference.prepared_for_inference(vmamba, tree, batch=1), tree)


def test_a_batch_below_one_is_refused():
  model, params, _ = _tiny_vim()
  with pytest.raises(ValueError, match='batch must be >= 1'):
    inference.prepared_for_inference(model, params, batch=0)
