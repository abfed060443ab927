"""Strict state_dict <-> Flax params conversion over a key table, for every checkpoint family.

A family (hustvl Vim, official VMamba, official MambaVision; `io.families`) supplies its key
table ({torch key: Entry}: Flax path, layout, torch shape, dtype), its naming for messages and
its hints for foreign keys; the layouts, the checking, the one-error report and the conversion
are the same for all, so they live here.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ouromamba_jax.io import integrity


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one Flax leaf is laid out in the torch state_dict."""
  name: str
  to_hustvl: Callable[[np.ndarray], np.ndarray]
  to_flax: Callable[[np.ndarray], np.ndarray]
  hustvl_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


AS_IS = Layout('as is', lambda a: a, lambda a: a, tuple)
LINEAR = Layout('linear (out,in) <-> (in,out)', lambda a: a.T, lambda a: a.T,
                lambda s: (s[1], s[0]))
CONV1D = Layout('depthwise conv1d (Di,1,K) <-> (K,Di)', lambda a: a.T[:, None, :],
                lambda a: a[:, 0, :].T, lambda s: (s[1], 1, s[0]))
CONV2D = Layout('conv2d OIHW <-> HWIO', lambda a: a.transpose(3, 2, 0, 1),
                lambda a: a.transpose(2, 3, 1, 0), lambda s: (s[3], s[2], s[0], s[1]))


@dataclasses.dataclass(frozen=True)
class Entry:
  """One key of a key table: where the tensor lives in the Flax tree and how it is laid out."""
  flax_path: tuple[str, ...]
  layout: Layout
  flax_shape: tuple[int, ...]
  dtype: Any

  @property
  def hustvl_shape(self) -> tuple[int, ...]:
    return self.layout.hustvl_shape(self.flax_shape)


class CheckpointMismatchError(integrity.UnusableFileError):
  """A state_dict does not fit the model: every missing, unexpected and misshaped key at once."""

  def __init__(self, message: str, missing, unexpected, mismatched):
    super().__init__(message)
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = list(mismatched)


def check_state_dict(state_dict: Mapping[str, np.ndarray], table: Mapping[str, Any], *,
                     source: str, model_name: str, names: str, advice: str,
                     explain: Callable[[str], str] = lambda key: '') -> None:
  """Raises CheckpointMismatchError naming every missing, unexpected and misshaped key (`names`:
  whose key names these are; `explain(key)`: a hint for an unexpected key; `advice`: the last
  line, what to check)."""
  missing = [k for k in table if k not in state_dict]
  unexpected = [k for k in state_dict if k not in table]
  mismatched = []
  for key, entry in table.items():
    if key not in state_dict:
      continue
    value = state_dict[key]
    if tuple(value.shape) != entry.hustvl_shape:
      mismatched.append((key, tuple(value.shape), entry.hustvl_shape))
    elif not np.issubdtype(value.dtype, np.floating) and value.dtype.kind != 'V':
      mismatched.append((key, f'dtype {value.dtype}', 'a float dtype'))
  if not (missing or unexpected or mismatched):
    return
  lines = [f'{source} does not match {model_name}: {len(missing)} missing, '
           f'{len(unexpected)} unexpected, {len(mismatched)} mismatched key(s) ({names}).']
  if missing:
    lines.append('missing:')
    lines += [f'  {k}: expected shape {table[k].hustvl_shape}' for k in missing]
  if unexpected:
    lines.append('unexpected:')
    for k in unexpected:
      hint = explain(k)
      lines.append(f'  {k}: shape {tuple(state_dict[k].shape)}' + (f' ({hint})' if hint else ''))
  if mismatched:
    lines.append('mismatched:')
    lines += [f'  {k}: checkpoint {got}, model expects {want}' for k, got, want in mismatched]
  lines.append(advice)
  raise CheckpointMismatchError('\n'.join(lines), missing, unexpected, mismatched)


def torch_key(path: tuple[str, ...], numbered: re.Pattern) -> str:
  """A Flax path's torch key: numbered members (`numbered` matches them as `(name)_(i)`) become
  `name.i` and a 'kernel' leaf is 'weight'; every family's naming rule starts from this one."""
  parts = [numbered.sub(r'\1.\2', p) for p in path]
  if parts[-1] == 'kernel':
    parts[-1] = 'weight'
  return '.'.join(parts)


def params_from_checked(state_dict: Mapping[str, np.ndarray], table: Mapping[str, Any], *,
                        source: str, dtype=None) -> dict[str, Any]:
  """The Flax params tree (jax arrays) of an already checked state_dict; a tensor holding
  NaN/Inf is refused (integrity.NonFiniteError) by its torch name. dtype None keeps each
  entry's dtype."""
  integrity.check_finite(((k, state_dict[k]) for k in table), source,
                         'the checkpoint is damaged or comes from a diverged run: download or '
                         'export it again.')
  flat = {e.flax_path: jnp.asarray(e.layout.to_flax(np.asarray(state_dict[k])),
                                   dtype=dtype or e.dtype) for k, e in table.items()}
  return traverse_util.unflatten_dict(flat)


def unwrap(params: Mapping[str, Any]) -> Mapping[str, Any]:
  """The params collection of {'params': ...} or the tree itself."""
  return params['params'] if set(params) == {'params'} else params


def state_dict_from(params: Mapping[str, Any], table: Mapping[str, Any],
                    dtype=None) -> dict[str, np.ndarray]:
  """Torch-named, torch-laid-out, contiguous numpy arrays of a Flax params tree."""
  flat = traverse_util.flatten_dict(unwrap(params))
  state_dict = {}
  for key, entry in table.items():
    array = np.asarray(jax.device_get(flat[entry.flax_path]))
    if dtype is not None:
      array = array.astype(jnp.dtype(dtype))
    state_dict[key] = np.ascontiguousarray(entry.layout.to_hustvl(array))
  return state_dict
