"""CIFAR-10 from the project's archive layout (`train.tar.gz` -> train/<class>/NNNN.jpg).

Search order for a split: `data_dir/<split>.tar.gz` or an extracted `data_dir/<split>/`,
then tensorflow-datasets `cifar10` when allowed (online machines). Decoded arrays are cached
as .npz so later runs start in a second.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from ouromamba_jax.data import archives
from ouromamba_jax.data import image_folder
from ouromamba_jax.io import atomic
from ouromamba_jax.data import pipeline

CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
           'truck')
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
SPLITS = ('train', 'test')


class Split(NamedTuple):
  images: np.ndarray  # (N, 32, 32, 3) uint8
  labels: np.ndarray  # (N,) int32


class DataNotFoundError(pipeline.DataNotFoundError):
  pass


def _from_folder(root: str) -> Split:
  files, labels, classes = image_folder.list_image_folder(root)
  if tuple(classes) != CLASSES:
    raise ValueError(f'{root}: class folders {classes} are not the CIFAR-10 classes {CLASSES}')
  return Split(image_folder.decode_images(files), labels)


def _from_tfds(split: str) -> Split:
  # Lazy: tensorflow-datasets is an optional extra (pip install .[tfds]) and slow to import.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.as_numpy(tfds.load('cifar10', split=split, batch_size=-1))
  return Split(ds['image'].astype(np.uint8), ds['label'].astype(np.int32))


def load(split: str, data_dir: str = '', cache_dir: str = '', use_tfds: bool = True) -> Split:
  """Loads a CIFAR-10 split as uint8 images and int32 labels."""
  if split not in SPLITS:
    raise ValueError(f'CIFAR-10 split must be one of {SPLITS}, got {split!r}')
  cache_dir = cache_dir or archives.default_cache_dir()
  archive = os.path.join(data_dir, f'{split}.tar.gz') if data_dir else ''
  folder = os.path.join(data_dir, split) if data_dir else ''
  if archive and os.path.isfile(archive):
    stat = os.stat(archive)
    cached = os.path.join(cache_dir, f'cifar10-{split}-{stat.st_size}.npz')
    if os.path.isfile(cached):
      with np.load(cached) as z:
        return Split(z['images'], z['labels'])
    root = os.path.join(archives.extract_once(archive, cache_dir), split)
    data = _from_folder(root)
    atomic.write_npz(cached, images=data.images, labels=data.labels)
    return data
  if folder and os.path.isdir(folder):
    return _from_folder(folder)
  if use_tfds:
    try:
      return _from_tfds(split)
    except Exception as e:  # pylint: disable=broad-except
      tfds_error = f' (tensorflow-datasets failed too: {type(e).__name__}: {e})'
  else:
    tfds_error = ''
  raise DataNotFoundError(
      f'CIFAR-10 {split!r} split not found: looked for {archive or "<data_dir>/" + split + ".tar.gz"} '
      f'and {folder or "<data_dir>/" + split + "/"}{tfds_error}. Put {split}.tar.gz (layout '
      f'{split}/<class>/<image>.jpg) in a folder and set --config.data.data_dir=FOLDER, or install '
      'the tfds extra on an online machine.')


def eval_source(data_cfg, img_size: int) -> pipeline.EvalSource:
  """The test split for `evaluate` (CIFAR-10 is evaluated at its native 32x32, no resize)."""
  if img_size != 32:
    raise ValueError(f'CIFAR-10 images are 32x32 but the model expects {img_size}x{img_size}; '
                     'evaluate a 32x32 model (e.g. configs/vim_t_cifar10.py) on CIFAR-10.')
  split = load('test', data_cfg.data_dir, data_cfg.cache_dir, data_cfg.use_tfds)
  images = split.images
  return pipeline.EvalSource('cifar10:test', split.labels, lambda i: images[i], 32, MEAN, STD,
                             num_classes=len(CLASSES))
