"""Real-quantized Vim forward: integer-mode Linears on the act_quant + mixed_gemm kernels.

On a tiny quantized Vim (2 blocks) every quantized Linear of the integer-mode forward is
checked code for code against the fake-quant simulation (inlier/outlier codes, outlier masks,
scales, weight codes and the exact int32 sums), for both kernel implementations ('xla' and
'triton' in the Pallas interpreter); the logits are compared with the simulation's. The
testbed check (bundled Vim-T CIFAR-10, W8A8 RTN) compares predictions on 64 test images.

Tolerances: the 'xla' implementation is bit-exact (same codes, exact integer sums, the same
fp32 epilogue order). The Triton kernel computes the same epilogue inside the kernel, where the
compiler is free to contract the scale multiply-adds into FMAs (and XLA fuses the reference's
differently), so its logits may differ in the last ulp of a few values: relative error <= 1e-6
(measured ~2e-8 on CPU in interpret mode).
"""
import dataclasses
import functools
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import int4
from kernels_pallas.act_quant import producers
from kernels_pallas.act_quant.config import MIN_SCALE
from kernels_pallas.mixed_gemm import api as mixed_gemm_api
from kernels_pallas.mixed_gemm import reference as mixed_gemm_reference
from ouromamba_jax.models import layers
from ouromamba_jax.quant import activations as act_lib
from ouromamba_jax.quant import config
from ouromamba_jax.quant import int_linear
from ouromamba_jax.quant import presets
from ouromamba_jax.quant import qtypes
from ouromamba_jax.quant import rewrite
from ouromamba_jax.quant import weights as w_lib
from tests.quant.conftest import initial_tree
from tests import random_init

TRITON_LOGITS_RTOL = 1e-6
IMPLEMENTATIONS = ('xla', 'triton')
# w4a4: packed int4 weights x int4 codes + int8 outliers (default suite); w8a8: int8 x int8 + int8 outliers;
# w4a8: the paper's O16 (float outliers beside the kernel's inlier GEMM). ~25 s each on CPU.
PRESETS = ('w4a4', pytest.param('w8a8', marks=pytest.mark.slow),
           pytest.param('w4a8', marks=pytest.mark.slow))
SEARCH_GRID = 16  # clipping-search candidates (100 by default): cheaper, still below max|x|


def _rel_err(y, ref):
  y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def _coarse_search(preset: str) -> config.QuantSpec:
  """The preset with SEARCH_GRID clipping candidates at every site (a faster lp search)."""
  sites = presets.preset_sites(preset).map(
      lambda spec: dataclasses.replace(spec, n_grid=SEARCH_GRID))
  return config.QuantSpec(preset, sites.rules())


@pytest.fixture(scope='module')
def calibrated(tiny):
  """preset -> the calibration-form tree (initial scales from 8 images; no training)."""
  cache = {}

  def get(preset):
    if preset not in cache:
      cache[preset] = initial_tree(*tiny, _coarse_search(preset))[2]
    return cache[preset]
  return get


def _recording_apply(model, tree, images):
  """Logits and {Linear path: its input} for every Linear with a quantized kernel."""
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, layers.Linear) and context.method_name == '__call__':
      if isinstance(module.get_variable('params', 'kernel'), qtypes.QuantizedWeight):
        seen['/'.join(module.scope.path)] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):   # blocks unrolled: the interceptor sees each one
    logits = model.clone(scan_blocks=False).apply({'params': tree}, images)
  return logits, seen


@pytest.fixture(scope='module')
def runs(tiny, calibrated):
  """(preset, implementation or 'fake') -> (logits, Linear inputs) of one jitted forward."""
  model, _, images = tiny
  cache = {}

  def get(preset, impl):
    if (preset, impl) not in cache:
      mode = 'fake' if impl == 'fake' else 'int'
      tree = rewrite.set_mode(calibrated(preset), mode)
      m = model.clone(quant_implementation=None if impl == 'fake' else impl)
      cache[preset, impl] = jax.jit(lambda t, x: _recording_apply(m, t, x))(tree, images)
    return cache[preset, impl]
  return get


@jax.jit   # op by op, the window walk's primitives compile one by one for every input shape
def fake_mask(x, iq):
  """The simulation's outlier mask of a Linear input x."""
  return iq.parts(act_lib.as_steps(x.astype(jnp.float32), 'steps')[0], ste=True).outlier_mask


