"""One call from FP params + calibration images to a quantized param tree and a report.

    qparams, report = quantize(model, params, images, 'w4a4', method='ouromamba')
    logits = model.apply({'params': qparams}, images)

`spec` is a QuantSpec or a preset name (`presets.PRESETS`; a config's overrides build a
QuantSpec through `run_spec.QuantRunSpec`). With a `snapshot`
(`quantized_checkpoints.SnapshotFile`), calibration saves each finished block and a killed
run resumes; saving the result is `quantized_checkpoints.save_quantized`.
"""
from __future__ import annotations

import time
from typing import Optional, Union

import jax
import jax.numpy as jnp

from ouromamba_jax import progress
from ouromamba_jax.io import integrity
from ouromamba_jax.models import blockwise
from ouromamba_jax.models import vim
from ouromamba_jax.quant import baselines
from ouromamba_jax.quant import calibrate
from ouromamba_jax.quant import presets
from ouromamba_jax.quant import qtypes
from ouromamba_jax.quant import rewrite
from ouromamba_jax.quant import rules as rules_lib
from ouromamba_jax.quant.config import ActSpec, QuantSpec


def quantize(model, params, calib_images, spec: Union[QuantSpec, str], *,
             method: str = 'ouromamba', mode: str = 'fake',
             log: Optional[progress.Log] = None, snapshot=None):
  """Returns (qparams, report). mode: 'fake' (float simulation of the integer math) or 'int'
  (real integer dots); both give the same logits. The weights are integer codes either way."""
  log = log or progress.log_info
  baselines.check_method(method)
  qtypes.check_mode(mode)
  spec = presets.preset(spec) if isinstance(spec, str) else spec
  if not isinstance(spec, QuantSpec):
    raise TypeError(f'spec must be a QuantSpec or a preset name, got {type(spec).__name__}; '
                    'build one from settings with QuantRunSpec(preset=..., ...).quant_spec().')
  images = jnp.asarray(calib_images, jnp.float32)
  if images.ndim != 4 or images.shape[0] < 1:
    raise ValueError(f'calib_images must be a non-empty NHWC batch, got shape {images.shape}.')
  if isinstance(model, vim.VisionMamba) and vim.holds_stacked_directions(params):
    raise ValueError('params hold the mixers\' directions stacked (vim.with_directions_stacked '
                     'prepares a tree for inference forwards only): the site search and the '
                     'calibration need the per-direction params; quantize the tree as loaded.')
  t0 = time.time()
  sites = rules_lib.find_sites(model, params, images[:1])
  match = rules_lib.match_rules(sites, spec.rules)
  plan = baselines.adapt_plan(match.plan, sites, method)
  rules_lib.check_plan(plan, sites)
  by_blocks = blockwise.supports(model)
  if by_blocks:
    check_refresh(plan, model.seq_len if isinstance(model, vim.VisionMamba)
                  else max(h * w for h, w in model.stage_grids()))
  calib = baselines.adapt_calib(spec.calib, method)
  for index, pattern in match.unused_rules:
    log(f'[quant] rule {index} {pattern!r} matched no site')
  log(f'[quant] {method} {spec.name}: {len(plan)} sites quantized, '
      f'{len(sites) - len(plan)} kept float, {images.shape[0]} calibration images')

  if by_blocks:
    qparams, results = calibrate.reconstruct_blocks(
        model, params, images, plan, sites, calib, smoothing=baselines.uses_smoothing(method),
        snapshot=snapshot, method=method, log=log)
    outside = [s for s in sites if blockwise.piece_of(model, s.path) is None]
    qparams = _quantize_outside_blocks(model, qparams, images, plan, outside, calib, method)
  else:
    log(f'[quant] {type(model).__name__} has no block-wise reconstruction (DEVIATIONS.md): '
        'every site keeps its initial scales from one float pass')
    results = []
    qparams = _quantize_outside_blocks(model, params, images, plan, sites, calib, method,
                                       where='one-pass calibration')
  qparams = rewrite.set_mode(qparams, mode)

  final = rules_lib.RuleMatch(plan, match.matched_by,
                              [s.path for s in sites if s.path not in plan], match.unused_rules)
  report = {
      'method': method, 'spec': spec.to_json(), 'mode': mode,
      'calibration_images': int(images.shape[0]), **final.report(sites),
      'blocks': [r.__dict__ for r in results], 'seconds': time.time() - t0,
      'quantized_bytes': rewrite.tree_bytes(qparams), 'float_bytes': rewrite.tree_bytes(params),
  }
  return qparams, report


def check_refresh(plan, seq_len: int) -> None:
  """n_refresh past the sequence never resets the outlier set, which is surely not what was
  meant; the spec cannot check it (it does not know the model), so quantize does."""
  for path, spec in sorted(plan.items()):
    if isinstance(spec, ActSpec) and spec.outliers != 'none' and spec.n_refresh > seq_len:
      raise ValueError(f'n_refresh={spec.n_refresh} (at {path}) is beyond the model\'s '
                       f'sequence length of {seq_len} tokens, so the outlier set is never reset; '
                       f'set quant.n_refresh <= {seq_len}.')


def to_integer(qparams):
  """The integer form: every quantized Linear runs integer dots (same logits as 'fake')."""
  return rewrite.set_mode(qparams, 'int')


def _quantize_outside_blocks(model, qparams, images, plan, sites, calib, method,
                             where: str = 'outside the blocks'):
  """`sites` (outside the blocks, e.g. the head if a rule asks for it; for models without
  block-wise calibration, all) get initial scales from the inputs the (partly) quantized model
  feeds them; no reconstruction."""
  rest = [s for s in sites if s.path in plan]
  if not rest:
    return qparams
  paths = [s.path for s in rest if s.kind != 'weight']
  run = jax.jit(lambda p, x: rewrite.capture(lambda t, x: model.apply({'params': t}, x),
                                             p, paths, x)[1])
  parts = [run(qparams, images[s]) for s in calibrate.micro_batches(images.shape[0],
                                                                    calib.micro_batch)]
  stats = {p: jnp.concatenate([part[p] for part in parts]) for p in paths}
  for path, x in stats.items():
    if integrity.count_nonfinite(jax.device_get(x)):
      raise calibrate.NonFiniteCalibrationError(
          f'{where}: calibration activations at site {path} hold NaN/Inf; the float params '
          'before it (e.g. norm_f, classifier_norm) are not finite: load them with '
          'load_checkpoint, which names the bad tensor.')
  smooth = {}
  if baselines.uses_smoothing(method):
    smooth = calibrate.smoothing_for_sites(qparams, rest, stats, calib)
  return rewrite.rewrite(qparams, plan, rest, stats, smooth)
