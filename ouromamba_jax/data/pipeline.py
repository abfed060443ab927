"""Host input pipeline for evaluation: fixed subsets, padded batches, threaded prefetch.

An `EvalSource` is what every dataset hands the evaluator: labels plus a `load(index)` that
returns one preprocessed uint8 image. `batches` decodes images in a thread pool (PIL releases
the GIL while decoding and resizing) a few batches ahead of the device, yet yields them in
index order, so results never depend on thread timing.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np

SUBSET_SEED = 0   # fixed: an `eval_images` slice is the same images for every config and run


class DataNotFoundError(FileNotFoundError):
  """No copy of a dataset was found anywhere the loader looks; the message says where to put it."""


class EvalSource(NamedTuple):
  name: str                             # e.g. 'imagenet:labels-file /path/dataset.txt'
  labels: np.ndarray                    # (N,) int32 class index per example
  load: Callable[[int], np.ndarray]     # index -> (H, W, 3) uint8, already preprocessed
  image_size: int                       # H == W of every loaded image
  mean: tuple[float, float, float]      # normalisation the model was trained with
  std: tuple[float, float, float]
  num_classes: Optional[int] = None     # classes the layout implies (None: labels decide)


class Batch(NamedTuple):
  images: np.ndarray  # (batch_size, H, W, 3) uint8; rows past `valid` are zero padding
  labels: np.ndarray  # (batch_size,) int32; -1 on padding rows
  valid: int


def subset_indices(n: int, limit: int) -> np.ndarray:
  """All of 0..n-1 when limit is 0, else the first `limit` of a fixed shuffle (sorted).

  A shuffle (not the first files) so a small slice of a class-sorted folder still covers many
  classes; sorted afterwards so reading follows the on-disk order.
  """
  if limit < 0:
    raise ValueError(f'eval_images must be >= 0 (0 = all), got {limit}')
  if n == 0:
    raise ValueError('the evaluation split holds no images')
  if limit == 0 or limit >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng(SUBSET_SEED).permutation(n)[:limit])


def default_threads() -> int:
  return max(1, min(16, os.cpu_count() or 1))


def batches(source: EvalSource, indices: np.ndarray, batch_size: int, *,
            threads: int = 0, prefetch_batches: int = 2) -> Iterator[Batch]:
  """Fixed-size batches of `source` over `indices`, in order; the last one zero-padded.

  Up to `prefetch_batches` batches are being decoded while the caller uses the current one.
  An exception raised while loading an image is re-raised here, at that image's batch.
  """
  if batch_size < 1:
    raise ValueError(f'eval_batch_size must be >= 1, got {batch_size}')
  if prefetch_batches < 1:
    raise ValueError(f'prefetch_batches must be >= 1, got {prefetch_batches}')
  indices = np.asarray(indices)
  window = batch_size * (prefetch_batches + 1)
  with concurrent.futures.ThreadPoolExecutor(threads or default_threads(),
                                             thread_name_prefix='eval-data') as pool:
    pending = collections.deque()
    next_submit = 0
    try:
      for start in range(0, len(indices), batch_size):
        while next_submit < len(indices) and next_submit < start + window:
          pending.append(pool.submit(source.load, int(indices[next_submit])))
          next_submit += 1
        chunk = indices[start:start + batch_size]
        images = np.zeros((batch_size, source.image_size, source.image_size, 3), np.uint8)
        for row in range(len(chunk)):
          image = pending.popleft().result()
          if image.shape != images.shape[1:] or image.dtype != np.uint8:
            raise ValueError(f'{source.name}: image {int(chunk[row])} loaded as {image.shape} '
                             f'{image.dtype}, expected {images.shape[1:]} uint8')
          images[row] = image
        labels = np.full((batch_size,), -1, np.int32)
        labels[:len(chunk)] = source.labels[chunk]
        yield Batch(images, labels, len(chunk))
    finally:
      for future in pending:
        future.cancel()
