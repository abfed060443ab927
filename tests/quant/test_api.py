"""End to end on a tiny Vim: quantize, report, int mode, snapshot resume, baselines."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.act_quant import config as act_quant_config
from ouromamba_jax import quant
from ouromamba_jax.models import layers
from ouromamba_jax.models import vim
from ouromamba_jax import quantized_checkpoints
from ouromamba_jax.quant import calibrate
from ouromamba_jax.quant import qtypes
from ouromamba_jax.quant import rewrite
from tests import random_init
from tests.interpreted import CPU_FAST_COMPILE
from tests.quant import coarse
from tests.quant import conftest


def _rel_err(y, ref):
  return float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))


def test_w8a8_logits_close_to_float(tiny, apply_fn, w8a8_run):
  _, params, images = tiny
  qparams, report, _, _ = w8a8_run
  fp = apply_fn(params, images)
  q = apply_fn(qparams, images)
  assert _rel_err(q, fp) < 2e-3
  assert np.array_equal(np.argmax(q, -1), np.argmax(fp, -1))
  leaves = rewrite.quantized_leaves(qparams)
  assert len(leaves) == 44 and all(not isinstance(v, qtypes.FakeQuantWeight)
                                   for v in leaves.values())


def test_report_lists_sites_blocks_and_unused_rules(w8a8_run):
  _, report, workdir, _ = w8a8_run
  assert report['method'] == 'ouromamba' and report['calibration_images'] == 8
  assert len(report['quantized']) == 44
  assert report['kept_float'] == ['head/kernel', 'head/input_quantizer']
  assert report['unused_rules'] == [{'index': 5, 'pattern': r'layers_\d+/mixer/conv1d/kernel'}]
  assert [b['block'] for b in report['blocks']] == [0, 1]
  for b in report['blocks']:
    assert b['steps'] == 2 and b['kept'] in ('trained', 'init')
    assert np.isfinite(b['loss_init']) and b['loss_final'] <= b['loss_init'] or b['kept'] == 'init'


def test_calibration_log_is_one_line_per_block_after_one_compiling_line(w8a8_run):
  lines = [l for l in w8a8_run[3] if l.startswith('[quant] block')]
  assert len(lines) == 3 and 'compiling' in lines[0]                # 2 blocks
  assert re.match(r'\[quant\] block 1/2 loss \S+ -> \S+ \((trained|init), 2 steps', lines[1])
  assert 'ETA after the next block (this one compiled)' in lines[1]
  assert lines[2].startswith('[quant] block 2/2 loss ') and 'ETA' not in lines[2]


def test_saved_model_reloads_with_identical_logits_in_both_modes(tiny, apply_fn, w8a8_run):
  _, _, images = tiny
  qparams, report, workdir, _ = w8a8_run
  loaded, loaded_report = quantized_checkpoints.load_quantized(os.path.join(workdir, 'quantized'), tiny[0])
  want = np.asarray(apply_fn(qparams, images))
  np.testing.assert_array_equal(np.asarray(apply_fn(loaded, images)), want)
  assert loaded_report['quantized'] == report['quantized']
  as_int, _ = quantized_checkpoints.load_quantized(os.path.join(workdir, 'quantized'), mode='int')
  assert rewrite.get_path(as_int, 'layers_0/mixer/in_proj/kernel').mode == 'int'
  np.testing.assert_array_equal(np.asarray(apply_fn(as_int, images)), want)


def test_w4a4_degrades_more_but_stays_finite(tiny, apply_fn, w8a8_run, w4a4_untrained_run):
  _, params, images = tiny
  qparams, report = w4a4_untrained_run
  fp = apply_fn(params, images)
  q = apply_fn(qparams, images)
  assert bool(jnp.all(jnp.isfinite(q)))
  err4 = _rel_err(q, fp)
  assert _rel_err(apply_fn(w8a8_run[0], images), fp) < err4 < 0.1
  assert all(b['kept'] == 'untrained' for b in report['blocks'])
  packed = rewrite.get_path(qparams, 'layers_1/mixer/x_proj/kernel')
  assert packed.packed and packed.values.dtype == jnp.uint8


def test_killed_calibration_resumes(tiny, apply_fn, rtn_run, tmp_path):
  model, params, images = tiny
  spec = quant.QuantRunSpec(preset='w4a4', micro_batch=4).quant_spec()
  snapshot = quantized_checkpoints.SnapshotFile(str(tmp_path / 'calibration_state.npz'))

  def die_in_block_2(msg):
    if 'block 2/2' in msg:
      raise KeyboardInterrupt('killed')

  # compiled as rtn_run was (coarse.fast_compiled_calibration): the same tree bit for bit
  with coarse.fast_compiled_calibration(), pytest.raises(KeyboardInterrupt):
    quant.quantize(model, params, images, spec, method='rtn', snapshot=snapshot,
                   log=die_in_block_2)
  assert os.path.exists(snapshot.path)
  messages = []
  with coarse.fast_compiled_calibration():
    qparams, report = quant.quantize(model, params, images, spec, method='rtn',
                                     snapshot=snapshot, log=messages.append)
  assert any('resuming' in m and 'blocks 0..0 done' in m for m in messages)
  assert [b['block'] for b in report['blocks']] == [0, 1]
  np.testing.assert_array_equal(np.asarray(apply_fn(qparams, images)),
                                np.asarray(apply_fn(rtn_run[0], images)))
  with pytest.raises(ValueError, match='different calibration run'):
    quant.quantize(model, params, images[:4], spec, method='rtn', snapshot=snapshot,
                   log=lambda _: None)


def test_rtn_uses_minmax_scales_and_no_outliers(tiny, rtn_run):
  _, params, _ = tiny
  qparams, report = rtn_run
  leaves = rewrite.quantized_leaves(qparams)
  act = leaves['layers_0/mixer/in_proj/input_quantizer']
  assert act.spec.outliers == 'none' and act.spec.init == 'minmax'
  w = params['layers_0']['mixer']['in_proj']['kernel']
  np.testing.assert_allclose(np.asarray(leaves['layers_0/mixer/in_proj/kernel'].scale),
                             np.abs(np.asarray(w)).max(axis=0) / 7, rtol=1e-6)
  assert all(b['steps'] == 0 for b in report['blocks'])


def test_ptq4vm_learns_smoothing_and_leaves_ssm_in_float(tiny, apply_fn):
  model, params, images = tiny
  with coarse.fast_compiled_calibration():
    qparams, report = quant.quantize(
        model, params, images,
        quant.QuantRunSpec(preset='w4a8', epochs=1, micro_batch=8).quant_spec(),
        method='ptq4vm', log=lambda _: None)
  leaves = rewrite.quantized_leaves(qparams)
  assert len(leaves) == 24 and 'layers_0/mixer/delta_quantizer' not in leaves
  weight = leaves['layers_0/mixer/out_proj/kernel']
  assert weight.smooth is not None and weight.smooth.shape == (64,)
  act = leaves['layers_0/mixer/out_proj/input_quantizer']
  assert not act.spec.symmetric and act.zero_point.shape == (17,)
  fp = apply_fn(params, images)
  assert _rel_err(apply_fn(qparams, images), fp) < 0.05


def test_bad_inputs_rejected(tiny):
  model, params, images = tiny
  with pytest.raises(ValueError, match='unknown quantization method'):
    quant.quantize(model, params, images, 'w4a4', method='gptq')
  with pytest.raises(ValueError, match='non-empty NHWC batch'):
    quant.quantize(model, params, images[0], 'w4a4')
  with pytest.raises(TypeError, match='QuantSpec or a preset name'):
    quant.quantize(model, params, images, {'preset': 'w4a4'})


def test_unknown_mode_is_rejected_before_calibrating(tiny, monkeypatch):
  model, params, images = tiny
  monkeypatch.setattr(calibrate, 'reconstruct_blocks', pytest.fail)   # never reached
  with pytest.raises(ValueError, match=r"mode must be one of \('fake', 'int'\), got 'integer'"):
    quant.quantize(model, params, images, 'w4a4', mode='integer', log=lambda _: None)


def test_n_refresh_beyond_the_sequence_is_rejected_before_calibrating(tiny):
  model, params, images = tiny
  assert model.seq_len == 17
  spec = quant.QuantRunSpec(preset='w4a4', n_refresh=18).quant_spec()
  with pytest.raises(ValueError, match=r"^n_refresh=18 \(at layers_0/\S+\) is beyond the model's "
                                       r'sequence length of 17 tokens, .*set quant\.n_refresh '
                                       r'<= 17\.$'):
    quant.quantize(model, params, images, spec, log=lambda _: None)


def test_sites_outside_blocks_get_initial_scales(tiny, apply_fn, rtn_run):
  """A rule may quantize the head too: its (B, C) input gets one static step (no reconstruction)."""
  from ouromamba_jax.quant import api, config, rules  # pylint: disable=g-import-not-at-top
  model, params, images = tiny
  sites = rules.find_sites(model, params, images[:1])
  plan = {'head/kernel': config.WeightSpec(8), 'head/input_quantizer': config.ActSpec(bits=8)}
  qparams = api._quantize_outside_blocks(model, rtn_run[0], images, plan, sites,
                                         config.CalibSpec(micro_batch=4), 'ouromamba')
  head = rewrite.quantized_leaves(qparams)
  assert head['head/input_quantizer'].inlier_scale.shape == (1,)
  assert isinstance(head['head/kernel'], qtypes.FakeQuantWeight)
  before, after = apply_fn(rtn_run[0], images), apply_fn(qparams, images)
  assert 0 < _rel_err(after, before) < 0.02


def test_non_finite_activations_outside_the_blocks_are_named_by_site(tiny, rtn_run):
  from ouromamba_jax.quant import api, config, rules  # pylint: disable=g-import-not-at-top
  model, params, images = tiny
  sites = rules.find_sites(model, params, images[:1])
  plan = {'head/input_quantizer': config.ActSpec(bits=8)}
  qparams = dict(rtn_run[0])
  qparams['norm_f'] = {'weight': qparams['norm_f']['weight'] * jnp.nan}
  with pytest.raises(calibrate.NonFiniteCalibrationError,
                     match=r'^outside the blocks: calibration activations at site '
                           r'head/input_quantizer hold NaN/Inf; .*norm_f'):
    api._quantize_outside_blocks(model, qparams, images, plan, sites,
                                 config.CalibSpec(micro_batch=4), 'ouromamba')


def test_log_domain_a_keeps_every_state_and_int_mode_agrees(tiny, apply_fn, w4a4_untrained_run):
  model, params, images = tiny
  spec = quant.QuantRunSpec(preset='w4a4', epochs=0, a_domain='log').quant_spec()
  with coarse.fast_compiled_calibration():
    qparams, report = quant.quantize(model, params, images, spec, log=lambda _: None)
  a = rewrite.get_path(qparams, 'layers_0/mixer/A_quantizer')
  assert a.spec.domain == 'log' and a.zero_point is not None
  assert 'log-domain' in report['quantized']['layers_0/mixer/A_quantizer']
  A = -jnp.exp(rewrite.get_path(params, 'layers_0/mixer/A_log').astype(jnp.float32))
  rel = jnp.abs(a(A) - A) / jnp.abs(A)
  assert float(jnp.max(rel)) < 0.15 and bool(jnp.all(a(A) < 0))  # no state rounds to 0
  a_lin = rewrite.get_path(w4a4_untrained_run[0], 'layers_0/mixer/A_quantizer')
  assert float(jnp.max(jnp.abs(a_lin(A) - A) / jnp.abs(A))) == 1.0  # A = -1 -> 0 on ±7 steps
  np.testing.assert_array_equal(np.asarray(apply_fn(rewrite.set_mode(qparams, 'int'), images)),
                                np.asarray(apply_fn(qparams, images)))


def _pallas_calls(fn, *args) -> list:
  """The pallas_call equations of fn's jaxpr, sub-jaxprs included (the block scan's body)."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'pallas_call':
        found.append(eqn)
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
          inner = getattr(sub, 'jaxpr', sub)
          if hasattr(inner, 'eqns'):
            walk(inner)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def _kernel_name(eqn) -> str:
  return str(eqn.params['name']).split(' ')[0]


