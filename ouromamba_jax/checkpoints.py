"""Building a model from its config section and filling it with weights.

`model.checkpoint`: '' -> random init (seeded), 'bundled' -> the testbed model shipped in
the package, otherwise a hustvl `.pth` or `.safetensors` path, loaded strictly.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from ouromamba_jax.io import load_checkpoint
from ouromamba_jax.models import build_model

ASSETS_DIR = os.path.join(os.path.dirname(__file__), 'assets')
BUNDLED = {'vim_t_cifar10': os.path.join(ASSETS_DIR, 'vim_t_cifar10.safetensors')}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def model_from_config(model_cfg, **extra):
  """The VisionMamba described by a `model` config section (`extra` overrides fields)."""
  if model_cfg.dtype not in DTYPES:
    raise ValueError(f'model.dtype must be one of {sorted(DTYPES)}, got {model_cfg.dtype!r}')
  overrides = model_cfg.overrides
  overrides = overrides.to_dict() if hasattr(overrides, 'to_dict') else dict(overrides)
  fields = {k: v for k, v in overrides.items() if v is not None}
  fields['dtype'] = DTYPES[model_cfg.dtype]
  for field in ('scan_implementation', 'quant_implementation'):
    if model_cfg.get(field):
      fields[field] = model_cfg[field]
  fields.update(extra)
  return build_model(model_cfg.name, **fields)


def dummy_images(model, batch: int = 1):
  return jnp.zeros((batch, model.img_size, model.img_size, model.in_chans), jnp.float32)


def random_params(model, seed: int = 0):
  return jax.jit(model.init)(jax.random.key(seed), dummy_images(model))['params']


def checkpoint_path(model_cfg) -> str:
  if model_cfg.checkpoint != 'bundled':
    return model_cfg.checkpoint
  if model_cfg.name not in BUNDLED:
    raise ValueError(f'no bundled checkpoint for model {model_cfg.name!r}; bundled: '
                     f'{sorted(BUNDLED)}. Set model.checkpoint to a .pth/.safetensors path.')
  path = BUNDLED[model_cfg.name]
  if not os.path.isfile(path):
    raise FileNotFoundError(f'the bundled checkpoint {path} is missing from this install; '
                            'reinstall the package or train one with --config.mode=train.')
  return path


def load_model(model_cfg, seed: int = 0, **extra):
  """Returns (model, params) for a `model` config section."""
  model = model_from_config(model_cfg, **extra)
  if not model_cfg.checkpoint:
    return model, random_params(model, seed)
  return model, load_checkpoint(checkpoint_path(model_cfg), model)
