"""Pieces of the block-wise loop, and that it trains: reconstruction falls, step sizes move, a
killed training run resumes bit for bit."""
import dataclasses
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax import quant
from ouromamba_jax import quantized_checkpoints
from ouromamba_jax import stop_request
from ouromamba_jax.quant import calibrate
from ouromamba_jax.quant import presets
from ouromamba_jax.quant import qtypes
from ouromamba_jax.quant import rewrite
from ouromamba_jax.quant.config import ActSpec, CalibSpec, QuantSpec
from tests import random_init


def test_cosine_loss():
  a = jnp.asarray([[[1.0, 0.0], [0.0, 2.0]]])
  np.testing.assert_allclose(float(calibrate.cosine_loss(a, 3 * a)), 0.0, atol=1e-7)
  np.testing.assert_allclose(float(calibrate.cosine_loss(a, -a)), 2.0, atol=1e-7)
  b = jnp.asarray([[[0.0, 1.0], [0.0, 1.0]]])
  np.testing.assert_allclose(float(calibrate.cosine_loss(a, b)), 0.5, atol=1e-7)


def test_cosine_loss_gradient_is_finite_for_an_all_zero_token():
  # A 4-bit Linear can map every channel of a token to code 0, so the block output has an
  # exactly zero row; its gradient must stay finite (was NaN: sqrt'(0) * 0 in the norm).
  out = jnp.asarray(random_init.normal(0, (2, 5, 8))).at[1, 3].set(0.0)
  target = jnp.asarray(random_init.normal(1, (2, 5, 8)))
  grad = jax.grad(calibrate.cosine_loss)(out, target)
  assert bool(jnp.all(jnp.isfinite(grad)))
  # The zero row contributes 1 - 0 / eps = 1 and no gradient through its norm; the others match
  # the plain formula.
  cos = jnp.sum(out * target, -1) / (jnp.linalg.norm(out, axis=-1) * jnp.linalg.norm(target, axis=-1) + 1e-30)
  np.testing.assert_allclose(float(calibrate.cosine_loss(out, target)), float(jnp.mean(1 - cos)), rtol=1e-6)


def test_only_step_sizes_are_trainable():
  tree = {'mixer': {
      'in_proj': {'kernel': qtypes.FakeQuantWeight(jnp.ones((4, 3)), jnp.ones(3), jnp.ones(4), 4)},
      'delta_quantizer': qtypes.ActQuantizer(jnp.ones(5), jnp.zeros(5), ActSpec(symmetric=False)),
      'D': jnp.ones(4)}}
  trainable, frozen = calibrate.split_trainable(tree)
  kernel = trainable['mixer']['in_proj']['kernel']
  assert kernel.weight is None and kernel.scale.shape == (3,) and kernel.smooth.shape == (4,)
  assert trainable['mixer']['delta_quantizer'].zero_point is None
  assert trainable['mixer']['D'] is None and frozen['mixer']['D'].shape == (4,)
  labels = calibrate.trainable_labels(trainable)
  assert labels['mixer']['in_proj']['kernel'].scale == 'weight'
  assert labels['mixer']['in_proj']['kernel'].smooth == 'smooth'
  assert labels['mixer']['delta_quantizer'].inlier_scale == 'act'
  merged = calibrate.merge_trainable(trainable, frozen)
  assert jax.tree.structure(merged) == jax.tree.structure(tree)
  # the optimizer only touches the trainable leaves
  opt = calibrate.make_optimizer(CalibSpec())
  state = opt.init(trainable)
  grads = jax.tree.map(jnp.ones_like, trainable)
  updates, _ = opt.update(grads, state, trainable)
  assert all(bool(jnp.all(u < 0)) for u in jax.tree.leaves(updates))


def test_micro_batches_cover_everything():
  assert calibrate.micro_batches(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]


def _minmax_w4a4(epochs: int = 3) -> QuantSpec:
  """W4A4 from min-max scales (far from the optimum, so training has room: on the tiny model the
  lp-searched scales are already within ~5% of what training reaches), 3 epochs x 2 steps."""
  sites = presets.w4a4().map(lambda spec: dataclasses.replace(spec, init='minmax'))
  return QuantSpec('w4a4_minmax', sites.rules(),
                   CalibSpec(epochs=epochs, micro_batch=4, lr_weight=0.02, lr_act=0.02))


@pytest.fixture(scope='module')
def trained(tiny):
  model, params, images = tiny
  return quant.quantize(model, params, images, _minmax_w4a4(), log=lambda _: None)


def test_training_lowers_the_reconstruction_loss_of_every_block(trained):
  # Fails when the optimiser update is removed: loss_final would equal loss_init.
  for block in trained[1]['blocks']:
    assert block['kept'] == 'trained' and block['steps'] == 6, block
    assert block['loss_final'] < 0.9 * block['loss_init'], block


def test_training_moves_the_step_sizes_off_their_initial_values(tiny, trained):
  _, params, _ = tiny
  leaves = rewrite.quantized_leaves(trained[0])
  for i in range(2):
    w = np.asarray(params[f'layers_{i}']['mixer']['in_proj']['kernel'])
    minmax = np.abs(w).max(axis=0) / 7
    learned = np.asarray(leaves[f'layers_{i}/mixer/in_proj/kernel'].scale)
    assert np.mean(np.abs(learned / minmax - 1) > 1e-3) > 0.5      # most scales moved


