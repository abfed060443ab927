"""A checkpoint family (official VMamba, official MambaVision): its key table, messages and
defaults; the strict load, export and file reading built on `state_dicts` are the same for all.

A family module defines one `Family` and exposes its bound methods under the usual names
(`params_from_file`, `export_safetensors`, ...).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping, Optional

from flax import traverse_util
import numpy as np

from ouromamba_jax.io import hustvl_keys
from ouromamba_jax.io import safetensors_io
from ouromamba_jax.io import state_dicts


model_param_shapes = hustvl_keys.model_param_shapes   # the same for every family


def kernel_layout(path: tuple[str, ...], label: str, is_linear: Callable[[str], bool],
                  is_conv2d: Callable[[str], bool]) -> hustvl_keys.Layout:
  """A leaf's layout by the module that holds it: a 'kernel' is a Linear's or a Conv2d's,
  anything else is stored as is. A kernel of an unknown module is an error, not an as-is copy
  that would load transposed."""
  if path[-1] != 'kernel':
    return hustvl_keys.AS_IS
  module = path[-2]
  if is_linear(module):
    return hustvl_keys.LINEAR
  if is_conv2d(module):
    return hustvl_keys.CONV2D
  raise ValueError(f'no {label} layout is known for the kernel at {"/".join(path)}')


@dataclasses.dataclass(frozen=True)
class Family:
  label: str                                  # 'VMamba': messages and the model's name
  official_key: Callable[[tuple[str, ...]], str]       # Flax path -> official key
  layout_for: Callable[[tuple[str, ...]], Any]         # Flax path -> hustvl_keys.Layout
  hints: tuple[tuple[str, str], ...]          # (regex over an unexpected key, what it means)
  advice: str                                 # the error's last line: what to check
  model_fields: tuple[str, ...]               # the fields that name a model in messages
  layout: str                                 # safetensors metadata 'layout'
  default_key: str                            # the training-script entry with the weights
  prepare: Callable[[Mapping[str, np.ndarray]], dict] = dict  # before the check (e.g. drop
                                                              # integer counters)

  def key_table(self, param_shapes: Mapping[str, Any]) -> dict[str, hustvl_keys.Entry]:
    """{official key: Entry} for a Flax param tree of arrays or ShapeDtypeStructs."""
    flat = traverse_util.flatten_dict(state_dicts.unwrap(param_shapes))
    return {self.official_key(path): hustvl_keys.Entry(path, self.layout_for(path),
                                                       tuple(leaf.shape), leaf.dtype)
            for path, leaf in flat.items()}

  def explain(self, key: str) -> str:
    return next((hint for pattern, hint in self.hints if re.search(pattern, key)), '')

  def check_state_dict(self, state_dict: Mapping[str, np.ndarray], table: Mapping[str, Any],
                       source: str = 'checkpoint', model_name: str = 'the model') -> None:
    """Raises CheckpointMismatchError naming every missing, unexpected and misshaped key."""
    state_dicts.check_state_dict(state_dict, table, source=source, model_name=model_name,
                                 names=f'official {self.label} names', explain=self.explain,
                                 advice=self.advice)

  def params_from_state_dict(self, state_dict: Mapping[str, np.ndarray],
                             param_shapes: Mapping[str, Any], *, dtype=None,
                             source: str = 'checkpoint',
                             model_name: str = 'the model') -> dict[str, Any]:
    """Strictly converts an official state_dict to the Flax params tree (jax arrays)."""
    table = self.key_table(param_shapes)
    state_dict = self.prepare(state_dict)
    self.check_state_dict(state_dict, table, source, model_name)
    return state_dicts.params_from_checked(state_dict, table, source=source, dtype=dtype)

  def state_dict_from_params(self, params: Mapping[str, Any], dtype=None) -> dict[str, np.ndarray]:
    """Official-named, torch-laid-out, contiguous numpy arrays for a Flax params tree."""
    return state_dicts.state_dict_from(params, self.key_table(params), dtype)

  def model_name(self, model) -> str:
    return f'{self.label}(' + ', '.join(
        f'{f}={getattr(model, f)}' for f in self.model_fields) + ')'

  def params_from_file(self, path: str | os.PathLike, model, *, key: Optional[str] = None,
                       dtype=None) -> dict[str, Any]:
    """Official `.pth` (training-script dict or bare state_dict) or `.safetensors` -> params;
    key: the training-script entry (None: the family's `default_key`)."""
    state_dict = hustvl_keys.read_state_dict(path, key or self.default_key)
    return self.params_from_state_dict(state_dict, model_param_shapes(model), dtype=dtype,
                                       source=os.fspath(path), model_name=self.model_name(model))

  def export_safetensors(self, params: Mapping[str, Any], path: str | os.PathLike,
                         dtype=None) -> None:
    """Writes params under the official names and layouts (loadable by the official model)."""
    metadata = {'format': 'pt', 'producer': 'ouromamba_jax', 'layout': self.layout}
    safetensors_io.write_safetensors(self.state_dict_from_params(params, dtype), path, metadata)
