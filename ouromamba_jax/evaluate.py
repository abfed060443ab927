"""`main.py` mode `evaluate`: top-1/top-5 of a float or quantized model on an evaluation split.

  evaluate_params(model, params, config.data)   # -> {'top1', 'top5', 'images', ...}
  for name, value in evaluator(model, params, config.data): ...   # big_vision style

`params` is a float Flax tree or a quantized tree (`ouromamba_jax.quant.load_quantized`): the
model's apply runs both (its blocks under one scan: one block compiles, all run it).
The dataset is picked by `data_cfg.name` (`ouromamba_jax.data.DATASETS`); its host pipeline
decodes in threads ahead of the device.
"""
from __future__ import annotations

import datetime
import functools
import os
import time
from typing import Any, Callable, Iterator, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ouromamba_jax import checkpoints
from ouromamba_jax import convert
from ouromamba_jax import data as data_lib
from ouromamba_jax.data import pipeline
from ouromamba_jax.io import atomic

RESULT_FILE = 'eval.json'
LOG_EVERY_S = 10.0   # progress line at most this often (plus the first and the last batch)


@jax.jit
def _normalize(images_uint8, mean, std):
  return (images_uint8.astype(jnp.float32) / 255.0 - mean) / std


@functools.partial(jax.jit, static_argnames='k')
def _hits(logits, labels, k):
  top1 = jnp.sum(jnp.argmax(logits, -1) == labels)
  _, topk = jax.lax.top_k(logits, k)
  return top1, jnp.sum(jnp.any(topk == labels[:, None], axis=-1))


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, images):
  return model.apply({'params': params}, images)


def _count_correct(model, params, images_uint8, labels, mean, std, k):
  """(top-1 hits, top-k hits) of a batch; label -1 (padding) never hits."""
  logits = _logits(model, params, _normalize(images_uint8, mean, std))
  return _hits(logits, labels, k)


def _check_labels(source: pipeline.EvalSource, num_classes: int) -> None:
  if source.num_classes is not None and source.num_classes != num_classes:
    raise ValueError(
        f'{source.name} has {source.num_classes} classes but the model has {num_classes}. With '
        'class folders the class index is the folder position, so every class needs its folder; '
        'for a subset of classes use a labels file (FILE, LABEL lines; see '
        'ouromamba_jax/data/imagenet.py).')
  if len(source.labels) and (source.labels.min() < 0 or source.labels.max() >= num_classes):
    raise ValueError(f'{source.name}: labels span {source.labels.min()}..{source.labels.max()} '
                     f'but the model has {num_classes} classes (0..{num_classes - 1}).')


def _eta(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(round(seconds))))


def evaluator(model, params, data_cfg, *, log: Callable[[str], Any] = logging.info,
              threads: int = 0, source: Optional[pipeline.EvalSource] = None
              ) -> Iterator[tuple[str, Any]]:
  """Yields ('top1', .), ('top5', .), ('images', .), ('images_per_s', .), ('seconds', .).

  top5 is top-min(5, classes). images_per_s excludes the first batch (it includes the
  compilation) when there is more than one; seconds is the whole wall time. `source`: the
  split already opened by `data.eval_source` (else opened here from data_cfg).
  """
  t0 = time.perf_counter()
  if source is None:
    source = data_lib.eval_source(data_cfg, model.img_size)
  _check_labels(source, model.num_classes)
  indices = pipeline.subset_indices(len(source.labels), int(data_cfg.eval_images))
  n = len(indices)
  batch_size = min(int(data_cfg.eval_batch_size), n)
  k = min(5, model.num_classes)
  mean = jnp.asarray(source.mean, jnp.float32)
  std = jnp.asarray(source.std, jnp.float32)
  log(f'[eval] {source.name}: {n} images in batches of {batch_size} '
      f'({len(source.labels)} in the split)')

  hits, done, last_log = [], 0, 0.0
  t_first = None
  for batch in pipeline.batches(source, indices, batch_size, threads=threads):
    hits.append(_count_correct(model, params, batch.images, batch.labels, mean, std, k))
    done += batch.valid
    if t_first is None or done == n or time.perf_counter() - last_log >= LOG_EVERY_S:
      jax.block_until_ready(hits[-1])
      now = time.perf_counter()
      if t_first is None:
        t_first, first_done = now, done
      rate = (done - first_done) / (now - t_first) if done > first_done else done / (now - t0)
      log(f'[eval] {done}/{n} images ({100 * done / n:.1f}%)  {rate:.1f} images/s  '
          f'ETA {_eta((n - done) / rate) if rate > 0 else "?"}')
      last_log = now
  totals = np.sum(np.asarray(jax.device_get(hits), np.int64), axis=0)
  seconds = time.perf_counter() - t0
  steady = (n - first_done) / (now - t_first) if n > first_done else n / seconds
  yield 'top1', float(totals[0]) / n
  yield 'top5', float(totals[1]) / n
  yield 'images', int(n)
  yield 'images_per_s', float(steady)
  yield 'seconds', float(seconds)


