"""Top-1/top-5 of a float or quantized model: on arrays, or streamed from an evaluation split.

  evaluate(model, params, images, labels)        # normalised arrays -> {'top1', 'top5', 'images'}
  evaluate_source(model, params, source)         # a data.pipeline.EvalSource -> + throughput
  for name, value in evaluator(model, params, source): ...   # big_vision style

`params` is a float Flax tree or a quantized tree (`ouromamba_jax.quant.load_quantized`): the
model's apply runs both (its blocks under one scan: one block compiles, all run it).
A source's host pipeline decodes in threads ahead of the device.
"""
from __future__ import annotations

import datetime
import functools
import time
from typing import Any, Callable, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ouromamba_jax.data import normalization
from ouromamba_jax.data import pipeline

LOG_EVERY_S = 10.0   # progress line at most this often (plus the first and the last batch)


_normalize = jax.jit(normalization.normalize)


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


def evaluator(model, params, source: pipeline.EvalSource, *, eval_images: int = 0,
              batch_size: int = 256, log: Callable[[str], Any] = logging.info, threads: int = 0
              ) -> Iterator[tuple[str, Any]]:
  """Yields ('top1', .), ('top5', .), ('images', .), ('images_per_s', .), ('seconds', .).

  eval_images: a fixed subset of the split (0 = all). top5 is top-min(5, classes).
  images_per_s excludes the first batch (it includes the compilation) when there is more than
  one; seconds is the whole wall time.
  """
  t0 = time.perf_counter()
  _check_labels(source, model.num_classes)
  indices = pipeline.subset_indices(len(source.labels), int(eval_images))
  n = len(indices)
  batch_size = min(int(batch_size), n)
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


def evaluate_source(model, params, source: pipeline.EvalSource, *, eval_images: int = 0,
                    batch_size: int = 256, log: Callable[[str], Any] = logging.info,
                    threads: int = 0) -> dict[str, Any]:
  """{'top1', 'top5', 'images', 'images_per_s', 'seconds'} of `params` on `source`."""
  result = dict(evaluator(model, params, source, eval_images=eval_images, batch_size=batch_size,
                          log=log, threads=threads))
  log(f'[eval] top-1 {100 * result["top1"]:.2f}%  top-5 {100 * result["top5"]:.2f}%  '
      f'({result["images"]} images, {result["images_per_s"]:.1f} images/s, '
      f'{result["seconds"]:.1f} s)')
  return result


def evaluate(model, params, images, labels, *, batch_size: int = 256) -> dict[str, Any]:
  """{'top1', 'top5', 'images'} of `params` on normalised NHWC float `images` and int labels
  (normalise uint8 pixels with `data.normalization.normalize` and the dataset's MEAN / STD)."""
  images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
  if images.ndim != 4 or len(images) != len(labels) or not len(labels):
    raise ValueError(f'evaluate needs NHWC images and one label each, got {images.shape} and '
                     f'{labels.shape}.')
  k = min(5, model.num_classes)
  hits = []
  for start in range(0, len(labels), batch_size):
    chunk = slice(start, start + batch_size)
    logits = _logits(model, params, jnp.asarray(images[chunk]))
    hits.append(_hits(logits, jnp.asarray(labels[chunk]), k))
  totals = np.sum(np.asarray(jax.device_get(hits), np.int64), axis=0)
  n = len(labels)
  return {'top1': float(totals[0]) / n, 'top5': float(totals[1]) / n, 'images': int(n)}