def _kernel_launches(fn, *args) -> dict[str, int]:
  """Pallas calls per kernel name in fn's jaxpr."""
  counts: dict[str, int] = {}
  for eqn in _pallas_calls(fn, *args):
    counts[_kernel_name(eqn)] = counts.get(_kernel_name(eqn), 0) + 1
  return counts


def test_batched_directions_give_the_loops_logits_with_fewer_launches(tiny, w4a4_untrained_run,
                                                                      monkeypatch):
  """VisionMamba.batch_directions on a quantized tree: the loop's logits bit for bit in fake mode
  and to float rounding in int mode on the Triton kernels (interpreted here; the per-tensor A/D
  sites run in XLA fusions, which XLA compiles differently under the vmap), and each
  per-direction kernel launched once for both directions (x_proj/dt_proj act_quant + GEMM, the
  Δ/B/C quantizers; counted with dt, B and C in separate launches). The scan's kernel under the
  vmap: tests/models/test_vim.py."""
  monkeypatch.setattr(act_quant_config, 'SEGMENTS_IN_ONE_LAUNCH', 0)
  model, _, images = tiny
  forward = lambda m: (lambda p, x: m.apply({'params': p}, x))
  for mode, loop, options in (('fake', model, None),
                              ('int', model.clone(quant_implementation='triton'), CPU_FAST_COMPILE)):
    tree = rewrite.set_mode(w4a4_untrained_run[0], mode)
    batched = loop.clone(batch_directions=True)
    run = lambda m: np.asarray(jax.jit(forward(m), compiler_options=options)(tree, images))
    # a code that moved would change a logit by ~1e-3; rounding moves it by ~1e-7
    np.testing.assert_allclose(run(batched), run(loop), rtol=0 if mode == 'fake' else 1e-6,
                               atol=0 if mode == 'fake' else 1e-7)
  per_loop = _kernel_launches(forward(loop), tree, images)
  per_batch = _kernel_launches(forward(batched), tree, images)
  assert per_loop['mixed_gemm'] == 6 and per_batch['mixed_gemm'] == 4  # in/out_proj: one each
  # Δ, and B with C as one launch (layers.quantize_sites): 2 per direction (the blocks' scan
  # body), 2 for both directions as one batch; A and D (per tensor) run in XLA, fused
  assert per_loop['act_quant_dequantized'] == 4 and per_batch['act_quant_dequantized'] == 2
  assert sum(per_batch.values()) < sum(per_loop.values())


