"""Mode `quantize`: calibrate config.model with config.quant and save the quantized checkpoint.

  python main.py --config=configs/vim_t_cifar10.py --config.mode=quantize \
      --config.quant.preset=w4a4 --config.quant.method=ouromamba --config.quant.calib_source=gen

Calibration images (`quant.calib_source`):
  gen    <workdir>/gen/synthetic.npz from mode `generate` (or `quant.gen_path`)
  noise  Gaussian N(0, quant.noise_std) in the normalised input space (seeded)
  real   `quant.calib_images` training images of config.data (seeded subset, normalised, no
         augmentation), via `ouromamba_jax.data.<name>.load('train', ...)`

Outputs in <workdir>/quant/<run name>/ (run name: <method>_<preset>_<source> unless
`quant.run_name`):
  quantized/              the quantized param tree (Orbax + JSON), written atomically;
                          evaluate it with --config.mode=evaluate
                          --config.eval.quantized_checkpoint=<that folder>
  quant_report.json       sites, rules, per-block reconstruction losses, seconds
  settings.json           what the run was made from (a rerun with the same settings skips)
  calibration_state.npz   per-block snapshot while calibrating (a killed run resumes)
  layers.{json,md}        per-layer SQNR / cosine of every quantized Linear
  outliers.{json,png}     outlier rate per time step and block (heatmap)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Optional

from absl import logging
import numpy as np

from ouromamba_jax import checkpoints
from ouromamba_jax.io import atomic
from ouromamba_jax.quant import api
from ouromamba_jax.quant import calibrate
from ouromamba_jax.quant.config import default_config

SOURCES = ('gen', 'noise', 'real')
QUANT_SUBDIR = 'quant'
SETTINGS_FILE = 'settings.json'
# Fields of config.quant read here; the rest go to `api.quantize_from_config`.
RUN_FIELDS = ('calib_source', 'calib_images', 'noise_std', 'gen_path', 'report_images',
              'run_name')
Log = Callable[[str], None]


def _log(msg: str) -> None:
  logging.info('%s', msg)


def _as_dict(cfg) -> dict[str, Any]:
  return dict(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg)


def run_name(qcfg) -> str:
  q = _as_dict(qcfg)
  return q.get('run_name') or f'{q.get("method") or "ouromamba"}_{q["preset"]}_{q["calib_source"]}'


def run_dir(workdir: str, qcfg) -> str:
  return os.path.join(workdir, QUANT_SUBDIR, run_name(qcfg))


def check_quant_config(qcfg) -> None:
  """Rejects bad run-level values before any work (the spec checks its own fields)."""
  q = _as_dict(qcfg)
  if q.get('calib_source') not in SOURCES:
    raise ValueError(f'quant.calib_source must be one of {SOURCES}, got {q.get("calib_source")!r}.')
  n = q.get('calib_images')
  if not isinstance(n, int) or isinstance(n, bool) or n < 1:
    raise ValueError(f'quant.calib_images must be an int >= 1, got {n!r}.')
  if not q.get('noise_std', 1.0) > 0:
    raise ValueError(f'quant.noise_std must be > 0, got {q.get("noise_std")!r}.')
  known = set(default_config()) | set(RUN_FIELDS) | {'weight_bits', 'weight_lp', 'weight_n_grid',
                                                      'weight_init'}
  unknown = sorted(k for k in q if k not in known and not k.startswith('delta_'))
  if unknown:
    raise ValueError(f'unknown quant config fields {unknown}; known: {sorted(known)}.')
  from ouromamba_jax.quant import baselines  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.quant import config as qconfig  # pylint: disable=g-import-not-at-top
  baselines.check_method(q.get('method') or 'ouromamba')
  qconfig.spec_from_config({k: v for k, v in spec_settings(q).items()
                            if k not in ('method', 'mode')})  # bits, k, n_refresh, ...


def spec_settings(qcfg) -> dict[str, Any]:
  """The part of config.quant that `api.quantize_from_config` takes (None = preset value)."""
  return {k: v for k, v in _as_dict(qcfg).items() if k not in RUN_FIELDS and v is not None}


# ----------------------------------------------------------------------------------------------
# Calibration images.

def normalize(images_uint8: np.ndarray, mean, std) -> np.ndarray:
  x = np.asarray(images_uint8, np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def real_images(data_cfg, n: int, seed: int) -> np.ndarray:
  """n training images of data_cfg's dataset (seeded subset), normalised, NHWC float32."""
  from ouromamba_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  module = data_lib.dataset_module(data_cfg.name)
  if not hasattr(module, 'load'):
    raise ValueError(f'quant.calib_source=real needs a training split, which the {data_cfg.name!r} '
                     'loader does not provide; use calib_source gen or noise.')
  split = module.load('train', data_cfg.data_dir, data_cfg.cache_dir, data_cfg.use_tfds)
  if n > len(split.labels):
    raise ValueError(f'quant.calib_images={n} exceeds the {len(split.labels)} training images.')
  keep = np.sort(np.random.default_rng(seed).permutation(len(split.labels))[:n])
  return normalize(split.images[keep], module.MEAN, module.STD)