@functools.partial(jax.jit, static_argnames='impl')
def _kernel_and_fake_codes(x, weight, iq, fq_weight, impl):
  """The kernel path's operands and exact sums next to what the simulation multiplies. An input
  that arrives with its codes made (dt's, from the launch that also quantizes B and C) is
  checked with those codes."""
  made = x.activation if isinstance(x, producers.Quantized) else None
  x3, _ = act_lib.as_steps(producers.materialize(x).astype(jnp.float32), 'steps')
  ops = int_linear.prepare_operands(x3, weight, iq, impl, made)
  fake = iq.parts(x3, ste=True)  # mode 'fake'
  acc_in, acc_out = mixed_gemm_api.mixed_gemm_accumulators(
      ops.x_inlier, ops.w, ops.x_outlier, weight_bits=ops.weight_bits,
      implementation=impl, interpret=impl == 'triton')
  # the kernel's K-major weight (int4 packed along K) as (K, N) codes
  unpack = lambda v, packed: (int4.unpack_int4(v, axis=-1) if packed else v).T
  want_w = w_lib.weight_codes(fq_weight.smoothed_weight(), fq_weight.scale, fq_weight.bits)
  hi = jax.lax.Precision.HIGHEST
  # the scales the GEMM's epilogue reads: the stored steps by each row's step, floored
  a_scale = mixed_gemm_reference.token_scales(ops.a_scale, x3.shape[0] * x3.shape[1],
                                              MIN_SCALE).reshape(x3.shape[:2])
  kernel = dict(inlier_q=ops.x_inlier, a_scale=a_scale,
                w=unpack(ops.w, ops.weight_bits == 4), acc_in=acc_in)
  sim = dict(inlier_q=fake.inlier_q, a_scale=jnp.broadcast_to(fake.inlier_scale, x3.shape[:2]),
             w=want_w, acc_in=jnp.dot(fake.inlier_q, want_w, precision=hi))
  # The Linear's act_quant leaves the mask out where the kernel runs (the codes carry it).
  if ops.activation.outlier_mask is not None:
    kernel['mask'], sim['mask'] = ops.activation.outlier_mask, fake.outlier_mask
  if ops.x_outlier is not None:
    kernel.update(outlier_q=ops.x_outlier, o_scale=ops.o_scale, acc_out=acc_out)
    sim.update(outlier_q=fake.outlier_q, o_scale=fake.outlier_scale,
               acc_out=jnp.dot(fake.outlier_q, want_w, precision=hi))
  return kernel, sim


@pytest.mark.parametrize('impl', IMPLEMENTATIONS)
@pytest.mark.parametrize('preset', PRESETS)
def test_kernel_codes_equal_fake_quant_codes(calibrated, runs, preset, impl):
  """Every quantized Linear of the integer forward: activation codes, outlier masks, scales,
  weight codes and int32 sums of the kernel path equal the simulation's (float sums of integer
  codes are exact: |sum| < 2^24 here)."""
  tree = calibrated(preset)
  frozen = rewrite.set_mode(tree, 'int')
  _, inputs = runs(preset, impl)
  assert len(inputs) == 12  # 6 mixer Linears x 2 blocks
  has_outliers = presets.preset(preset).rules[1].spec.outliers == 'int'
  n_outliers = 0
  for name, x in inputs.items():
    weight = rewrite.get_path(frozen, f'{name}/kernel')
    iq = rewrite.get_path(frozen, f'{name}/input_quantizer')
    assert int_linear.unsupported_reason(weight, iq) is None, name
    kernel, sim = _kernel_and_fake_codes(x, weight, iq, rewrite.get_path(tree, f'{name}/kernel'),
                                         impl)
    assert set(kernel) == set(sim) and ('outlier_q' in kernel) == has_outliers
    for key in sim:
      np.testing.assert_array_equal(np.asarray(kernel[key]), np.asarray(sim[key]),
                                    err_msg=f'{preset}/{impl} {name}: {key}')
    n_outliers += int(np.asarray(fake_mask(producers.materialize(x), iq)).sum())
  if presets.preset(preset).rules[1].spec.outliers != 'none':
    assert n_outliers > 0, 'no outlier channel fired: the outlier path went untested'


