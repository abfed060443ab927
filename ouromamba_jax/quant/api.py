"""One call from FP params + calibration images to a quantized param tree and a report.

    qparams, report = quantize(model, params, images, 'w4a4', method='ouromamba', workdir=wd)
    logits = model.apply({'params': qparams}, images)

`spec` is a QuantSpec, a preset name, or a config mapping {'preset': ..., **overrides} (see
`config.spec_from_config`). With a workdir, calibration snapshots each block (a killed run
resumes), and the result is saved to `<workdir>/quantized` (reload with `load_quantized`)
together with `<workdir>/quant_report.json`.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp

from ouromamba_jax.io import atomic
from ouromamba_jax.quant import baselines
from ouromamba_jax.quant import calibrate
from ouromamba_jax.quant import checkpoint
from ouromamba_jax.quant import rewrite
from ouromamba_jax.quant import rules as rules_lib
from ouromamba_jax.quant.config import QuantSpec, spec_from_config

QUANTIZED_DIR = 'quantized'
REPORT_FILE = 'quant_report.json'


def quantize(model, params, calib_images, spec: Union[QuantSpec, str, Mapping[str, Any]], *,
             method: str = 'ouromamba', workdir: Optional[str] = None, mode: str = 'fake',
             log: Optional[calibrate.Log] = None):
  """Returns (qparams, report). mode: 'fake' (float simulation of the integer math) or 'int'
  (real integer dots); both give the same logits. The weights are integer codes either way."""
  log = log or calibrate._default_log  # pylint: disable=protected-access
  baselines.check_method(method)
  spec = spec_from_config(spec)
  images = jnp.asarray(calib_images, jnp.float32)
  if images.ndim != 4 or images.shape[0] < 1:
    raise ValueError(f'calib_images must be a non-empty NHWC batch, got shape {images.shape}.')
  t0 = time.time()
  sites = rules_lib.find_sites(model, params, images[:1])
  match = rules_lib.match_rules(sites, spec.rules)
  plan = baselines.adapt_plan(match.plan, sites, method)
  rules_lib.check_plan(plan, sites)
  calib = baselines.adapt_calib(spec.calib, method)
  for index, pattern in match.unused_rules:
    log(f'[quant] rule {index} {pattern!r} matched no site')
  log(f'[quant] {method} {spec.name}: {len(plan)} sites quantized, '
      f'{len(sites) - len(plan)} kept float, {images.shape[0]} calibration images')

  if workdir:
    os.makedirs(workdir, exist_ok=True)
  qparams, results = calibrate.reconstruct_blocks(
      model, params, images, plan, sites, calib, smoothing=baselines.uses_smoothing(method),
      workdir=workdir, method=method, log=log)
  qparams = _quantize_outside_blocks(model, qparams, images, plan, sites, calib, method)
  qparams = rewrite.set_mode(qparams, mode)

  final = rules_lib.RuleMatch(plan, match.matched_by,
                              [s.path for s in sites if s.path not in plan], match.unused_rules)
  report = {
      'method': method, 'spec': spec.to_json(), 'mode': mode,
      'calibration_images': int(images.shape[0]), **final.report(sites),
      'blocks': [r.__dict__ for r in results], 'seconds': time.time() - t0,
      'quantized_bytes': rewrite.tree_bytes(qparams), 'float_bytes': rewrite.tree_bytes(params),
  }
  if workdir:
    save_quantized(os.path.join(workdir, QUANTIZED_DIR), qparams, report)
    atomic.write_json(os.path.join(workdir, REPORT_FILE), report)
  return qparams, report


def _quantize_outside_blocks(model, qparams, images, plan, sites, calib, method):
  """Sites outside the blocks (e.g. the head, if a rule asks for it): initial scales from the
  inputs the quantized model feeds them; no reconstruction (there is no block to match)."""
  rest = [s for s in sites if s.block is None and s.path in plan]
  if not rest:
    return qparams
  paths = [s.path for s in rest if s.kind != 'weight']
  run = jax.jit(lambda p, x: rewrite.capture(lambda t, x: model.apply({'params': t}, x),
                                             p, paths, x)[1])
  parts = [run(qparams, images[s]) for s in calibrate.micro_batches(images.shape[0],
                                                                    calib.micro_batch)]
  stats = {p: jnp.concatenate([part[p] for part in parts]) for p in paths}
  smooth = {}
  if baselines.uses_smoothing(method):
    smooth = calibrate.smoothing_for_sites(qparams, rest, stats, calib)
  return rewrite.rewrite(qparams, plan, rest, stats, smooth)


def quantize_from_config(model, params, calib_images, cfg: Mapping[str, Any], *,
                         workdir: Optional[str] = None, log: Optional[calibrate.Log] = None):
  """`quantize` driven by one config mapping: `method` and `mode` plus the spec fields
  ({'preset': 'w4a4', 'n_refresh': 10, 'epochs': 10, ...}, see `config.default_config`)."""
  cfg = dict(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg)
  method = cfg.pop('method', None) or 'ouromamba'
  mode = cfg.pop('mode', None) or 'fake'
  return quantize(model, params, calib_images, cfg, method=method, mode=mode, workdir=workdir,
                  log=log)


def save_quantized(path: str, qparams, report: Optional[Mapping[str, Any]] = None) -> str:
  """Saves a quantized tree (Orbax) so evaluation can reload it without recalibrating."""
  return checkpoint.save_quantized(path, qparams, {'report': dict(report or {})})


def load_quantized(path: str, mode: Optional[str] = None):
  """Returns (qparams, report); `mode` ('fake' | 'int') switches the execution mode."""
  qparams, extra = checkpoint.load_quantized(path)
  if mode is not None:
    qparams = rewrite.set_mode(qparams, mode)
  return qparams, extra.get('report', {})