def calibration_images(config, workdir: str, model, log: Log = _log) -> np.ndarray:
  """The calibration batch (N, H, W, C) float32 in the model's normalised input space."""
  q = config.quant
  n = int(q.calib_images)
  shape = (model.img_size, model.img_size, model.in_chans)
  if q.calib_source == 'gen':
    from ouromamba_jax.gen import outputs  # pylint: disable=g-import-not-at-top
    path = q.get('gen_path') or outputs.synthetic_path(workdir)
    images, _ = outputs.load_synthetic(path)
    if images.shape[1:] != shape:
      raise ValueError(f'{path} holds images of shape {images.shape[1:]}, the model needs {shape}.')
    if len(images) < n:
      log(f'[quant] {path} holds {len(images)} images, fewer than quant.calib_images={n}; '
          f'calibrating on {len(images)}')
    return np.asarray(images[:n], np.float32)
  if q.calib_source == 'noise':
    rng = np.random.default_rng(int(config.seed))
    return (rng.standard_normal((n,) + shape) * float(q.noise_std)).astype(np.float32)
  return real_images(config.data, n, int(config.seed))


# ----------------------------------------------------------------------------------------------

def settings_fingerprint(config, images: np.ndarray) -> dict[str, Any]:
  """What a run is made of: a rerun with the same record skips, a different one recalibrates."""
  model = _as_dict(config.model)
  return {
      'model': json.loads(json.dumps(model, default=str)),
      'quant': {k: v for k, v in _as_dict(config.quant).items() if k != 'report_images'},
      'images_sha256': hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
      'images_shape': list(images.shape),
  }


def same_settings(old: Optional[dict[str, Any]], new: dict[str, Any]) -> bool:
  """Fingerprints equal up to unset (None) quant fields, so a new optional config field does
  not invalidate finished runs."""
  if old is None:
    return False
  unset_dropped = lambda d: {**d, 'quant': {k: v for k, v in d.get('quant', {}).items()
                                            if v is not None}}
  return unset_dropped(old) == unset_dropped(new)


def is_complete(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, api.QUANTIZED_DIR, 'quant_meta.json')) and \
      os.path.isfile(os.path.join(directory, api.REPORT_FILE))


def quantize_run(config, workdir: str, *, model=None, params=None, log: Log = _log,
                 report_images: Optional[np.ndarray] = None) -> dict[str, Any]:
  """Calibrates one run (or skips it when its outputs exist for the same settings).

  Returns {'directory', 'checkpoint', 'report', 'skipped', 'calibration_seconds'}.
  """
  q = config.quant
  check_quant_config(q)
  if model is None or params is None:
    model, params = checkpoints.load_model(config.model, seed=config.seed)
  directory = run_dir(workdir, q)
  os.makedirs(directory, exist_ok=True)
  images = calibration_images(config, workdir, model, log)
  settings = settings_fingerprint(config, images)
  settings_path = os.path.join(directory, SETTINGS_FILE)
  old = atomic.read_json(settings_path)
  name = run_name(q)
  if old is not None and not same_settings(old, settings):
    log(f'[quant] {name}: settings changed since the last run in {directory}; recalibrating')
    for stale in (api.QUANTIZED_DIR, api.REPORT_FILE, calibrate.SNAPSHOT):
      path = os.path.join(directory, stale)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)
  checkpoint = os.path.join(directory, api.QUANTIZED_DIR)
  if same_settings(old, settings) and is_complete(directory):
    log(f'[quant] {name}: already done ({checkpoint}); skipping calibration')
    qparams, report = api.load_quantized(checkpoint)
    skipped = True
  else:
    atomic.write_json(settings_path, settings)
    log(f'[quant] {name}: {q.method} {q.preset} on {len(images)} {q.calib_source} images '
        f'-> {directory}')
    qparams, report = api.quantize_from_config(model, params, images, spec_settings(q),
                                               workdir=directory, log=log)
    skipped = False
  seconds = float(sum(b['seconds'] for b in report.get('blocks', [])))
  log(f'[quant] {name}: calibration {seconds:.1f} s (block time; whole call '
      f'{report.get("seconds", 0.0):.1f} s); checkpoint {checkpoint}')
  n_report = int(q.get('report_images') or 0)
  if n_report:
    sample = images if report_images is None else report_images
    write_layer_reports(directory, model, params, qparams, sample[:n_report], log)
  return {'directory': directory, 'checkpoint': checkpoint, 'report': report, 'skipped': skipped,
          'calibration_seconds': seconds, 'calibration_total_seconds': report.get('seconds'),
          'qparams': qparams, 'calib_images': int(len(images))}


def write_layer_reports(directory: str, model, params, qparams, images, log: Log = _log) -> None:
  """layers.{json,md} (per-layer SQNR/cosine) and outliers.{json,png} for `images`."""
  from ouromamba_jax.reports import layer_error  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.reports import outliers  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  rows = layer_error.layer_errors(model, params, qparams, images)
  layer_error.write(directory, rows, images=len(images))
  rates = outliers.outlier_rates(model, qparams, images)
  outliers.write(directory, rates, title=os.path.basename(directory))
  worst = min(rows, key=lambda r: r['sqnr_db']) if rows else None
  log(f'[quant] reports in {directory} ({len(images)} images, {time.time() - t0:.1f} s)'
      + (f'; lowest SQNR {worst["sqnr_db"]:.1f} dB at {worst["layer"]}' if worst else ''))


def run(config, workdir: str) -> dict[str, Any]:
  if config.get('quant') is None:
    raise ValueError('the config has no `quant` section; add `c.quant = common.quant_config()`.')
  result = quantize_run(config, workdir)
  result.pop('qparams')
  logging.info('[quant] done: %s', result['checkpoint'])
  return result


