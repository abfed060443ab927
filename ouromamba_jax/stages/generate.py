"""Mode `generate`: OuroMamba-Gen synthetic calibration images for config.model.

  python main.py --config=configs/vim_t_cifar10.py --config.mode=generate

Outputs go to <workdir>/gen/ (see `gen_outputs`); the run's state is a `gen_store`, so
rerunning after a kill resumes.
"""
from __future__ import annotations

import json
import os

from absl import logging
import numpy as np

from ouromamba_jax import data as data_lib
from ouromamba_jax import distributed
from ouromamba_jax.gen import generator
from ouromamba_jax.gen import quality
from ouromamba_jax.gen.spec import GenSpec
from ouromamba_jax.io import atomic
from ouromamba_jax.stages import gen_outputs
from ouromamba_jax.stages import gen_store
from ouromamba_jax.stages import sections


def gen_spec(config) -> GenSpec:
  """config.gen as a GenSpec; mean/std left at () become config.data's normalisation, and set
  ones must equal it (they set the pixel box the images are clipped to and the PNG colours)."""
  gen_cfg = sections.section(config, 'gen', 'common.gen_config()')
  module = data_lib.dataset_module(config.data.name) if config.get('data') else None
  if module is None or not hasattr(module, 'MEAN'):
    return sections.spec_from_section(GenSpec, gen_cfg, 'gen')
  want = (tuple(module.MEAN), tuple(module.STD))
  spec = sections.spec_from_section(GenSpec, gen_cfg, 'gen', mean=want[0], std=want[1])
  got = (spec.mean, spec.std)
  if [len(v) for v in got] != [len(v) for v in want] or not np.allclose(got, want, atol=1e-6):
    raise ValueError(f'gen.mean/std {got} differ from the {config.data.name} normalisation '
                     f'{want}; leave them unset (the dataset\'s) or set config.gen.mean = '
                     f'{want[0]} and config.gen.std = {want[1]}.')
  return spec


def class_names(config) -> tuple[str, ...]:
  """Class names for the grid labels, when the dataset module lists them (else indices)."""
  if config.get('data') is None:
    return ()
  return tuple(getattr(data_lib.dataset_module(config.data.name), 'CLASSES', ()))


def judges_scored(directory: str, spec: GenSpec) -> bool:
  """Whether the quality file holds every judge of spec (a rerun may add judges)."""
  with open(os.path.join(directory, gen_outputs.QUALITY_FILE)) as f:
    report = json.load(f)
  return all(f'judge/{name}/synthetic_top1_agreement' in report for name in spec.judge_names)


def outputs_done(directory: str, result: generator.GenResult, spec: GenSpec) -> bool:
  """Whether a rerun's outputs are all there for these very images, so it only reads (Gen's
  quality check and the PNG are not redone, and their files keep their times)."""
  names = [gen_outputs.SYNTHETIC_FILE, gen_outputs.GRID_FILE, gen_outputs.LOSSES_FILE]
  names += [gen_outputs.QUALITY_FILE] if spec.quality_check else []
  if not all(os.path.isfile(os.path.join(directory, n)) for n in names):
    return False
  if spec.quality_check and not judges_scored(directory, spec):
    return False
  images, labels = gen_outputs.load_synthetic(os.path.join(directory, gen_outputs.SYNTHETIC_FILE))
  return np.array_equal(images, result.images) and np.array_equal(labels, result.labels)


def run(config, workdir: str) -> generator.GenResult:
  spec = gen_spec(config)
  directory = gen_outputs.gen_dir(workdir)
  model = sections.model_from_config(config.model)
  judges = [quality.bundled_judge(name, model.img_size, model.num_classes)
            for name in spec.judge_names]          # a mismatch fails before any weights are read
  params = sections.load_params(config.model, model, seed=config.seed)
  logging.info('gen: %d images x %d iterations, %d per step, model %s (checkpoint %r) -> %s',
               spec.num_images, spec.iterations, min(spec.images_per_step, spec.num_images),
               config.model.name, config.model.checkpoint, directory)
  store = gen_store.FolderGroupStore(directory, spec.keep_checkpoints)
  result = generator.generate(model, params, spec, seed=config.seed, store=store)
  if distributed.is_writer():
    write_outputs(config, directory, model, params, spec, result, judges)
  distributed.barrier('gen outputs')
  return result


def write_outputs(config, directory: str, model, params, spec: GenSpec,
                  result: generator.GenResult, judges) -> None:
  """synthetic.npz, the PNG grid, the loss curves and the quality check, the judges' scores
  included (none redone when they already hold these images)."""
  if outputs_done(directory, result, spec):
    logging.info('gen: %s already holds these images and reports; nothing rewritten', directory)
    return
  gen_outputs.write_synthetic_set(directory, result.images, result.labels, spec.mean, spec.std,
                                  class_names(config), spec.grid_columns)
  gen_outputs.write_losses(directory, generator.METRICS, result.history)
  if spec.quality_check:
    report = dict(quality.quality_report(model, params, result.images, result.labels,
                                         seed=config.seed, noise_std=spec.init_std))
    report.update(quality.judged_report(judges, result.images, result.labels, spec.mean,
                                        spec.std, model.num_classes, seed=config.seed,
                                        noise_std=spec.init_std))
    for name, value in report.items():
      logging.info('gen quality: %s = %.4f', name, value)
    atomic.write_json(os.path.join(directory, gen_outputs.QUALITY_FILE), report)
  logging.info('gen: wrote %s', os.path.join(directory, gen_outputs.SYNTHETIC_FILE))
