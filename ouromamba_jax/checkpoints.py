"""Float checkpoints: load ('bundled', official `.pth`, `.safetensors`) and save, for a model.

  params = load_checkpoint('bundled', build_model('vim_t_cifar10'))   # the shipped testbed
  params = load_checkpoint('vim_t_midclstok_76p1acc.pth', build_model('vim_t'))
  save_checkpoint(params, 'model.safetensors')                       # hustvl names, loadable by torch

Each model family has its own names and layouts (`key_module`): Vim the hustvl ones
(`io.hustvl_keys`), VMamba the official MzeroMiko ones (`io.vmamba_keys`), MambaVision NVlabs'
(`io.mambavision_keys`).

Loading is strict (every missing, unexpected or mis-shaped key in one error). The quantized
form lives beside this module, in `quantized_checkpoints`.
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp

from ouromamba_jax.io import hustvl_keys
from ouromamba_jax.io import mambavision_keys
from ouromamba_jax.io import vmamba_keys
from ouromamba_jax.models import registry
from ouromamba_jax.models.mambavision import MambaVision
from ouromamba_jax.models.vmamba import VMamba

BUNDLED_NAME = 'bundled'
ASSETS_DIR = os.path.join(os.path.dirname(__file__), 'assets')
# The testbeds trained here on CIFAR-10 (model cards beside them in assets/).
BUNDLED = {name: os.path.join(ASSETS_DIR, f'{name}.safetensors')
           for name in ('vim_t_cifar10', 'vmamba_t_cifar10', 'mambavision_t_cifar10')}
# The dataset each bundled testbed was trained on: its input normalisation (data.<name>.MEAN/STD).
BUNDLED_DATASETS = dict.fromkeys(BUNDLED, 'cifar10')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# model name -> (Hugging Face repo, file): the official ImageNet checkpoints of these models.
HUSTVL_CHECKPOINTS = {
    'vim_t': ('hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_76p1acc.pth'),
    'vim_s': ('hustvl/Vim-small-midclstok', 'vim_s_midclstok_80p5acc.pth'),
    'vim_b': ('hustvl/Vim-base-midclstok', 'vim_b_midclstok_81p9acc.pth'),
}


# Each model family's official key map and the training-script entry holding its weights.
_FAMILIES = {VMamba: (vmamba_keys, vmamba_keys.FAMILY.default_key),
             MambaVision: (mambavision_keys, mambavision_keys.FAMILY.default_key)}


def family(model):
  """(key-map module, training-script entry) of `model`'s official checkpoints."""
  return _FAMILIES.get(type(model), (hustvl_keys, hustvl_keys.FAMILY.default_key))


def _family_of_params(params):
  """The key map whose names a params tree has (its top-level modules tell the family)."""
  top = set(params.get('params', params))
  if 'levels_0' in top:
    return mambavision_keys
  if 'layers_0' in top and 'blocks_0' in params.get('params', params)['layers_0']:
    return vmamba_keys
  return hustvl_keys


def dummy_images(model, batch: int = 1):
  return jnp.zeros((batch, model.img_size, model.img_size, model.in_chans), jnp.float32)


def random_params(model, seed: int = 0):
  return jax.jit(model.init)(jax.random.key(seed), dummy_images(model))['params']


def bundled_path(model, model_name: Optional[str] = None) -> str:
  """The shipped checkpoint for `model_name`, or for the registered variant `model` is."""
  name = model_name or registry.variant_of(model)
  if name not in BUNDLED:
    raise ValueError(f'no bundled checkpoint for model {name or type(model).__name__!r}; '
                     f'bundled: {sorted(BUNDLED)}. Pass a .pth/.safetensors path instead.')
  path = BUNDLED[name]
  if not os.path.isfile(path):
    raise FileNotFoundError(f'the bundled checkpoint {path} is missing from this install; '
                            'reinstall the package or train one with --config.mode=train.')
  return path


def resolve_path(path: str, model, model_name: Optional[str] = None) -> str:
  """`path` itself, or the bundled file when path is 'bundled'."""
  return bundled_path(model, model_name) if path == BUNDLED_NAME else path


def key_module(model=None, params=None):
  """The key-map module of a model family (`model`'s, else the one whose names `params` has)."""
  return family(model)[0] if model is not None else _family_of_params(params)


def load_checkpoint(path: str, model, *, model_name: Optional[str] = None,
                    key: Optional[str] = None):
  """Float params for `model` from 'bundled', an official `.pth` (`.pth.tar`) or a
  `.safetensors` file, under the official names of the model's family (hustvl Vim, VMamba,
  MambaVision).

  model_name: which bundled checkpoint 'bundled' means (default: the registered variant whose
  architecture `model` has). key: the entry of a training-script .pth holding the weights
  (None: 'model', MambaVision's 'state_dict').
  """
  keys, default_key = family(model)
  return keys.params_from_file(resolve_path(path, model, model_name), model,
                               key=key or default_key)


def save_checkpoint(params, path: str, dtype=None, model=None) -> None:
  """`.safetensors` under the family's official names and torch layouts, written atomically
  (the family is `model`'s, else read off the params' module names)."""
  key_module(model, params).export_safetensors(params, path, dtype)


def missing_checkpoint_message(model_name: str) -> str:
  """What to download and which flag to set when config.model.checkpoint is empty."""
  if model_name in HUSTVL_CHECKPOINTS:
    repo, filename = HUSTVL_CHECKPOINTS[model_name]
    return (f'model {model_name!r} has no checkpoint: download {filename} from '
            f'https://huggingface.co/{repo} and pass '
            f'--config.model.checkpoint=/path/to/{filename}.')
  if model_name in BUNDLED:
    return (f'model {model_name!r} has no checkpoint: pass --config.model.checkpoint=bundled for '
            'the shipped weights, or a .pth/.safetensors path (train one with --config.mode=train).')
  return (f'model {model_name!r} has no checkpoint: pass --config.model.checkpoint=PATH to an '
          "official .pth of the model's family (hustvl Vim, VMamba, MambaVision) or a "
          '.safetensors file.')