def _act_quant_operands(fn, *args) -> list[str]:
  """Per act_quant launch in fn's jaxpr, what its float operands are: 'array' (one (B, L, C)
  input), 'mean' (two: a direction mean's) or 'norm' (one and a (B, L) per-token operand: a
  residual and its 1/rms)."""
  kinds = []
  for eqn in _pallas_calls(fn, *args):
    if _kernel_name(eqn) != 'act_quant_sample':
      continue
    shapes = [v.aval.shape for v in eqn.invars if jnp.issubdtype(v.aval.dtype, jnp.floating)]
    rows = [s for s in shapes if len(s) >= 3]  # (..., B, L, C): a direction axis when vmapped
    assert len(rows) in (1, 2), shapes
    per_token = any(s == rows[0][:-1] for s in shapes)
    kinds.append('mean' if len(rows) == 2 else 'norm' if per_token else 'array')
  return kinds


def test_the_fused_linear_inputs_give_the_same_logits(tiny, w4a4_untrained_run, monkeypatch):
  """`fuse_linear_inputs`: the directions' mean is formed by the backward scan's epilogue
  (directions looped) or by out_proj's act_quant kernel (`act_quant.producers.DirectionMean`,
  directions vmapped), and in_proj's input by its act_quant kernel from the residual
  (`producers.RMSNormed`). The same logits bit for bit in every mode (float, fake-quant and int
  on XLA with the directions looped; float on the interpreted Triton scan, looped; int on the
  interpreted Triton kernels, vmapped: the GPU's small-batch path); looped, the Triton scan
  writes the mean, and vmapped, one act_quant launch per block reads both directions' outputs
  instead of their mean and one the residual and its 1/rms instead of the normalized input
  (counted with dt, B and C in separate launches)."""
  monkeypatch.setattr(act_quant_config, 'SEGMENTS_IN_ONE_LAUNCH', 0)
  model, params, images = tiny
  int_tree = rewrite.set_mode(w4a4_untrained_run[0], 'int')
  fake_tree = rewrite.set_mode(w4a4_untrained_run[0], 'fake')
  triton = model.clone(quant_implementation='triton', batch_directions=True)
  cases = (('float', model, params, None), ('fake', model, fake_tree, None),
           ('int xla', model.clone(quant_implementation='xla'), int_tree, None),
           ('float triton scan', model.clone(scan_implementation='triton'), params,
            CPU_FAST_COMPILE),
           ('int triton', triton, int_tree, CPU_FAST_COMPILE))
  for name, base, tree, options in cases:
    run = lambda m, tree=tree, options=options: np.asarray(jax.jit(
        lambda p, x: m.apply({'params': p}, x), compiler_options=options)(tree, images))
    np.testing.assert_array_equal(run(base.clone(fuse_linear_inputs=True)),
                                  run(base.clone(fuse_linear_inputs=False)), err_msg=name)
  scans = lambda m: [_kernel_name(e) for e in _pallas_calls(
      lambda p, x: m.apply({'params': p}, x), params, images)]
  looped = model.clone(scan_implementation='triton', batch_directions=False)
  assert sorted(scans(looped.clone(fuse_linear_inputs=False))) == ['selective_scan_fwd'] * 2
  assert sorted(scans(looped.clone(fuse_linear_inputs=True))) == [
      'selective_scan_fwd', 'selective_scan_fwd_mean']
  reads = lambda m: sorted(_act_quant_operands(lambda p, x: m.apply({'params': p}, x),
                                               int_tree, images))
  unfused = reads(triton.clone(fuse_linear_inputs=False))
  assert set(unfused) == {'array'}
  assert reads(triton.clone(fuse_linear_inputs=True)) == sorted(unfused[:-2] + ['mean', 'norm'])
  # Tools that intercept module calls (site search, layer reports) see arrays, not producers.
  assert not layers.module_by_module(triton.clone(fuse_linear_inputs=True)).fuse_linear_inputs


