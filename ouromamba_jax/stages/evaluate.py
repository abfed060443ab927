"""Mode `evaluate`: top-1/top-5 of the float model or a quantized checkpoint -> WORKDIR/eval.json.

  python main.py --config=configs/vim_t_cifar10.py --config.mode=evaluate \
      [--config.eval.quantized_checkpoint=WORKDIR/quant/<run>/quantized] \
      [--config.data.eval_images=0]    # default: the pipeline demo's slice; 0 = the whole split

config.eval becomes an `EvalSpec` at the door; the split comes from config.data
(`ouromamba_jax.data.DATASETS`; `data.smoke_dir` stands in, labelled a smoke check, when
`data.data_dir` holds no data), and the scoring is the library's
`evaluation.evaluate_source`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from absl import logging
import ml_collections as mlc

from ouromamba_jax import checkpoints
from ouromamba_jax import data as data_lib
from ouromamba_jax import distributed
from ouromamba_jax import evaluation as evaluate_lib
from ouromamba_jax import quantized_checkpoints
from ouromamba_jax.data import pipeline
from ouromamba_jax.io import atomic
from ouromamba_jax.stages import quantize as quantize_stage
from ouromamba_jax.stages import sections
from ouromamba_jax.stages.eval_spec import EvalSpec

RESULT_FILE = 'eval.json'


def eval_spec(config) -> EvalSpec:
  return sections.spec_from_section(EvalSpec, sections.section(config, 'eval',
                                                                'common.eval_config()'), 'eval')


def evaluate_data(model, params, data_cfg, *, source: Optional[pipeline.EvalSource] = None,
                  log: Callable[[str], Any] = logging.info) -> dict[str, Any]:
  """The library's evaluate_source on config.data's split (opened here unless given), with
  data.eval_images and data.eval_batch_size."""
  if source is None:
    source = data_lib.eval_source(data_cfg, model.img_size)
  return evaluate_lib.evaluate_source(model, params, source, eval_images=int(data_cfg.eval_images),
                                      batch_size=int(data_cfg.eval_batch_size), log=log)


def open_source(data_cfg, img_size: int, log: Callable[[str], Any] = logging.info
                ) -> tuple[pipeline.EvalSource, bool]:
  """(split, is_smoke_check): config.data's evaluation split or, when it is not found and
  data.smoke_dir exists, that sample instead (a smoke check: too few images for an accuracy)."""
  try:
    return data_lib.eval_source(data_cfg, img_size), False
  except pipeline.DataNotFoundError:
    smoke_dir = data_cfg.get('smoke_dir', '')
    if not smoke_dir or not os.path.exists(smoke_dir):
      raise
  smoke_cfg = mlc.ConfigDict(data_cfg.to_dict())
  smoke_cfg.data_dir = smoke_dir
  source = data_lib.eval_source(smoke_cfg, img_size)
  log(f'[eval] no {data_cfg.name} data given (data.data_dir={data_cfg.data_dir!r}): evaluating '
      f'on the {len(source.labels)}-image sample {smoke_dir} as a SMOKE CHECK only (not an '
      f'accuracy measurement); set --config.data.data_dir=PATH to evaluate on the real split.')
  return source, True


def describe_count(source: pipeline.EvalSource, eval_images: int) -> str:
  """How many images an evaluation reads, and how to read them all when it is a slice."""
  total = len(source.labels)
  if 0 < eval_images < total:
    return (f'{eval_images} of the {total} images (the demo slice; --config.data.eval_images=0 '
            'evaluates all)')
  return f'all {total} images'


def quantized_folder(path: str) -> str:
  """The folder `save_quantized` wrote: `path` itself, or `path`/quantized (a quantize run's
  folder, WORKDIR/quant/<run>, as the pipeline lays them out). A clear error otherwise."""
  for folder in (path, os.path.join(path, quantize_stage.QUANTIZED_DIR)):
    if os.path.isfile(os.path.join(folder, quantized_checkpoints.META_FILE)):
      return folder
  what = 'is not a folder' if not os.path.isdir(path) else (
      f'holds no {quantized_checkpoints.META_FILE} (nor does its `quantized` subfolder)')
  raise FileNotFoundError(
      f'eval.quantized_checkpoint={path!r} {what}; point it at the `quantized` folder a '
      'quantize run wrote (WORKDIR/quant/<run>/quantized), or set it to "" for the float model.')


def check_weights(config, spec: EvalSpec) -> None:
  """Fails before any data or weights are read when the weights named cannot be loaded."""
  if spec.quantized_checkpoint:
    quantized_folder(spec.quantized_checkpoint)
  elif not config.model.checkpoint and not spec.allow_random_init:
    raise ValueError(checkpoints.missing_checkpoint_message(config.model.name) +
                     ' (Or pass --config.eval.allow_random_init=True to evaluate random weights.)')


def load_for_eval(config, spec: EvalSpec, model):
  """(params, description) for `model` (config.model's, its weights checked by `check_weights`):
  the quantized checkpoint if one is named (on that architecture, checked), else config.model's
  float weights (random ones only when eval.allow_random_init)."""
  if spec.quantized_checkpoint:
    qpath = quantized_folder(spec.quantized_checkpoint)
    params, _ = quantized_checkpoints.load_quantized(qpath, model,
                                                     mode=spec.quantized_mode or None)
    return params, f'quantized {os.path.abspath(qpath)}'
  params = sections.load_params(config.model, model, seed=config.seed)
  return params, config.model.checkpoint or f'random init (seed {config.seed})'


def run(config, workdir: str) -> dict[str, Any]:
  """Writes WORKDIR/eval.json (process 0; every process scores its share) and logs top-1/top-5.

  Order: weights named? -> data found? -> load weights -> evaluate, so a missing dataset is
  reported before a large checkpoint is read.
  """
  spec = eval_spec(config)
  check_weights(config, spec)
  model = sections.model_from_config(config.model)
  source, smoke = open_source(config.data, model.img_size)
  params, what = load_for_eval(config, spec, model)
  logging.info('[eval] model %s from %s on %s', config.model.name, what,
               describe_count(source, int(config.data.eval_images)))
  result = evaluate_data(model, params, config.data, source=source)
  record = {**result, 'model': config.model.name, 'weights': what,
            'data': config.data.name, 'data_dir': config.data.data_dir, 'smoke_check': smoke,
            'split': source.name, 'eval_images': int(config.data.eval_images)}
  path = os.path.join(workdir, RESULT_FILE)
  if distributed.is_writer():
    atomic.write_json(path, record)
    logging.info('[eval] wrote %s', path)
  distributed.barrier('eval.json')
  return record
