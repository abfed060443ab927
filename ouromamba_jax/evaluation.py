"""Top-1/top-5 of a float or quantized model: on arrays, or streamed from an evaluation split.

  evaluate(model, params, images, labels)        # normalised arrays -> {'top1', 'top5', 'images'}
  evaluate_source(model, params, source)         # a data.pipeline.EvalSource -> + throughput
  for name, value in evaluator(model, params, source): ...   # big_vision style

`params` is a float Flax tree or a quantized tree (`quantized_checkpoints.load_quantized`): the
model's apply runs both (its blocks under one scan: one block compiles, all run it), laid out
for the batch each device runs, A/D sites folded (`inference.prepared_for_inference`).
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ouromamba_jax.data import normalization
from ouromamba_jax import distributed
from ouromamba_jax.distributed import DATA_AXIS, data_mesh
from ouromamba_jax.data import pipeline
from ouromamba_jax.inference import prepared_for_inference

LOG_EVERY_S = 10.0   # progress line at most this often (plus the first and the last batch)


def _hits(logits, labels, k):
  top1 = jnp.sum(jnp.argmax(logits, -1) == labels)
  _, topk = jax.lax.top_k(logits, k)
  return top1, jnp.sum(jnp.any(topk == labels[:, None], axis=-1))


@functools.lru_cache(maxsize=None)
def _counter(model, mesh: Mesh, k: int, normalize: bool):
  """jit(params, images, labels, mean, std) -> (top-1 hits, top-k hits) of a batch split over
  `mesh`: each device scores its rows (`shard_map`, so Pallas kernels run on their own shard)
  and the counts are summed over the mesh. Label -1 (padding) never hits."""
  def local(params, images, labels, mean, std):
    if normalize:
      images = normalization.normalize(images, mean, std)
    hits = _hits(model.apply({'params': params}, images), labels, k)
    return tuple(jax.lax.psum(h, DATA_AXIS) for h in hits)

  data, rep = PartitionSpec(DATA_AXIS), PartitionSpec()
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(rep, data, data, rep, rep),
                               out_specs=(rep, rep), check_vma=False))


def _global_batch(mesh: Mesh, local_rows: np.ndarray) -> jax.Array:
  """This process's rows as its part of a batch split over every process's devices."""
  return jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec(DATA_AXIS)),
                                                local_rows)


def process_share(indices: np.ndarray, batch_size: int) -> tuple[np.ndarray, int, int]:
  """(this process's indices, its rows per batch, batches): every process reads its own
  contiguous part, in batches of the same count (a process that runs out sends padding)."""
  procs, devices = distributed.process_count(), distributed.device_count()
  per_process = -(-max(batch_size, devices) // devices) * (devices // procs)
  parts = np.array_split(indices, procs)
  num_batches = -(-len(parts[0]) // per_process)
  return parts[distributed.process_index()], per_process, num_batches


def _served(model, params, mesh: Mesh, rows: int):
  """params prepared for the batch one device runs (this process's `rows` per batch, times
  the processes, over the mesh) and replicated over the mesh."""
  per_device = rows * distributed.process_count() // mesh.size
  return distributed.replicate(prepared_for_inference(model, params, per_device), mesh)


def _padded(batch_iter: Iterator[pipeline.Batch], num_batches: int, rows: int, size: int
            ) -> Iterator[pipeline.Batch]:
  """`batch_iter`, then all-padding batches up to `num_batches` (collectives need every
  process to take part in every batch)."""
  done = 0
  for batch in batch_iter:
    done += 1
    yield batch
  for _ in range(num_batches - done):
    yield pipeline.Batch(np.zeros((rows, size, size, 3), np.uint8), np.full((rows,), -1, np.int32),
                         0)


def _check_labels(source: pipeline.EvalSource, num_classes: int) -> None:
  if source.num_classes is not None and source.num_classes != num_classes:
    raise ValueError(
        f'{source.name} has {source.num_classes} classes but the model has {num_classes}. With '
        'class folders the class index is the folder position, so every class needs its folder; '
        'for a subset of classes use a labels file (FILE, LABEL lines; see '
        'ouromamba_jax/data/imagenet.py).')
  _check_label_range(source.labels, num_classes, source.name)


def _check_label_range(labels: np.ndarray, num_classes: int, what: str) -> None:
  """Refuses labels outside 0..num_classes-1: scored, they would silently count as misses."""
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{what}: labels span {labels.min()}..{labels.max()} '
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
  k = min(5, model.num_classes)
  mesh = data_mesh()
  count = _counter(model, mesh, k, True)
  mean = np.asarray(source.mean, np.float32)
  std = np.asarray(source.std, np.float32)
  mine, rows, num_batches = process_share(indices, min(int(batch_size), n))
  global_rows = rows * distributed.process_count()
  params = _served(model, params, mesh, rows)
  log(f'[eval] {source.name}: {n} images in batches of {global_rows} '
      f'({len(source.labels)} in the split, {mesh.size} devices)')

  local = pipeline.batches(source, mine, rows, threads=threads)
  hits, done, last_log = [], 0, 0.0
  t_first = None
  for b, batch in enumerate(_padded(local, num_batches, rows, source.image_size)):
    hits.append(count(params, _global_batch(mesh, batch.images),
                      _global_batch(mesh, batch.labels), mean, std))
    done = min(n, (b + 1) * global_rows)
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
  _check_label_range(labels, model.num_classes, 'evaluate')
  n = len(labels)
  mesh = data_mesh()
  count = _counter(model, mesh, min(5, model.num_classes), False)
  mine, rows, num_batches = process_share(np.arange(n), min(int(batch_size), n))
  params = _served(model, params, mesh, rows)
  hits = []
  for b in range(num_batches):
    rows_here = mine[b * rows:(b + 1) * rows]
    batch_images = np.zeros((rows,) + images.shape[1:], np.float32)
    batch_labels = np.full((rows,), -1, np.int32)
    batch_images[:len(rows_here)], batch_labels[:len(rows_here)] = images[rows_here], labels[rows_here]
    hits.append(count(params, _global_batch(mesh, batch_images), _global_batch(mesh, batch_labels),
                      np.zeros(3, np.float32), np.ones(3, np.float32)))
  totals = np.sum(np.asarray(jax.device_get(hits), np.int64), axis=0)
  return {'top1': float(totals[0]) / n, 'top5': float(totals[1]) / n, 'images': int(n)}
