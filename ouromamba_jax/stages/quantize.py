"""Mode `quantize`: calibrate config.model with config.quant and save the quantized checkpoint.

  python main.py --config=configs/vim_t_cifar10.py --config.mode=quantize \
      --config.quant.preset=w4a4 --config.quant.method=ouromamba --config.quant.calib_source=gen

Calibration images (`quant.calib_source`):
  gen    <workdir>/gen/synthetic.npz from mode `generate` (or `quant.gen_path`)
  noise  Gaussian N(0, quant.noise_std) in the normalised input space (seeded)
  real   `quant.calib_images` training images of config.data (seeded subset, normalised),
         via `ouromamba_jax.data.<name>.load('train', ...)`
Each is used as is unless `quant.calib_augment` (random-resized-crop + flip, once, seeded).

config.quant becomes a `QuantRunSpec` at the door (unknown fields refused); the library's
`quantize` gets the QuantSpec it builds, and this stage owns the run folder, the resume
snapshot, the skip-if-done check and the reports.

Outputs in <workdir>/quant/<run name>/ (run name: <method>_<preset>_<source> unless
`quant.run_name`):
  quantized/              the quantized param tree (Orbax + JSON with per-array CRC-32s),
                          written atomically; evaluate it with --config.mode=evaluate
                          --config.eval.quantized_checkpoint=<that folder>. A rerun that
                          finds it damaged says which array and redoes the run
  quant_report.json       sites, rules, per-block reconstruction losses, seconds
  losses.png              those per-block losses (initial scales vs trained) as a curve
  settings.json           what the run was made from (a rerun with the same settings skips)
  calibration_state.npz   per-block snapshot while calibrating (a killed run resumes; a
                          damaged one is refused, naming it: delete it and rerun)
  layers.{json,md}        per-layer SQNR / cosine of every quantized Linear
  outliers.{json,png}     outlier rate per time step and block (heatmap)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ouromamba_jax import data as data_lib
from ouromamba_jax import progress
from ouromamba_jax import quantized_checkpoints
from ouromamba_jax.data import normalization
from ouromamba_jax.io import atomic
from ouromamba_jax.io import integrity
from ouromamba_jax.quant import api
from ouromamba_jax.quant.run_spec import QuantRunSpec
from ouromamba_jax.stages import gen_outputs
from ouromamba_jax.stages import sections
from ouromamba_jax.train import augment

QUANT_SUBDIR = 'quant'
QUANTIZED_DIR = 'quantized'
REPORT_FILE = 'quant_report.json'
SETTINGS_FILE = 'settings.json'
SNAPSHOT_FILE = 'calibration_state.npz'
LOSSES_PNG = 'losses.png'
def run_spec(qcfg) -> QuantRunSpec:
  """config.quant as a QuantRunSpec (every value checked before any work)."""
  return sections.spec_from_section(QuantRunSpec, qcfg, 'quant')


def run_dir(workdir: str, spec: QuantRunSpec) -> str:
  return os.path.join(workdir, QUANT_SUBDIR, spec.name)


# ----------------------------------------------------------------------------------------------
# Calibration images.

def real_images(data_cfg, n: int, seed: int) -> np.ndarray:
  """n training images of data_cfg's dataset (seeded subset), normalised, NHWC float32."""
  module = data_lib.dataset_module(data_cfg.name)
  if not hasattr(module, 'load'):
    raise ValueError(f'quant.calib_source=real needs a training split, which the {data_cfg.name!r} '
                     'loader does not provide; use calib_source gen or noise.')
  split = module.load('train', data_cfg.data_dir, data_cfg.cache_dir, data_cfg.use_tfds)
  if n > len(split.labels):
    raise ValueError(f'quant.calib_images={n} exceeds the {len(split.labels)} training images.')
  keep = np.sort(np.random.default_rng(seed).permutation(len(split.labels))[:n])
  return np.asarray(normalization.normalize(split.images[keep], module.MEAN, module.STD))


def calibration_images(spec: QuantRunSpec, config, workdir: str, model,
                       log: progress.Log = progress.log_info) -> np.ndarray:
  """The calibration batch (N, H, W, C) float32 in the model's normalised input space,
  augmented once (seeded) with quant.calib_augment."""
  images = _source_images(spec, config, workdir, model, log)
  if not spec.calib_augment:
    return images
  key = jax.random.key(int(config.seed))
  return np.asarray(augment.random_resized_crop_flip(key, jnp.asarray(images)), np.float32)