def test_the_gpus_vmapped_directions_quantize_like_the_loop(tiny, w8a8_run):
  """A GPU runs small batches with the mixer's directions vmapped (`vim.directions_as_one_batch`),
  the CPU loops; forcing the vmapped path here runs the GPU's quant pass (site search, capture,
  training on micro-batches of 4): the same sites and, to float rounding, the same trained
  scales. (Session 16: the site search missed every x_proj/dt_proj on the GPU.)"""
  model, params, images = tiny
  loop_tree, loop_report, _, _ = w8a8_run
  with coarse.fast_compiled_calibration():                      # as w8a8_run
    tree, report = quant.quantize(model.clone(batch_directions=True), params, images,
                                  conftest.w8a8_plus_spec(), log=lambda _: None)
  assert report['quantized'] == loop_report['quantized']
  assert [b['kept'] for b in report['blocks']] == [b['kept'] for b in loop_report['blocks']]
  leaves = lambda t: jax.tree_util.tree_flatten_with_path(t)[0]
  for (path, got), (_, want) in zip(leaves(tree), leaves(loop_tree), strict=True):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('batch_directions', [False, True])
def test_a_quantized_tree_with_the_directions_stacked_gives_the_same_logits(
    tiny, w4a4_untrained_run, batch_directions):
  """`vim.with_directions_stacked` on an integer-mode tree (codes, steps and quantizer sites of
  both directions stacked once): the plain tree's logits bit for bit, looped and vmapped."""
  model, _, images = tiny
  tree = rewrite.set_mode(w4a4_untrained_run[0], 'int')
  prepared = vim.with_directions_stacked(tree)
  stacked = prepared['layers_0']['mixer'][vim.STACKED_DIRECTIONS]
  assert stacked['x_proj']['kernel'].values.shape[0] == 2 and stacked['delta'] is not None
  run = lambda p: np.asarray(jax.jit(lambda p, x: model.clone(
      batch_directions=batch_directions).apply({'params': p}, x),
      compiler_options=CPU_FAST_COMPILE)(p, images))
  np.testing.assert_array_equal(run(prepared), run(tree))


