"""Quantization of VMamba (tiny random config): sites, W8A8/W4A4 accuracy, int == fake, baselines,
block-wise reconstruction."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax import quant
from ouromamba_jax.models.vmamba import VMamba
from ouromamba_jax.quant import qtypes, rewrite, rules
from tests import random_init
from tests.interpreted import CPU_FAST_COMPILE
from tests.quant import coarse

OP_SITES = ('in_proj/kernel', 'in_proj/input_quantizer', 'out_proj/kernel',
            'out_proj/input_quantizer', 'x_proj_weight', 'x_proj_input_quantizer',
            'dt_projs_weight', 'dt_projs_input_quantizer', 'delta_quantizer', 'B_quantizer',
            'C_quantizer', 'A_quantizer', 'D_quantizer')
MLP_SITES = ('fc1/kernel', 'fc1/input_quantizer', 'fc2/kernel', 'fc2/input_quantizer')
BLOCKS = ('layers_0/blocks_0', 'layers_1/blocks_0')


@pytest.fixture(scope='module')
def tiny():
  # the sequential scan (CPU's default, the ground truth): its blocks compile ~15% faster than
  # the associative scan's, and which scan runs is not what these tests check
  model = VMamba(num_classes=5, img_size=16, dims=8, depths=(1, 1), ssm_ratio=2.0,
                 scan_implementation='sequential')
  images = jnp.asarray(random_init.normal(1, (4, 16, 16, 3)))
  return model, random_init.init_params(model, images[:1]), images


@pytest.fixture(scope='module')
def apply_fn(tiny):
  """The jitted forward, compiled at XLA's optimisation level 0 on CPU: a quantized VMamba
  forward compiles in ~4.4 s instead of ~6.5 s (4 images: running it is nothing), and fake,
  int and folded trees still give the same logits bit for bit."""
  model = tiny[0]
  return jax.jit(lambda p, x: model.apply({'params': p}, x), compiler_options=CPU_FAST_COMPILE)


@pytest.fixture(scope='module')
def w8a8(tiny):
  return coarse.quantize(tiny, 'w8a8')


def test_every_block_site_is_quantized_and_the_rest_kept_float(w8a8):
  _, report = w8a8
  want = {f'{b}/op/{s}' for b in BLOCKS for s in OP_SITES}
  want |= {f'{b}/mlp/{s}' for b in BLOCKS for s in MLP_SITES}
  assert set(report['quantized']) == want
  assert set(report['kept_float']) == {'classifier_head/kernel',
                                       'classifier_head/input_quantizer'}
  assert report['unused_rules'] == []
  assert report['quantized']['layers_0/blocks_0/op/B_quantizer'].endswith(
      '[per direction and step]')


def test_stacked_sites_have_per_direction_scales(tiny, w8a8):
  qparams, _ = w8a8
  op = qparams['layers_0']['blocks_0']['op']
  length = 4 * 4                                 # stage 0: a 4 x 4 grid of tokens
  assert op['x_proj_input_quantizer'].inlier_scale.shape == (4, length)
  assert op['delta_quantizer'].inlier_scale.shape == (4, length)
  assert op['A_quantizer'].inlier_scale.shape == (1,)
  weight = op['x_proj_weight']
  assert isinstance(weight, qtypes.QuantizedWeight) and weight.codes().shape[0] == 4
  dequantized = jax.vmap(lambda w: w.codes().astype(jnp.float32) * w.scale[None, :])(weight)
  np.testing.assert_allclose(dequantized,
                             jnp.swapaxes(tiny[1]['layers_0']['blocks_0']['op']['x_proj_weight'],
                                          1, 2), atol=float(weight.scale.max()))


def test_w8a8_is_close_to_float_and_w4a4_is_worse(tiny, apply_fn, w8a8):
  fp = apply_fn(tiny[1], tiny[2])
  err8 = coarse.rel_err(apply_fn(w8a8[0], tiny[2]), fp)
  err4 = coarse.rel_err(apply_fn(coarse.quantize(tiny, 'w4a4')[0], tiny[2]), fp)
  assert err8 < 5e-2
  assert err4 > 2 * err8


def test_int_mode_equals_fake_mode(tiny, apply_fn, w8a8):
  qparams, _ = w8a8
  fake = apply_fn(qparams, tiny[2])
  integer = apply_fn(quant.to_integer(qparams), tiny[2])
  np.testing.assert_allclose(integer, fake, rtol=1e-6, atol=1e-6)
  # A and D folded into constants (quant.fold): the same integer logits, bit for bit
  folded = quant.fold_parameter_sites(quant.to_integer(qparams))
  assert all(isinstance(folded[b.split('/')[0]][b.split('/')[1]]['op'][f'{t}_quantizer'],
                        qtypes.FoldedSite) for b in BLOCKS for t in 'AD')
  np.testing.assert_array_equal(apply_fn(folded, tiny[2]), integer)


@pytest.mark.slow  # two more quantize compilations (~1 min each on 2 CPU cores)
@pytest.mark.parametrize('method', ['rtn', 'ptq4vm'])
def test_baselines_run_on_the_same_sites(tiny, apply_fn, method):
  qparams, report = coarse.quantize(tiny, 'w8a8', method)
  linear_sites = [p for p in report['quantized'] if not p.endswith(
      ('delta_quantizer', 'B_quantizer', 'C_quantizer', 'A_quantizer', 'D_quantizer'))]
  assert len(linear_sites) == 2 * (len(OP_SITES) - 5 + len(MLP_SITES))
  leaves = rewrite.quantized_leaves(qparams)
  if method == 'ptq4vm':   # SSM tensors stay float; stacked Linears get per-direction smoothing
    assert len(report['quantized']) == len(linear_sites)
    assert leaves['layers_0/blocks_0/op/dt_projs_weight'].smooth.shape == (4, 1)
  else:
    assert len(report['quantized']) == 2 * (len(OP_SITES) + len(MLP_SITES))
  fp = apply_fn(tiny[1], tiny[2])
  assert coarse.rel_err(apply_fn(qparams, tiny[2]), fp) < 1e-1


def test_sites_follow_the_model_code(tiny):
  model, params, images = tiny
  sites = rules.find_sites(model, params, images[:1])
  stacked = {s.path.rsplit('/', 1)[1] for s in sites if s.layout == 'stacked'}
  assert stacked == {'x_proj_weight', 'x_proj_input_quantizer', 'dt_projs_weight',
                     'dt_projs_input_quantizer', 'delta_quantizer', 'B_quantizer', 'C_quantizer'}


@pytest.mark.slow  # trains every block (~3 min on 2 busy CPU cores: each stage compiles its own)
def test_blockwise_reconstruction_lowers_the_block_error(tiny, apply_fn):
  """Training the step sizes block by block lowers every block's output error below the
  one-pass (initial lp-searched) scales', and the logits get closer to float."""
  one_pass, report0 = coarse.quantize(tiny, 'w4a4')
  trained, report = coarse.quantize(tiny, 'w4a4', epochs=5)
  assert [b['kept'] for b in report0['blocks']] == ['untrained'] * 2
  assert [b['kept'] for b in report['blocks']] == ['trained'] * 2
  for block in report['blocks']:
    assert block['loss_final'] < block['loss_init']
  fp = apply_fn(tiny[1], tiny[2])
  assert coarse.rel_err(apply_fn(trained, tiny[2]), fp) < coarse.rel_err(apply_fn(one_pass, tiny[2]), fp)