def test_a_stopped_then_killed_training_run_resumes_bit_for_bit(tiny, trained, tmp_path):
  """A SIGTERM in block 1 finishes and saves it, then stops; a later run killed in block 2
  leaves that snapshot as it was; the third run resumes from it bit for bit."""
  model, params, images = tiny
  snapshot = quantized_checkpoints.SnapshotFile(str(tmp_path / 'calibration_state.npz'))

  def terminate_in_block_1(msg):
    if 'block 1/2' in msg:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(stop_request.StopRequested, match='after block 1/2; the finished blocks'):
    quant.quantize(model, params, images, _minmax_w4a4(), snapshot=snapshot,
                   log=terminate_in_block_1)
  assert snapshot.load()[1]['next_block'] == 1

  def die_in_block_2(msg):
    if 'block 2/2' in msg:
      raise KeyboardInterrupt('killed')

  with pytest.raises(KeyboardInterrupt):
    quant.quantize(model, params, images, _minmax_w4a4(), snapshot=snapshot, log=die_in_block_2)
  assert snapshot.load()[1]['next_block'] == 1
  messages = []
  qparams, report = quant.quantize(model, params, images, _minmax_w4a4(), snapshot=snapshot,
                                   log=messages.append)
  assert any('resuming' in m and 'blocks 0..0 done' in m for m in messages)
  assert [b['restored'] for b in report['blocks']] == [True, False]   # its time is not redone
  assert [b['loss_final'] for b in report['blocks']] == [b['loss_final']
                                                         for b in trained[1]['blocks']]
  # The same tree (structure, static quantizer specs and every leaf, bit for bit) as the run
  # in one go: so the same logits, without compiling a forward of this tree only for that.
  assert jax.tree.structure(qparams) == jax.tree.structure(trained[0])
  for a, b in zip(jax.tree.leaves(qparams), jax.tree.leaves(trained[0]), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _rtn_spec():
  return quant.QuantRunSpec(preset='w4a4', micro_batch=4).quant_spec()


def test_a_nan_float_param_stops_at_its_block_before_the_block_is_snapshotted(tiny, tmp_path):
  model, params, images = tiny
  params = jax.tree.map(lambda x: x, params)
  kernel = params['layers_1']['mixer']['out_proj']['kernel']
  params['layers_1']['mixer']['out_proj']['kernel'] = kernel.at[0, 0].set(jnp.nan)
  snapshot = quantized_checkpoints.SnapshotFile(str(tmp_path / 'calibration_state.npz'))
  with pytest.raises(calibrate.NonFiniteCalibrationError,
                     match=r'^block 2/2 \(layers_1\): float param mixer/out_proj/kernel holds '
                           r'NaN/Inf; .*export it again\.$'):
    quant.quantize(model, params, images, _rtn_spec(), method='rtn', snapshot=snapshot,
                   log=lambda _: None)
  assert snapshot.load()[1]['next_block'] == 1      # block 1 kept, the bad block not saved


def test_non_finite_calibration_images_are_named_by_block_and_site(tiny):
  model, params, images = tiny
  with pytest.raises(calibrate.NonFiniteCalibrationError,
                     match=r'^block 1/2 \(layers_0\): calibration activations at site mixer/'
                           r'\S+ hold NaN/Inf; check that the calibration images'):
    quant.quantize(model, params, images.at[3, 0, 0, 0].set(jnp.inf), _rtn_spec(), method='rtn',
                   log=lambda _: None)


def test_a_non_finite_loss_names_the_block_and_the_quantizer(tiny, monkeypatch):
  model, params, images = tiny
  original = calibrate._init_layer  # pylint: disable=protected-access

  def poisoned(*args):
    def poison(path, leaf):
      name = '/'.join(calibrate._key_name(k) for k in path)  # pylint: disable=protected-access
      return leaf * jnp.nan if name == 'mixer/out_proj/input_quantizer/inlier_scale' else leaf
    return jax.tree_util.tree_map_with_path(poison, original(*args))

  monkeypatch.setattr(calibrate, '_init_layer', poisoned)
  with pytest.raises(calibrate.NonFiniteCalibrationError,
                     match=r'^block 1/2 \(layers_0\): the initial reconstruction loss is nan '
                           r'\(quantizer mixer/out_proj/input_quantizer/inlier_scale holds '
                           r'NaN/Inf\); lower quant\.lr_weight'):
    quant.quantize(model, params, images, _rtn_spec(), method='rtn', log=lambda _: None)


def test_progress_eta_leaves_the_compiling_block_out():
  lines, now = [], [0.0]
  progress = calibrate._Progress(lines.append, n_blocks=4, first_block=1,  # pylint: disable=protected-access
                                 clock=lambda: now[0])
  progress.compiling(1)
  progress.compiling(2)                                        # announced once
  for block, t in ((1, 100.0), (2, 110.0), (3, 120.0)):       # 100 s compiling, then 10 s each
    now[0] = t
    progress.block_done(block, 'x')
  assert len(lines) == 4 and 'compiling' in lines[0] and lines[0].startswith('[quant] block 2/4')
  assert lines[1].endswith('elapsed 1m40s, ETA after the next block (this one compiled)')
  assert lines[2].endswith('elapsed 1m50s, ETA 0m10s')         # one block left at 10 s
  assert lines[3].endswith('elapsed 2m00s')                     # the last: nothing left