def test_a_tree_prepared_for_inference_is_refused_by_quantize(tiny):
  model, params, images = tiny
  with pytest.raises(ValueError, match=r'directions stacked .*quantize the tree as loaded'):
    quant.quantize(model, vim.with_directions_stacked(params), images, 'w4a4')


def test_paired_sites_equal_site_by_site(w4a4_untrained_run):
  """layers.quantize_sites: int-mode B and C quantizers as one vmapped call give each site's own
  codes; fake-mode ones (and None) go site by site."""
  mixer = rewrite.get_path(rewrite.set_mode(w4a4_untrained_run[0], 'int'), 'layers_0/mixer')
  quantizers = (mixer['B_quantizer'], mixer['C_quantizer'])
  length = quantizers[0].inlier_scale.shape[-1]
  xs = tuple(jnp.asarray(random_init.normal(s, (3, length, 16))) for s in (5, 6))
  paired = layers.quantize_sites(quantizers, xs, 'xla')
  for q, x, y in zip(quantizers, xs, paired):
    np.testing.assert_array_equal(np.asarray(y), np.asarray(layers.quantize_site(q, x, 'xla')))
  as_int = _kernel_launches(lambda *v: layers.quantize_sites(quantizers, v, 'triton'), *xs)
  assert as_int == {'act_quant_dequantized': 1}
  fake = tuple(q.replace(mode='fake') for q in quantizers)
  assert _kernel_launches(lambda *v: layers.quantize_sites(fake, v, 'triton'), *xs) == {}
  assert layers.quantize_sites((None, None), xs)[1] is xs[1]



