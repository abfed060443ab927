"""The pass: capture of site inputs, initial quantized tree, modes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.quant import config
from ouromamba_jax.quant import qtypes
from ouromamba_jax.quant import rewrite
from ouromamba_jax.quant import rules


def test_capture_reaches_every_site_and_changes_nothing(tiny, apply_fn):
  model, params, images = tiny
  sites = rules.find_sites(model, params, images[:1])
  paths = [s.path for s in sites if s.kind != 'weight']
  run = jax.jit(lambda p, x: rewrite.capture(lambda t, x: model.apply({'params': t}, x),
                                             p, paths, x))
  logits, stats = run(params, images[:2])
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(apply_fn(params, images[:2])))
  assert set(stats) == set(paths)
  assert stats['layers_0/mixer/in_proj/input_quantizer'].shape == (2, 17, 32)
  assert stats['layers_1/mixer/delta_b_quantizer'].shape == (2, 17, 64)
  assert stats['layers_1/mixer/B_quantizer'].shape == (2, 17, 16)
  assert stats['layers_0/mixer/A_b_quantizer'].shape == (64, 16)
  assert stats['head/input_quantizer'].shape == (2, 32)
  np.testing.assert_allclose(np.asarray(stats['layers_0/mixer/A_b_quantizer']),
                             -np.exp(np.asarray(params['layers_0']['mixer']['A_b_log'])),
                             rtol=1e-6)


def test_capture_rejects_unreached_sites(tiny):
  model, params, images = tiny
  run = jax.jit(lambda p, x: rewrite.capture(lambda t, x: model.apply({'params': t}, x), p,
                                             ['layers_0/mixer/conv1d/input_quantizer'], x))
  with pytest.raises(ValueError, match='never reached'):   # while tracing: nothing compiles
    run(params, images[:1])


def test_rewrite_then_modes_agree(tiny, apply_fn, w4a4_initial):
  _, params, images = tiny
  plan, _, qparams = w4a4_initial
  leaves = rewrite.quantized_leaves(qparams)
  assert set(leaves) == set(plan)
  assert isinstance(leaves['layers_0/mixer/in_proj/kernel'], qtypes.FakeQuantWeight)
  assert leaves['layers_0/mixer/A_quantizer'].inlier_scale.shape == (1,)
  assert leaves['layers_0/mixer/B_quantizer'].inlier_scale.shape == (17,)
  assert leaves['layers_0/mixer/delta_quantizer'].zero_point.shape == (17,)
  fake = apply_fn(qparams, images)
  frozen = rewrite.set_mode(qparams, 'fake')
  assert isinstance(rewrite.get_path(frozen, 'layers_0/mixer/in_proj/kernel'),
                    qtypes.QuantizedWeight)
  as_int = rewrite.set_mode(qparams, 'int')
  np.testing.assert_array_equal(np.asarray(apply_fn(frozen, images)), np.asarray(fake))
  np.testing.assert_array_equal(np.asarray(apply_fn(as_int, images)), np.asarray(fake))
  packed = rewrite.get_path(as_int, 'layers_0/mixer/in_proj/kernel')
  # stored K-major, (out, in / 2): in_proj 32 -> 128 channels, int4 two per byte
  assert packed.values.dtype == jnp.uint8 and packed.values.shape == (128, 16)
  fp = apply_fn(params, images)
  assert float(jnp.linalg.norm(fake - fp) / jnp.linalg.norm(fp)) < 0.05


def test_smoothing_factors_formula():
  act_max = jnp.asarray([4.0, 1e-5, 9.0])
  w = jnp.asarray([[0.5, -1.0], [2.0, 0.1], [0.0, 0.0]])
  s = rewrite.smoothing_factors(act_max, w, 0.5)
  want = [np.sqrt(4.0) / np.sqrt(1.0), np.sqrt(1e-3) / np.sqrt(2.0), np.sqrt(9.0) / np.sqrt(1e-5)]
  np.testing.assert_allclose(np.asarray(s), want, rtol=1e-5)
