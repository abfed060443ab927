"""Config pieces shared by every experiment file (big_vision style: configs are code).

Each `*_config()` returns one section; experiment files (configs/vim_*.py) assemble them and
override what differs. Every choice the paper leaves open is a named field with a comment.
"""
from __future__ import annotations

import ml_collections as mlc


def model_config(name: str, **overrides) -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.name = name                      # registry name: vim_t | vim_s | vim_b | vim_t_cifar10
  c.overrides = mlc.ConfigDict(overrides)  # any VisionMamba field (img_size, depth, ...)
  c.dtype = 'float32'                # compute dtype: float32 | bfloat16 (params, residual, scan state stay fp32)
  c.scan_implementation = ''         # '' = platform default; xla | associative | sequential | triton
  c.checkpoint = ''                  # .pth / .safetensors path; 'bundled' = the shipped testbed model; '' = random init
  return c


def data_config(name: str) -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.name = name                      # cifar10 | imagenet
  c.data_dir = ''                    # folder holding the dataset archives/images ('' = the dataset's default search path)
  c.cache_dir = ''                   # where archives are extracted ('' = ~/.cache/ouromamba_jax)
  c.use_tfds = True                  # fall back to tensorflow-datasets when no local data is found (online machines)
  c.eval_images = 0                  # 0 = the whole evaluation split
  c.eval_batch_size = 256
  return c


def base_config() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.mode = 'pipeline'                # train | evaluate | generate | quantize | pipeline
  c.workdir = 'workdir/default'
  c.seed = 0
  return c
