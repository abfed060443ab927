"""The scanned forward: one block traced per run of alike blocks, the same logits and sown
state features as the unrolled blocks (`scan_blocks=False`), float and quantized."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax import quant
from ouromamba_jax.models import build_model
from ouromamba_jax.models import vim
from ouromamba_jax.quant import config as qconfig
from ouromamba_jax.quant import presets
from ouromamba_jax.quant import qtypes
from tests import random_init

DEPTH = 3
QUANTIZED_RTOL = 1e-6  # fusion across block boundaries of the unrolled program may differ


@pytest.fixture(scope='module')
def tiny():
  model = build_model('vim_t', img_size=32, patch_size=8, depth=DEPTH, d_model=32,
                      num_classes=10, scan_implementation='associative')  # no inner lax.scan
  images = jnp.asarray(random_init.normal(0, (4, 32, 32, 3)))
  # the same params (init draws them alike for every scan), from a program that compiles faster
  return model, jax.jit(sequential(model).init)(jax.random.key(1), images)['params'], images


def sequential(model):
  """`model` on the sequential scan (`lax.scan` over time): its programs compile ~2x faster
  than the associative scan's. For what the scan implementation does not change: calibrating
  a tree, and forwards whose jaxpr's scans are not counted."""
  return model.clone(scan_implementation='sequential')


def rtn_w4a4(model, params, images, *rules):
  """RTN W4A4 (integer mode); `rules` go before the preset's (first match decides). Calibrated
  on the sequential scan (the tree's structure, what these tests use, is the same)."""
  spec = presets.preset('w4a4')
  spec = dataclasses.replace(spec, rules=tuple(rules) + spec.rules,
                             calib=dataclasses.replace(spec.calib, micro_batch=4))
  return quant.quantize(sequential(model), params, images, spec, method='rtn', mode='int',
                        log=lambda _: None)[0]


def block_trees(model, params):
  return [params[f'layers_{i}'] for i in range(model.depth)]


def scans(model, params, images):
  """The scan equations of the jitted forward's jaxpr."""
  jaxpr = jax.make_jaxpr(model.apply)({'params': params}, images)
  return [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'scan']


def logits(model, params, images):
  return np.asarray(jax.jit(model.apply)({'params': params}, images))


def test_float_forward_is_one_scan_over_all_blocks_and_equals_the_unrolled_bit_for_bit(tiny):
  model, params, images = tiny
  assert [e.params['length'] for e in scans(model, params, images)] == [DEPTH]
  assert not scans(model.clone(scan_blocks=False), params, images)
  np.testing.assert_array_equal(logits(model, params, images),
                                logits(model.clone(scan_blocks=False), params, images))


@pytest.fixture(scope='module')
def w4a4(tiny):
  return rtn_w4a4(*tiny)


@pytest.mark.parametrize('mode', ['fake', 'int'])
def test_quantized_forward_equals_the_unrolled(tiny, w4a4, mode):
  model, _, images = tiny
  qparams = quant.set_mode(w4a4, mode)
  assert [len(run) for run in vim.block_runs(block_trees(model, qparams))] == [DEPTH]
  np.testing.assert_allclose(logits(model, qparams, images),
                             logits(model.clone(scan_blocks=False), qparams, images),
                             rtol=QUANTIZED_RTOL, atol=1e-6)


def test_a_block_quantized_apart_makes_its_own_run(tiny):
  model, params, images = tiny
  float_first = rtn_w4a4(model, params, images, qconfig.QuantRule(r'layers_0/.*', None))
  runs = vim.block_runs(block_trees(model, float_first))
  assert [len(run) for run in runs] == [1, DEPTH - 1]   # block 0 float, the rest W4A4
  # A lone block is applied as is: one scan, over the other blocks.
  assert [e.params['length'] for e in scans(model, float_first, images)] == [DEPTH - 1]
  np.testing.assert_allclose(logits(model, float_first, images),
                             logits(model.clone(scan_blocks=False), float_first, images),
                             rtol=QUANTIZED_RTOL, atol=1e-6)


def test_runs_split_on_static_fields_shapes_and_dtypes():
  quantizer = lambda bits: qtypes.ActQuantizer(jnp.ones(3), None, qconfig.ActSpec(bits=bits))
  a = {'w': jnp.zeros((2, 3)), 'q': quantizer(4)}
  trees = [a, a, {**a, 'w': jnp.zeros((2, 4))}, a, {**a, 'q': quantizer(8)}, a,
           {**a, 'w': jnp.zeros((2, 3), jnp.int8)}, a]
  assert [len(run) for run in vim.block_runs(trees)] == [2, 1, 1, 1, 1, 1, 1]
  assert vim.block_runs([a, a, a])[0] == [a, a, a]


def features(states, delta, c_mat):
  """A per-block, per-direction value of every hook input (so any mix-up shows)."""
  return {'states': jnp.mean(states, axis=(1, 3)), 'delta': jnp.sum(delta, axis=1),
          'c': c_mat[:, -1]}


def test_sown_state_features_keep_their_per_block_paths_and_values(tiny):
  """The scanned forward, with and without remat, against the unrolled one (without: remat
  only recomputes the forward inside the backward). On the sequential scan (no scans counted
  here; its gradients compile ~2x faster than the associative scan's)."""
  model, params, images = tiny
  hooked = sequential(model).clone(state_feature_fn=features)

  def run(m):
    def loss(x):
      out, state = m.apply({'params': params}, x, mutable=['intermediates'])
      inter = state['intermediates']
      feats = sum(jnp.sum(inter[f'layers_{i}']['mixer'][f'state_features_{d}'][0]['states'])
                  for i in range(DEPTH) for d in ('forward', 'backward'))
      return jnp.sum(out) + feats, (out, inter)
    return jax.jit(jax.grad(loss, has_aux=True))(images)

  grad_ref, (out_ref, inter_ref) = run(hooked.clone(scan_blocks=False))
  for remat in (False, True):
    grad, (out, inter) = run(hooked.clone(remat=remat))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out_ref))
    assert jax.tree.structure(inter) == jax.tree.structure(inter_ref)
    jax.tree.map(np.testing.assert_array_equal, inter, inter_ref)
    assert set(inter) == {f'layers_{i}' for i in range(DEPTH)}
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_ref), rtol=1e-5, atol=1e-7,
                               err_msg=f'remat={remat}')


def test_init_builds_the_per_block_tree(tiny):
  model, params, _ = tiny
  assert {k for k in params if k.startswith('layers_')} == {f'layers_{i}' for i in range(DEPTH)}
  unrolled = jax.jit(model.clone(scan_blocks=False).init)(jax.random.key(1), tiny[2])['params']
  jax.tree.map(np.testing.assert_array_equal, params, unrolled)