@pytest.mark.parametrize('impl', IMPLEMENTATIONS)
@pytest.mark.parametrize('preset', PRESETS)
def test_int_logits_match_fake_quant(runs, preset, impl):
  fake_logits, fake_inputs = runs(preset, 'fake')
  logits, inputs = runs(preset, impl)
  err = _rel_err(logits, fake_logits)
  print(f'{preset}/{impl}: integer path vs fake quant, logits rel err {err:.3g}')
  if impl == 'xla':
    assert err == 0.0, f'{preset}: xla integer path differs from fake quant, rel err {err:.3g}'
    for name in inputs:  # the whole forward is the simulation's, Linear input by Linear input
      np.testing.assert_array_equal(np.asarray(producers.materialize(inputs[name])),
                                    np.asarray(producers.materialize(fake_inputs[name])))
  else:
    assert err <= TRITON_LOGITS_RTOL, (f'{preset}: triton (interpret) integer path vs fake '
                                       f'quant: rel err {err:.3g} > {TRITON_LOGITS_RTOL}')
  assert np.array_equal(np.argmax(logits, -1), np.argmax(fake_logits, -1)), (
      f'{preset}/{impl}: predictions differ (rel err {err:.3g})')


def test_uncovered_linears_fall_back_to_xla_int_dots(tiny, calibrated):
  """Asymmetric inputs (PTQ4VM-style) have no kernel: mode 'int' keeps the XLA integer dots."""
  tree = rewrite.set_mode(calibrated('w4a4'), 'int')
  weight = rewrite.get_path(tree, 'layers_0/mixer/out_proj/kernel')
  iq = rewrite.get_path(tree, 'layers_0/mixer/out_proj/input_quantizer')
  x = jnp.asarray(random_init.normal(3, (2, 17, weight.in_features)))
  asym = qtypes.ActQuantizer.calibrate(
      x, config.ActSpec(8, symmetric=False, outliers='none')).replace(mode='int')
  assert 'asymmetric' in int_linear.unsupported_reason(weight, asym)
  y = weight.linear(x, asym, jnp.float32, implementation='triton')
  want = weight.replace(mode='fake').linear(x, asym.replace(mode='fake'), jnp.float32)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
  assert int_linear.unsupported_reason(weight, iq) is None
  with pytest.raises(ValueError, match='unknown implementation'):
    weight.linear(x, iq, jnp.float32, implementation='cuda')


def test_a_linears_bias_rides_in_the_gemm_with_the_bits_of_a_separate_add(calibrated,
                                                                         monkeypatch):
  """Vim's dt_proj has a bias: the integer path hands it to the GEMM's epilogue (no pass of
  its own over the (B, L, d_inner) output) and gets the bits of adding it afterwards."""
  tree = rewrite.set_mode(calibrated('w4a4'), 'int')
  weight = rewrite.get_path(tree, 'layers_0/mixer/dt_proj/kernel')
  iq = rewrite.get_path(tree, 'layers_0/mixer/dt_proj/input_quantizer')
  x = jnp.asarray(random_init.normal(5, (2, 17, weight.in_features)), jnp.bfloat16)
  bias = jnp.asarray(random_init.normal(6, (weight.scale.shape[0],)), jnp.float32)
  gemm_biases = []
  gemm = mixed_gemm_api.mixed_gemm
  monkeypatch.setattr(mixed_gemm_api, 'mixed_gemm',
                      lambda *a, **kw: gemm_biases.append(a[6] if len(a) > 6 else None)
                      or gemm(*a, **kw))
  for impl in IMPLEMENTATIONS:
    fused = weight.linear(x, iq, jnp.bfloat16, implementation=impl, bias=bias)
    assert gemm_biases[-1] is bias, impl
    apart = layers.with_bias(weight.linear(x, iq, jnp.bfloat16, implementation=impl), bias)
    np.testing.assert_array_equal(np.asarray(fused, np.float32), np.asarray(apart, np.float32),
                                  err_msg=impl)