def test_dt_b_and_c_quantized_in_one_launch_give_the_same_logits(tiny, w4a4_untrained_run,
                                                                 monkeypatch):
  """`act_quant.config.SEGMENTS_IN_ONE_LAUNCH` (on by default): x_proj's output (dt for dt_proj,
  B, C) is quantized by one act_quant launch per direction (`layers.split_sites`) instead of
  dt_proj's own and B/C's vmapped one: the same logits bit for bit, looped and vmapped, on the
  interpreted Triton kernels; tools that intercept module calls (`module_by_module`) keep the
  separate launches."""
  monkeypatch.setattr(act_quant_config, 'SEGMENTS_IN_ONE_LAUNCH', 0)
  model, _, images = tiny
  tree = rewrite.set_mode(w4a4_untrained_run[0], 'int')
  base = model.clone(quant_implementation='triton')
  forward = lambda m: (lambda p, x: m.apply({'params': p}, x))
  run = lambda m: np.asarray(jax.jit(forward(m), compiler_options=CPU_FAST_COMPILE)(tree, images))
  separate = {}
  for batched in (False, True):
    m = base.clone(batch_directions=batched)
    separate[batched] = (run(m), _kernel_launches(forward(m), tree, images))
  monkeypatch.setattr(act_quant_config, 'SEGMENTS_IN_ONE_LAUNCH', 1)
  for batched, (logits, launches) in separate.items():
    m = base.clone(batch_directions=batched)
    np.testing.assert_array_equal(run(m), logits, err_msg=f'batch_directions={batched}')
    fused = _kernel_launches(forward(m), tree, images)
    per_block = 1 if batched else 2  # launches in the blocks' scan body
    assert fused['act_quant_segments'] == per_block
    assert fused['act_quant_sample'] == launches['act_quant_sample'] - per_block  # dt's
    assert fused['act_quant_dequantized'] == launches['act_quant_dequantized'] - per_block  # B/C
  intercepted = layers.module_by_module(base)
  assert 'act_quant_segments' not in _kernel_launches(forward(intercepted), tree, images)


@pytest.mark.parametrize('case', ['looped', 'vmapped', 'segments'])
def test_the_integer_forward_lowers_to_triton_for_an_h100(tiny, w4a4_untrained_run, monkeypatch,
                                                          case):
  """The whole integer-mode forward on the Triton kernels (act_quant, its segments, the mixed
  GEMM, the scan with the directions' mean) lowers for an abstract H100, as a card would
  compile it: the directions looped (batch >= 64 on a GPU) and vmapped (smaller batches).
  Catches a composition the kernels' own lowering tests miss before a card's time is spent
  on it."""
  from kernels_pallas import _pallas_compat  # pylint: disable=g-import-not-at-top
  from tests.kernels_pallas.abstract_gpu import abstract_h100  # pylint: disable=g-import-not-at-top
  model, _, images = tiny
  tree = rewrite.set_mode(w4a4_untrained_run[0], 'int')
  monkeypatch.setattr(_pallas_compat, 'default_interpret', lambda: False)
  monkeypatch.setattr(act_quant_config, 'SEGMENTS_IN_ONE_LAUNCH', int(case == 'segments'))
  m = model.clone(quant_implementation='triton', scan_implementation='triton',
                  batch_directions=case == 'vmapped', dtype=jnp.bfloat16)
  with abstract_h100():
    text = jax.jit(lambda p, x: m.apply({'params': p}, x)).trace(tree, images).lower(
        lowering_platforms=('cuda',)).as_text()
  kernels = set(re.findall(r"\bname = \"(\w+)\", num_stages", text))  # Triton kernel names
  want = {'act_quant_sample', 'act_quant_dequantized', 'mixed_gemm', 'selective_scan_fwd'}
  if case != 'vmapped':  # looped: the backward scan writes the directions' mean
    want.add('selective_scan_fwd_mean')
  if case == 'segments':
    want.add('act_quant_segments')
  assert kernels == want and '__gpu$xla.gpu.triton' in text
