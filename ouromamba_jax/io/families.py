"""A checkpoint family (hustvl Vim, official VMamba, official MambaVision): its key table,
messages and defaults; the strict load, export and file reading built on `state_dicts` are the
same for all.

A family module defines one `Family` and exposes its bound methods under the usual names
(`params_from_file`, `export_safetensors`, ...).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping, Optional

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ouromamba_jax.io import pth
from ouromamba_jax.io import safetensors_io
from ouromamba_jax.io import state_dicts

PTH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.tar')  # .tar: timm's '.pth.tar'
SAFETENSORS_SUFFIXES = ('.safetensors',)


def model_param_shapes(model) -> dict[str, Any]:
  """The model's param tree as ShapeDtypeStructs (no memory, no compute)."""
  images = jax.ShapeDtypeStruct((1, model.img_size, model.img_size, model.in_chans), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)['params']


def read_state_dict(path: str | os.PathLike, key: Optional[str] = 'model'):
  """A checkpoint file's state_dict by suffix: .pth/.pt/.bin/.ckpt (torch) or .safetensors."""
  path = os.fspath(path)
  suffix = os.path.splitext(path)[1].lower()
  if suffix in PTH_SUFFIXES:
    return pth.load_pth_state_dict(path, key)
  if suffix in SAFETENSORS_SUFFIXES:
    return safetensors_io.read_safetensors(path)
  raise ValueError(f'{path}: unknown checkpoint suffix {suffix!r}; expected one of '
                   f'{PTH_SUFFIXES + SAFETENSORS_SUFFIXES}')


def kernel_layout(path: tuple[str, ...], label: str, is_linear: Callable[[str], bool],
                  is_conv2d: Callable[[str], bool]) -> state_dicts.Layout:
  """A leaf's layout by the module that holds it: a 'kernel' is a Linear's or a Conv2d's,
  anything else is stored as is. A kernel of an unknown module is an error, not an as-is copy
  that would load transposed."""
  if path[-1] != 'kernel':
    return state_dicts.AS_IS
  module = path[-2]
  if is_linear(module):
    return state_dicts.LINEAR
  if is_conv2d(module):
    return state_dicts.CONV2D
  raise ValueError(f'no {label} layout is known for the kernel at {"/".join(path)}')


def _refuse_non_float(path: tuple[str, ...], leaf, label: str) -> None:
  """Raises TypeError for a leaf that is no float array (e.g. a quantized weight)."""
  is_array = isinstance(leaf, (np.ndarray, jax.Array, jax.ShapeDtypeStruct))
  if not is_array or not jnp.issubdtype(leaf.dtype, jnp.floating):
    kind = f'{leaf.dtype} array' if is_array else type(leaf).__name__
    raise TypeError(f'param {"/".join(path)} holds a {kind}, not a float array; only float '
                    f'(unquantized) params map to {label} checkpoints')


def _no_hint(key: str, table: Mapping[str, state_dicts.Entry]) -> str:
  del key, table
  return ''


@dataclasses.dataclass(frozen=True)
class Family:
  label: str                                  # 'official VMamba': whose names, in messages
  official_key: Callable[[tuple[str, ...]], str]       # Flax path -> official key
  layout_for: Callable[[tuple[str, ...]], state_dicts.Layout]   # Flax path -> its layout
  hints: tuple[tuple[str, str], ...]          # (regex over an unexpected key, what it means)
  advice: str                                 # the error's last line: what to check
  model_fields: tuple[str, ...]               # the fields that name a model in messages
  layout: str                                 # safetensors metadata 'layout'
  default_key: str                            # the training-script entry with the weights
  prepare: Callable[[Mapping[str, np.ndarray]], dict] = dict  # before the check (e.g. drop
                                                              # integer counters)
  # The hint for an unexpected key no pattern of `hints` matches, given the key table.
  hint_from_table: Callable[[str, Mapping[str, state_dicts.Entry]], str] = _no_hint

  def key_table(self, param_shapes: Mapping[str, Any]) -> dict[str, state_dicts.Entry]:
    """{official key: Entry} for a Flax param tree of float arrays or ShapeDtypeStructs; a
    quantized (or other non-float) leaf is refused: official checkpoints hold float tensors."""
    table = {}
    for path, leaf in traverse_util.flatten_dict(state_dicts.unwrap(param_shapes)).items():
      _refuse_non_float(path, leaf, self.label)
      table[self.official_key(path)] = state_dicts.Entry(path, self.layout_for(path),
                                                         tuple(leaf.shape), leaf.dtype)
    return table

  def explain(self, key: str, table: Mapping[str, state_dicts.Entry]) -> str:
    """What an unexpected key means ('' when nothing is known)."""
    for pattern, hint in self.hints:
      if re.search(pattern, key):
        return hint
    return self.hint_from_table(key, table)

  def check_state_dict(self, state_dict: Mapping[str, np.ndarray], table: Mapping[str, Any],
                       source: str = 'checkpoint', model_name: str = 'the model') -> None:
    """Raises CheckpointMismatchError naming every missing, unexpected and misshaped key."""
    state_dicts.check_state_dict(state_dict, table, source=source, model_name=model_name,
                                 names=f'{self.label} names',
                                 explain=lambda key: self.explain(key, table),
                                 advice=self.advice)

  def params_from_state_dict(self, state_dict: Mapping[str, np.ndarray],
                             param_shapes: Mapping[str, Any], *, dtype=None,
                             source: str = 'checkpoint',
                             model_name: str = 'the model') -> dict[str, Any]:
    """Strictly converts an official state_dict to the Flax params tree (jax arrays); a tensor
    holding NaN/Inf is refused (integrity.NonFiniteError) by its official name. dtype None
    keeps each param's dtype from `param_shapes`."""
    table = self.key_table(param_shapes)
    state_dict = self.prepare(state_dict)
    self.check_state_dict(state_dict, table, source, model_name)
    return state_dicts.params_from_checked(state_dict, table, source=source, dtype=dtype)

  def state_dict_from_params(self, params: Mapping[str, Any], dtype=None) -> dict[str, np.ndarray]:
    """Official-named, torch-laid-out, contiguous numpy arrays for a Flax params tree."""
    return state_dicts.state_dict_from(params, self.key_table(params), dtype)

  def model_name(self, model) -> str:
    return f'{type(model).__name__}(' + ', '.join(
        f'{f}={getattr(model, f)}' for f in self.model_fields) + ')'

  def params_from_file(self, path: str | os.PathLike, model, *, key: Optional[str] = None,
                       dtype=None) -> dict[str, Any]:
    """Official `.pth` (training-script dict or bare state_dict) or `.safetensors` -> the params
    tree itself (`model.apply({'params': params}, images)`); key: the training-script entry
    (None: the family's `default_key`)."""
    state_dict = read_state_dict(path, key or self.default_key)
    return self.params_from_state_dict(state_dict, model_param_shapes(model), dtype=dtype,
                                       source=os.fspath(path), model_name=self.model_name(model))

  def export_safetensors(self, params: Mapping[str, Any], path: str | os.PathLike,
                         dtype=None) -> None:
    """Writes params under the official names and layouts (loadable by the official model)."""
    metadata = {'format': 'pt', 'producer': 'ouromamba_jax', 'layout': self.layout}
    safetensors_io.write_safetensors(self.state_dict_from_params(params, dtype), path, metadata)