def evaluate_params(model, params, data_cfg, *, log: Callable[[str], Any] = logging.info,
                    threads: int = 0, source: Optional[pipeline.EvalSource] = None
                    ) -> dict[str, Any]:
  """{'top1', 'top5', 'images', 'images_per_s', 'seconds'} of `params` on data_cfg's split."""
  result = dict(evaluator(model, params, data_cfg, log=log, threads=threads, source=source))
  log(f'[eval] top-1 {100 * result["top1"]:.2f}%  top-5 {100 * result["top5"]:.2f}%  '
      f'({result["images"]} images, {result["images_per_s"]:.1f} images/s, '
      f'{result["seconds"]:.1f} s)')
  return result


def _check_weights(config) -> None:
  """Fails before any data or weights are read when the weights named cannot be loaded."""
  ecfg = config.eval
  if ecfg.quantized_checkpoint:
    if not os.path.isdir(ecfg.quantized_checkpoint):
      raise FileNotFoundError(
          f'eval.quantized_checkpoint={ecfg.quantized_checkpoint!r} is not a folder; point it at '
          'the `quantized` folder a quantize run wrote (WORKDIR/quantized), or set it to "" for '
          'the float model.')
  elif not config.model.checkpoint and not ecfg.allow_random_init:
    raise ValueError(convert.missing_checkpoint_message(config.model.name) +
                     ' (Or pass --config.eval.allow_random_init=True to evaluate random weights.)')


def load_for_eval(config):
  """(model, params, description) for mode `evaluate`: the quantized checkpoint if one is
  named (on config.model's architecture), else config.model's float weights (random ones
  only when eval.allow_random_init)."""
  _check_weights(config)
  qpath = config.eval.quantized_checkpoint
  if qpath:
    from ouromamba_jax import quant  # pylint: disable=g-import-not-at-top
    params, _ = quant.load_quantized(qpath, mode=config.eval.quantized_mode or None)
    return (checkpoints.model_from_config(config.model), params,
            f'quantized {os.path.abspath(qpath)}')
  model, params = checkpoints.load_model(config.model, seed=config.seed)
  return model, params, config.model.checkpoint or f'random init (seed {config.seed})'


def run(config, workdir: str) -> dict[str, Any]:
  """Mode `evaluate`: writes WORKDIR/eval.json and logs top-1/top-5.

  Order: weights named? -> data found? -> load weights -> evaluate, so a missing dataset is
  reported before a large checkpoint is read.
  """
  _check_weights(config)
  img_size = checkpoints.model_from_config(config.model).img_size
  try:
    source = data_lib.eval_source(config.data, img_size)
  except pipeline.DataNotFoundError as e:
    logging.error('[eval] no %s data found: %s', config.data.name, e)
    raise
  model, params, what = load_for_eval(config)
  logging.info('[eval] model %s from %s', config.model.name, what)
  result = evaluate_params(model, params, config.data, source=source)
  record = {**result, 'model': config.model.name, 'weights': what,
            'data': config.data.name, 'data_dir': config.data.data_dir,
            'eval_images': int(config.data.eval_images)}
  path = os.path.join(workdir, RESULT_FILE)
  atomic.write_json(path, record)
  logging.info('[eval] wrote %s', path)
  return record
