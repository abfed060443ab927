"""Datasets: CIFAR-10 and ImageNet-format folders (archives extracted once into a cache).

`eval_source(data_cfg, img_size)` picks the dataset registered under `data_cfg.name`; modules
are imported on first use so a CIFAR-10 run never touches ImageNet code and vice versa.
"""
from __future__ import annotations

import importlib

# data.name -> module exposing `eval_source(data_cfg, img_size) -> pipeline.EvalSource`.
DATASETS = {
    'cifar10': 'ouromamba_jax.data.cifar10',
    'imagenet': 'ouromamba_jax.data.imagenet',
}


def dataset_module(name: str):
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; registered: {sorted(DATASETS)} '
                     '(set it with --config.data.name=NAME).')
  return importlib.import_module(DATASETS[name])


def eval_source(data_cfg, img_size: int):
  """The evaluation split described by a `data` config section, preprocessed to img_size."""
  return dataset_module(data_cfg.name).eval_source(data_cfg, img_size)
