"""Quantization of MambaVision (tiny random config): sites of the mixer, attention and MLP,
W8A8/W4A4 accuracy, int == fake."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax import quant
from ouromamba_jax.models.mambavision import MambaVision
from ouromamba_jax.quant import rules
from tests.quant import coarse
from tests import random_init

MIXER_SITES = ('in_proj/kernel', 'in_proj/input_quantizer', 'x_proj/kernel',
               'x_proj/input_quantizer', 'dt_proj/kernel', 'dt_proj/input_quantizer',
               'out_proj/kernel', 'out_proj/input_quantizer', 'delta_quantizer', 'B_quantizer',
               'C_quantizer', 'A_quantizer', 'D_quantizer')
ATTENTION_SITES = ('qkv/kernel', 'qkv/input_quantizer', 'proj/kernel', 'proj/input_quantizer')
MLP_SITES = ('fc1/kernel', 'fc1/input_quantizer', 'fc2/kernel', 'fc2/input_quantizer')


def _tiny_model():
  # Stride-1 stem on 16x16: hybrid stages on 4x4 (one 4x4 window) and 2x2 grids; each hybrid
  # stage has one mixer block and one attention block.
  model = MambaVision(num_classes=5, img_size=16, dim=8, in_dim=8, depths=(1, 1, 2, 2),
                      num_heads=(1, 1, 2, 2), window_size=(8, 8, 4, 2), stem_strides=(1, 1),
                      scan_implementation='xla')
  return model, jnp.asarray(random_init.normal(1, (4, 16, 16, 3)))


@pytest.fixture(scope='module')
def tiny():
  model, images = _tiny_model()
  params = jax.jit(model.init)(jax.random.key(0), images[:1])['params']
  return model, params, images


@pytest.fixture(scope='module')
def apply_fn(tiny):
  model = tiny[0]
  return jax.jit(lambda p, x: model.apply({'params': p}, x))


@pytest.fixture(scope='module')
def w8a8(tiny):
  return coarse.quantize(tiny, 'w8a8')


@pytest.mark.slow  # quantize compiles: ~2-5 min on 2 busy CPU cores
def test_hybrid_block_sites_are_quantized_and_conv_stages_kept_float(tiny, w8a8):
  _, report = w8a8
  want = set()
  for level in ('levels_2', 'levels_3'):
    want |= {f'{level}/blocks_0/mixer/{s}' for s in MIXER_SITES}
    want |= {f'{level}/blocks_1/mixer/{s}' for s in ATTENTION_SITES}
    want |= {f'{level}/blocks_{j}/mlp/{s}' for j in (0, 1) for s in MLP_SITES}
  assert set(report['quantized']) == want
  assert set(report['kept_float']) == {'head/kernel', 'head/input_quantizer'}
  assert report['unused_rules'] == []
  assert report['quantized']['levels_2/blocks_0/mixer/B_quantizer'].endswith('[per step]')
  assert report['quantized']['levels_2/blocks_1/mixer/qkv/input_quantizer'].endswith('[per step]')


@pytest.mark.slow  # quantize compiles: ~2-5 min on 2 busy CPU cores
def test_per_step_scales_run_along_each_windows_tokens(w8a8):
  qparams, _ = w8a8
  mixer = qparams['levels_2']['blocks_0']['mixer']
  assert mixer['delta_quantizer'].inlier_scale.shape[-1] == 16     # a 4 x 4 window
  attention = qparams['levels_3']['blocks_1']['mixer']
  assert attention['qkv']['input_quantizer'].inlier_scale.shape[-1] == 4


@pytest.mark.slow  # quantize compiles: ~2-5 min on 2 busy CPU cores
def test_w8a8_is_close_to_float_and_w4a4_is_worse(tiny, apply_fn, w8a8):
  fp = apply_fn(tiny[1], tiny[2])
  err8 = coarse.rel_err(apply_fn(w8a8[0], tiny[2]), fp)
  err4 = coarse.rel_err(apply_fn(coarse.quantize(tiny, 'w4a4')[0], tiny[2]), fp)
  assert err8 < 5e-2
  assert err4 > 2 * err8


@pytest.mark.slow  # quantize compiles: ~2-5 min on 2 busy CPU cores
def test_int_mode_equals_fake_mode(tiny, apply_fn, w8a8):
  qparams, _ = w8a8
  fake = apply_fn(qparams, tiny[2])
  integer = apply_fn(quant.to_integer(qparams), tiny[2])
  np.testing.assert_allclose(integer, fake, rtol=1e-6, atol=1e-6)


def test_sites_follow_the_model_code():
  model, images = _tiny_model()
  shapes = jax.eval_shape(model.init, jax.random.key(0), images[:1])['params']  # no compile
  sites = rules.find_sites(model, shapes, images[:1])
  ssm = {s.path for s in sites if s.kind == 'ssm'}
  assert ssm == {f'{level}/blocks_0/mixer/{t}_quantizer' for level in ('levels_2', 'levels_3')
                 for t in ('delta', 'B', 'C', 'A', 'D')}
