"""Mode `evaluate`: top-1/top-5 of the float model or a quantized checkpoint -> WORKDIR/eval.json.

  python main.py --config=configs/vim_t_cifar10.py --config.mode=evaluate \
      [--config.eval.quantized_checkpoint=WORKDIR/quant/<run>/quantized]

config.eval becomes an `EvalSpec` at the door; the split comes from config.data
(`ouromamba_jax.data.DATASETS`), and the scoring is the library's `evaluate.evaluate_source`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from absl import logging

from ouromamba_jax import checkpoints
from ouromamba_jax import data as data_lib
from ouromamba_jax import evaluation as evaluate_lib
from ouromamba_jax import quantized_checkpoints
from ouromamba_jax.data import pipeline
from ouromamba_jax.io import atomic
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


def _check_weights(config, spec: EvalSpec) -> None:
  """Fails before any data or weights are read when the weights named cannot be loaded."""
  if spec.quantized_checkpoint:
    if not os.path.isdir(spec.quantized_checkpoint):
      raise FileNotFoundError(
          f'eval.quantized_checkpoint={spec.quantized_checkpoint!r} is not a folder; point it at '
          'the `quantized` folder a quantize run wrote (WORKDIR/quantized), or set it to "" for '
          'the float model.')
  elif not config.model.checkpoint and not spec.allow_random_init:
    raise ValueError(checkpoints.missing_checkpoint_message(config.model.name) +
                     ' (Or pass --config.eval.allow_random_init=True to evaluate random weights.)')


def load_for_eval(config, spec: EvalSpec):
  """(model, params, description): the quantized checkpoint if one is named (on config.model's
  architecture, checked), else config.model's float weights (random ones only when
  eval.allow_random_init)."""
  _check_weights(config, spec)
  qpath = spec.quantized_checkpoint
  if qpath:
    model = sections.model_from_config(config.model)
    params, _ = quantized_checkpoints.load_quantized(qpath, model,
                                                     mode=spec.quantized_mode or None)
    return model, params, f'quantized {os.path.abspath(qpath)}'
  model, params = sections.load_model(config.model, seed=config.seed)
  return model, params, config.model.checkpoint or f'random init (seed {config.seed})'


def run(config, workdir: str) -> dict[str, Any]:
  """Writes WORKDIR/eval.json and logs top-1/top-5.

  Order: weights named? -> data found? -> load weights -> evaluate, so a missing dataset is
  reported before a large checkpoint is read.
  """
  spec = eval_spec(config)
  _check_weights(config, spec)
  img_size = sections.model_from_config(config.model).img_size
  try:
    source = data_lib.eval_source(config.data, img_size)
  except pipeline.DataNotFoundError as e:
    logging.error('[eval] no %s data found: %s', config.data.name, e)
    raise
  model, params, what = load_for_eval(config, spec)
  logging.info('[eval] model %s from %s', config.model.name, what)
  result = evaluate_data(model, params, config.data, source=source)
  record = {**result, 'model': config.model.name, 'weights': what,
            'data': config.data.name, 'data_dir': config.data.data_dir,
            'eval_images': int(config.data.eval_images)}
  path = os.path.join(workdir, RESULT_FILE)
  atomic.write_json(path, record)
  logging.info('[eval] wrote %s', path)
  return record
