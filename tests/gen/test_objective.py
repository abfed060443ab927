"""The per-image Gen objective through the model hook."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.gen import objective
from ouromamba_jax.gen.spec import GenSpec
from tests import random_init
from tests.interpreted import CPU_FAST_COMPILE

SPEC = GenSpec(num_positives=4, pse_weight=0.5)


def _losses(model, params, images, spec=SPEC):
  gen_model = objective.generation_model(model, spec)
  return objective.per_image_losses(gen_model, params, images, jnp.arange(len(images)), spec)


def test_gradients_reach_the_pixels(tiny):
  model, params = tiny
  gen_model = objective.generation_model(model, SPEC)
  images = jnp.asarray(random_init.normal(0, (2, 32, 32, 3)))
  labels = jnp.array([3, 7])
  terms = ('contrastive', 'pse', 'output', 'total')

  def sums(x):
    out = objective.per_image_losses(gen_model, params, x, labels, SPEC)
    return jnp.stack([jnp.sum(out[t]) for t in terms])

  grads = np.asarray(jax.jit(jax.jacrev(sums))(images))  # (terms, images, H, W, C)
  for term, grad in zip(terms, grads):
    assert np.all(np.isfinite(grad)), term
    assert np.all(np.abs(grad).reshape(2, -1).max(axis=1) > 0), term


def test_total_combines_the_weighted_terms(tiny):
  model, params = tiny
  spec = dataclasses.replace(SPEC, contrastive_weight=0.7, output_weight=2.0)
  out = _losses(model, params, jnp.asarray(random_init.normal(1, (2, 32, 32, 3))), spec)
  np.testing.assert_allclose(out['total'], 0.7 * out['contrastive'] + 0.5 * out['pse']
                             + 2.0 * out['output'], rtol=1e-6)
  assert all(v.shape == (2,) for v in out.values())


def test_loss_blocks_select_blocks(tiny):
  """L_C over all blocks is the mean of the per-block values; L_PSE is their sum."""
  model, params = tiny
  images = jnp.asarray(random_init.normal(2, (2, 32, 32, 3)))
  per_block = [_losses(model, params, images, dataclasses.replace(SPEC, loss_blocks=(b,)))
               for b in range(model.depth)]
  both = _losses(model, params, images)
  np.testing.assert_allclose(both['contrastive'],
                             np.mean([o['contrastive'] for o in per_block], axis=0), rtol=1e-5)
  np.testing.assert_allclose(both['pse'], np.sum([o['pse'] for o in per_block], axis=0),
                             rtol=1e-5)


def test_output_only_objective_runs_without_the_hook(tiny):
  model, params = tiny
  spec = GenSpec(contrastive_weight=0.0)
  assert objective.generation_model(model, spec).state_feature_fn is None
  out = _losses(model, params, jnp.zeros((2, 32, 32, 3)), spec)
  np.testing.assert_array_equal(out['contrastive'], 0.0)
  np.testing.assert_allclose(out['total'], out['output'])


@pytest.mark.parametrize('change,message', [
    (dict(neighbourhood=4), 'neighbourhood'),
    (dict(num_positives=15), 'num_positives'),
    (dict(loss_blocks=(2,)), 'loss_blocks'),
    (dict(feature='attention'), 'feature'),
    (dict(temperature=0.0), 'temperature'),
    (dict(readout_implementation='cuda'), 'readout_implementation'),
    (dict(feature='state', readout_implementation='triton'), "needs gen.feature='readout'"),
    (dict(contrastive_weight=0.0, pse_weight=0.0, output_weight=0.0), 'all loss weights'),
    (dict(pse_bandwidth=0.0), 'pse_bandwidth must be > 0'),
    (dict(pse_grid_points=1), 'pse_grid_points >= 2'),
])
def test_validate_names_the_bad_setting(tiny, change, message):
  with pytest.raises(ValueError, match=message):
    objective.check_objective(dataclasses.replace(SPEC, **change), tiny[0])


def test_readout_kernel_and_scan_order_states_give_the_xla_token_order_losses(tiny):
  """The Pallas patched-readout kernel (interpret mode on CPU) in the Gen objective gives the
  XLA readout's losses and pixel gradients; and Gen hands the backward direction's states over
  unflipped (state_order='scan', the default) with the losses and pixel gradients of flipped
  (token-order) states, for both readouts. Four jitted programs (op by op is minutes)."""
  model, params = tiny
  images = jnp.asarray(random_init.normal(6, (2, 32, 32, 3)))

  def total(readout, order):
    spec = dataclasses.replace(SPEC, readout_implementation=readout)
    gen_model = objective.generation_model(model, spec)
    assert gen_model.state_order == 'scan'
    gen_model = gen_model.clone(state_order=order)
    fn = lambda x: jnp.sum(objective.per_image_losses(gen_model, params, x, jnp.array([1, 2]),
                                                      spec)['total'])
    return jax.jit(jax.value_and_grad(fn), compiler_options=CPU_FAST_COMPILE)(images)

  runs = {(r, o): total(r, o) for r in ('xla', 'triton') for o in ('token', 'scan')}
  want, want_grad = runs['xla', 'scan']
  got, grad = runs['triton', 'scan']
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-3, atol=1e-6)
  for readout in ('xla', 'triton'):
    (want, want_grad), (got, grad) = runs[readout, 'token'], runs[readout, 'scan']
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6, err_msg=readout)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-4, atol=1e-7,
                               err_msg=readout)
