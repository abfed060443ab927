"""Shared tiny model and quantization runs (session-scoped: compiling a block is the slow part;
the runs compile at XLA level 0 on CPU, `coarse.fast_compiled_calibration`)."""
import jax
import jax.numpy as jnp
import pytest

from ouromamba_jax import quant
from ouromamba_jax import quantized_checkpoints
from ouromamba_jax.quant import rewrite
from ouromamba_jax.quant import rules
from ouromamba_jax.models import build_model
from tests import random_init
from tests.quant import coarse


@pytest.fixture(scope='session')
def tiny():
  """(model, params, images): 2 blocks, d_model 32, 16 patches + cls = 17 tokens, 8 images."""
  model = build_model('vim_t', img_size=32, patch_size=8, depth=2, d_model=32, num_classes=10,
                      scan_implementation='sequential')
  images = jnp.asarray(random_init.normal(1, (8, 32, 32, 3)))
  params = jax.jit(model.init)(jax.random.key(0), images[:1])['params']
  return model, params, images


@pytest.fixture(scope='session')
def apply_fn(tiny):
  model = tiny[0]
  return jax.jit(lambda p, x: model.apply({'params': p}, x))


def w8a8_plus_spec() -> quant.QuantSpec:
  """W8A8 OuroMamba, one training epoch on micro-batches of 4, + a rule that matches nothing."""
  base = quant.QuantRunSpec(preset='w8a8', epochs=1, micro_batch=4).quant_spec()
  return quant.QuantSpec('w8a8_plus', base.rules + (
      quant.QuantRule(r'layers_\d+/mixer/conv1d/kernel', quant.WeightSpec(8)),), base.calib)


@pytest.fixture(scope='session')
def w8a8_run(tiny, tmp_path_factory):
  """`w8a8_plus_spec` on the tiny model, saved to a workdir/quantized. Returns (qparams,
  report, workdir, log lines)."""
  model, params, images = tiny
  spec = w8a8_plus_spec()
  workdir = str(tmp_path_factory.mktemp('w8a8'))
  lines = []
  with coarse.fast_compiled_calibration():
    qparams, report = quant.quantize(model, params, images, spec, log=lines.append)
  quantized_checkpoints.save_quantized(f'{workdir}/quantized', qparams, model, report)
  return qparams, report, workdir, lines


@pytest.fixture(scope='session')
def w4a4_untrained_run(tiny):
  """(qparams, report): OuroMamba W4A4 with the initial (lp-searched) scales, no training."""
  model, params, images = tiny
  with coarse.fast_compiled_calibration():
    return quant.quantize(model, params, images,
                          quant.QuantRunSpec(preset='w4a4', epochs=0).quant_spec(),
                          log=lambda _: None)


@pytest.fixture(scope='session')
def rtn_run(tiny):
  model, params, images = tiny
  with coarse.fast_compiled_calibration():
    return quant.quantize(model, params, images,
                          quant.QuantRunSpec(preset='w4a4', micro_batch=4).quant_spec(),
                          method='rtn', log=lambda _: None)


def initial_tree(model, params, images, spec: quant.QuantSpec):
  """(plan, sites, tree): the calibration-form tree of `spec` with initial scales from `images`
  (no training). Capture and rewrite run jitted, as calibration runs them: op by op they
  dispatch thousands of tiny programs (the lp search of every site) and took minutes."""
  sites = rules.find_sites(model, params, images[:1])
  plan = rules.match_rules(sites, spec.rules).plan
  paths = tuple(s.path for s in sites if s.path in plan and s.kind != 'weight')
  items = tuple(sorted(plan.items()))

  @jax.jit
  def build(params, images):
    _, stats = rewrite.capture(lambda t, x: model.apply({'params': t}, x), params, paths, images)
    return rewrite.rewrite(params, dict(items), sites, stats)

  return plan, sites, build(params, images)


@pytest.fixture(scope='session')
def w4a4_initial(tiny):
  """initial_tree of the w4a4 preset on the tiny model's 8 images."""
  model, params, images = tiny
  return initial_tree(model, params, images, quant.preset('w4a4'))