def test_ssm_sites_use_the_act_quant_kernel_when_it_covers_them():
  """B/C (symmetric, per step) and Δ (asymmetric) run the Pallas kernel in int mode with the
  same codes as XLA."""
  x = 3.0 * jnp.asarray(random_init.normal(4, (2, 17, 16)))
  x = x.at[:, 5, 3].set(40.0)                              # an outlier channel
  b_site = qtypes.ActQuantizer.calibrate(x, config.ActSpec(4, outlier_bits=8)).replace(
      mode='int')
  kernel = int_linear.quantize_site(x, b_site, 'triton')
  xla = int_linear.quantize_site(x, b_site, 'xla')
  assert bool(jnp.any(xla.outlier_mask)) and kernel.outlier_mask is None  # not written
  for name in ('inlier_q', 'outlier_q', 'outlier_scale'):
    np.testing.assert_array_equal(np.asarray(getattr(kernel, name)), np.asarray(getattr(xla, name)))
  np.testing.assert_allclose(np.asarray(b_site(x, implementation='triton')),
                             np.asarray(b_site.replace(mode='fake')(x)), rtol=1e-6, atol=1e-6)
  delta_site = qtypes.ActQuantizer.calibrate(
      x, config.ActSpec(4, symmetric=False, k=4.0)).replace(mode='int')
  np.testing.assert_array_equal(np.asarray(delta_site(x, implementation='triton')),
                                np.asarray(delta_site(x, implementation='xla')))


def test_quantize_site_default_is_act_quants_default(monkeypatch):
  """implementation=None leaves the choice to act_quant: on a GPU a batch-trigger site stays on
  XLA (its Triton kernel is slower). The GPU is faked, so running the kernel would fail here."""
  x = 3.0 * jnp.asarray(random_init.normal(5, (2, 17, 16)))
  site = qtypes.ActQuantizer.calibrate(x, config.ActSpec(4, trigger='batch')).replace(mode='int')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  got = int_linear.quantize_site(x, site)
  want = int_linear.quantize_site(x, site, 'xla')
  for name in ('inlier_q', 'outlier_q', 'outlier_mask'):
    np.testing.assert_array_equal(np.asarray(getattr(got, name)), np.asarray(getattr(want, name)))


TESTBED_IMAGES = 64


@pytest.mark.slow
def test_testbed_w8a8_rtn_int_predictions_equal_fake(tmp_path):
  """Bundled Vim-T CIFAR-10, W8A8 RTN on 64 test images: the integer path (kernel APIs, 'xla'
  on CPU) predicts exactly what the fake-quant simulation predicts."""
  from ouromamba_jax import quant  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.checkpoints import BUNDLED  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.data import cifar10  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.checkpoints import load_checkpoint  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.models import build_model  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.data import normalization  # pylint: disable=g-import-not-at-top
  data_dir = '/work/shared/data/cifar10'
  if not os.path.isfile(os.path.join(data_dir, 'test.tar.gz')):
    pytest.skip(f'CIFAR-10 test split not found in {data_dir}')
  t0 = time.time()
  model = build_model('vim_t_cifar10')
  params = load_checkpoint(BUNDLED['vim_t_cifar10'], model)
  split = cifar10.load('test', data_dir, use_tfds=False)
  images = normalization.normalize(jnp.asarray(split.images[:TESTBED_IMAGES]), cifar10.MEAN,
                                   cifar10.STD)
  labels = np.asarray(split.labels[:TESTBED_IMAGES])
  qparams, _ = quant.quantize(model, params, images, 'w8a8', method='rtn', log=lambda _: None)
  apply = jax.jit(lambda m, p, x: m.apply({'params': p}, x), static_argnums=0)
  fake = np.asarray(apply(model, quant.set_mode(qparams, 'fake'), images))
  real = np.asarray(apply(model.clone(quant_implementation='xla'),
                          quant.set_mode(qparams, 'int'), images))
  fp = np.asarray(apply(model, params, images))
  err = _rel_err(real, fake)
  acc = lambda y: float(np.mean(np.argmax(y, -1) == labels))
  msg = (f'int vs fake rel err {err:.3g}; accuracy int {acc(real):.4f}, fake {acc(fake):.4f}, '
         f'float {acc(fp):.4f}; {time.time() - t0:.0f} s')
  print(msg)
  assert np.array_equal(np.argmax(real, -1), np.argmax(fake, -1)), msg
  assert err == 0.0, msg
