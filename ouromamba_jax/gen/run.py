"""Mode `generate`: OuroMamba-Gen synthetic calibration images for config.model.

  python main.py --config=configs/vim_t_cifar10.py --config.mode=generate

Outputs go to <workdir>/gen/ (see `ouromamba_jax.gen.outputs`); rerunning after a kill resumes.
"""
from __future__ import annotations

import importlib
import os

from absl import logging
import numpy as np

from ouromamba_jax import checkpoints
from ouromamba_jax.gen import generator
from ouromamba_jax.gen import outputs
from ouromamba_jax.io import atomic
from ouromamba_jax.gen import quality


def _data_module(config):
  """The module of config.data's dataset (class names, normalisation), or None."""
  data = config.get('data')
  if data is None:
    return None
  try:
    return importlib.import_module(f'ouromamba_jax.data.{data.name}')
  except ImportError:
    return None


def class_names(config) -> tuple[str, ...]:
  """Class names for the grid labels, when the dataset module lists them (else indices)."""
  return tuple(getattr(_data_module(config), 'CLASSES', ()))


def _check_dataset_normalisation(config) -> None:
  """gen.mean/std must be the dataset's input normalisation: they set the pixel box the images
  are clipped to and the PNG colours, and the gen config's default is ImageNet's."""
  module = _data_module(config)
  if module is None or not hasattr(module, 'MEAN'):
    return
  want = (tuple(module.MEAN), tuple(module.STD))
  got = (tuple(config.gen.mean), tuple(config.gen.std))
  if [len(v) for v in got] != [len(v) for v in want] or not np.allclose(got, want, atol=1e-6):
    raise ValueError(f'gen.mean/std {got} differ from the {config.data.name} normalisation '
                     f'{want}; set config.gen.mean = {want[0]} and config.gen.std = {want[1]}.')


def run(config, workdir: str) -> generator.GenResult:
  if config.get('gen') is None:
    raise ValueError('the config has no `gen` section; add `c.gen = common.gen_config()`.')
  gen_cfg = config.gen
  _check_dataset_normalisation(config)
  directory = outputs.gen_dir(workdir)
  model, params = checkpoints.load_model(config.model, seed=config.seed)
  logging.info('gen: %d images x %d iterations, %d per step, model %s (checkpoint %r) -> %s',
               gen_cfg.num_images, gen_cfg.iterations,
               min(gen_cfg.images_per_step, gen_cfg.num_images), config.model.name,
               config.model.checkpoint, directory)
  result = generator.generate(model, params, gen_cfg, directory, seed=config.seed)
  outputs.write_synthetic_set(directory, result.images, result.labels, gen_cfg.mean, gen_cfg.std,
                              class_names(config), gen_cfg.grid_columns)
  atomic.write_json(os.path.join(directory, outputs.LOSSES_FILE),
                     {'metrics': list(generator.METRICS), 'groups': result.history})
  if gen_cfg.quality_check:
    report = dict(quality.quality_report(model, params, result.images, result.labels,
                                         seed=config.seed, noise_std=gen_cfg.init_std))
    for name, value in report.items():
      logging.info('gen quality: %s = %.4f', name, value)
    atomic.write_json(os.path.join(directory, outputs.QUALITY_FILE), report)
  logging.info('gen: wrote %s', outputs.synthetic_path(workdir))
  return result