def _source_images(spec: QuantRunSpec, config, workdir: str, model,
                   log: progress.Log) -> np.ndarray:
  n = spec.calib_images
  shape = (model.img_size, model.img_size, model.in_chans)
  if spec.calib_source == 'gen':
    path = spec.gen_path or gen_outputs.synthetic_path(workdir)
    images, _ = gen_outputs.load_synthetic(path)
    if images.shape[1:] != shape:
      raise ValueError(f'{path} holds images of shape {images.shape[1:]}, the model needs {shape}.')
    if len(images) < n:
      log(f'[quant] {path} holds {len(images)} images, fewer than quant.calib_images={n}; '
          f'calibrating on {len(images)}')
    return np.asarray(images[:n], np.float32)
  if spec.calib_source == 'noise':
    rng = np.random.default_rng(int(config.seed))
    return (rng.standard_normal((n,) + shape) * float(spec.noise_std)).astype(np.float32)
  return real_images(config.data, n, int(config.seed))


# ----------------------------------------------------------------------------------------------

def settings_fingerprint(spec: QuantRunSpec, config, images: np.ndarray) -> dict[str, Any]:
  """What a run is made of: a rerun with the same record skips, a different one recalibrates."""
  model = sections.as_dict(config.model)
  quant = json.loads(json.dumps(dataclasses.asdict(spec)))
  return {
      'model': json.loads(json.dumps(model, default=str)),
      'quant': {k: v for k, v in quant.items() if k != 'report_images'},
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
  quantized_checkpoints.recover(os.path.join(directory, QUANTIZED_DIR))
  return os.path.isfile(os.path.join(directory, QUANTIZED_DIR, quantized_checkpoints.META_FILE)) \
      and os.path.isfile(os.path.join(directory, REPORT_FILE))


def _remove(directory: str, names) -> None:
  for name in names:
    path = os.path.join(directory, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def load_finished(directory: str, model, name: str,
                  log: progress.Log = progress.log_info):
  """(qparams, report) of a finished run, or None when its checkpoint is damaged (the
  manifest's checksums, an unreadable array or a NaN): then the checkpoint is removed, so the
  caller recalibrates (replaying the blocks when the calibration snapshot is still there)."""
  checkpoint = os.path.join(directory, QUANTIZED_DIR)
  try:
    return quantized_checkpoints.load_quantized(checkpoint, model)
  except (integrity.DamagedFileError, integrity.NonFiniteError) as e:
    log(f'[quant] {name}: the finished run in {directory} is damaged ({e}); removing its '
        'checkpoint and redoing the run')
    _remove(directory, (QUANTIZED_DIR, REPORT_FILE))
    return None


def calibration_seconds(report) -> tuple[float, float]:
  """(block time of the whole calibration, the part spent by earlier killed processes): each
  block counts once, with the time recorded by the process that calibrated it; replaying the
  restored blocks is not calibration and is only in the whole call's time."""
  blocks = report.get('blocks', [])
  return (float(sum(b['seconds'] for b in blocks)),
          float(sum(b['seconds'] for b in blocks if b.get('restored'))))


def quantize_run(config, workdir: str, *, model=None, params=None,
                 log: progress.Log = progress.log_info) -> dict[str, Any]:
  """Calibrates one run (or skips it when its outputs exist for the same settings).

  Returns {'directory', 'checkpoint', 'report', 'skipped', 'calibration_seconds', ...}.
  """
  spec = run_spec(sections.section(config, 'quant', 'common.quant_config()'))
  if model is None or params is None:
    model, params = sections.load_model(config.model, seed=config.seed)
  directory = run_dir(workdir, spec)
  os.makedirs(directory, exist_ok=True)
  images = calibration_images(spec, config, workdir, model, log)
  settings = settings_fingerprint(spec, config, images)
  settings_path = os.path.join(directory, SETTINGS_FILE)
  old = atomic.read_json(settings_path)
  name = spec.name
  if old is not None and not same_settings(old, settings):
    log(f'[quant] {name}: settings changed since the last run in {directory}; recalibrating')
    _remove(directory, (QUANTIZED_DIR, REPORT_FILE, SNAPSHOT_FILE))
  checkpoint = os.path.join(directory, QUANTIZED_DIR)
  finished = None
  if same_settings(old, settings) and is_complete(directory):
    finished = load_finished(directory, model, name, log)
  if finished is not None:
    log(f'[quant] {name}: already done ({checkpoint}); skipping calibration')
    qparams, report = finished
    skipped = True
  else:
    atomic.write_json(settings_path, settings)
    log(f'[quant] {name}: {spec.method} {spec.preset} on {len(images)} {spec.calib_source} '
        f'images -> {directory}')
    snapshot = quantized_checkpoints.SnapshotFile(os.path.join(directory, SNAPSHOT_FILE))
    qparams, report = api.quantize(model, params, images, spec.quant_spec(), method=spec.method,
                                   mode=spec.mode, log=log, snapshot=snapshot)
    quantized_checkpoints.save_quantized(checkpoint, qparams, model, report)
    atomic.write_json(os.path.join(directory, REPORT_FILE), report)
    write_loss_curve(directory, report)
    skipped = False
  seconds, earlier = calibration_seconds(report)
  log(f'[quant] {name}: calibration {seconds:.1f} s (block time' +
      (f', of which {earlier:.1f} s by an earlier process, restored from the snapshot'
       if earlier else '') + f'; whole call {report.get("seconds", 0.0):.1f} s, this process); '
      f'checkpoint {checkpoint}')
  if spec.report_images:
    sample = images[:spec.report_images]
    if skipped and reports_done(directory, len(sample)):
      log(f'[quant] {name}: reports already in {directory}')
    else:
      write_layer_reports(directory, model, params, qparams, sample, log)
  return {'directory': directory, 'checkpoint': checkpoint, 'report': report, 'skipped': skipped,
          'calibration_seconds': seconds, 'calibration_seconds_earlier': earlier,
          'calibration_total_seconds': report.get('seconds'),
          'qparams': qparams, 'calib_images': int(len(images))}


def reports_done(directory: str, images: int) -> bool:
  """Whether a finished run's layer and outlier reports were made from `images` images."""
  from ouromamba_jax.reports import layer_error  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.reports import outliers  # pylint: disable=g-import-not-at-top
  layers = atomic.read_json(os.path.join(directory, layer_error.JSON_FILE))
  return (layers is not None and layers.get('images') == images
          and os.path.isfile(os.path.join(directory, outliers.JSON_FILE)))


def write_loss_curve(directory: str, report: dict[str, Any]) -> None:
  """losses.png: the per-block reconstruction losses of quant_report.json, drawn."""
  from ouromamba_jax.reports import curves  # pylint: disable=g-import-not-at-top
  if report.get('blocks'):
    curves.write_png(os.path.join(directory, LOSSES_PNG),
                     curves.calibration_panels(report['blocks']), x_label='block', columns=1,
                     caption=f'{report["method"]} calibration, {report["calibration_images"]} '
                             'images')


def write_layer_reports(directory: str, model, params, qparams, images,
                        log: progress.Log = progress.log_info) -> None:
  """layers.{json,md} (per-layer SQNR/cosine) and outliers.{json,png} for `images`."""
  from ouromamba_jax.reports import layer_error  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.reports import outliers  # pylint: disable=g-import-not-at-top
  log(f'[quant] reports on {len(images)} images: compiling the per-layer error and outlier '
      'passes ...')
  t0 = time.time()
  rows = layer_error.layer_errors(model, params, qparams, images)
  layer_error.write(directory, rows, images=len(images))
  rates = outliers.outlier_rates(model, qparams, images)
  outliers.write(directory, rates, title=os.path.basename(directory))
  worst = min(rows, key=lambda r: r['sqnr_db']) if rows else None
  log(f'[quant] reports in {directory} ({len(images)} images, {time.time() - t0:.1f} s)'
      + (f'; lowest SQNR {worst["sqnr_db"]:.1f} dB at {worst["layer"]}' if worst else ''))


def run(config, workdir: str) -> dict[str, Any]:
  result = quantize_run(config, workdir)
  result.pop('qparams')
  logging.info('[quant] done: %s', result['checkpoint'])
  return result


