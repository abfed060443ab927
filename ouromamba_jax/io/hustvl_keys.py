"""hustvl Vim state-dict names and layouts <-> our Flax param tree, loaded strictly.

Our param paths mirror hustvl's names (`layers_3/mixer/in_proj/kernel` is
`layers.3.mixer.in_proj.weight`), so the map is a naming rule plus a layout per module kind:

  torch Linear weight (out, in)          <-> kernel (in, out)
  depthwise Conv1d weight (Di, 1, K)     <-> kernel (K, Di)
  patch Conv2d weight (D, C, p, p) OIHW  <-> kernel (p, p, C, D) HWIO
  everything else (biases, norms, A_log, D, cls_token, pos_embed) is stored as is.

Loading is strict, unlike the official quant code (`strict=False`, which hides a silently
missing key): the expected keys come from `jax.eval_shape(model.init)` and any missing,
unexpected or wrongly shaped key fails in ONE error that lists them all.
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
# The families' one mismatch error, re-exported where the hustvl loader always had it.
from ouromamba_jax.io.state_dicts import CheckpointMismatchError  # pylint: disable=unused-import

PTH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.tar')  # .tar: timm's '.pth.tar'
SAFETENSORS_SUFFIXES = ('.safetensors',)

_NUMBERED = re.compile(r'^(layers)_(\d+)$')
_LINEAR_MODULES = frozenset(
    {'in_proj', 'out_proj', 'x_proj', 'x_proj_b', 'dt_proj', 'dt_proj_b', 'head'})
_CONV1D_MODULES = frozenset({'conv1d', 'conv1d_b'})
_PATCH_CONV = ('patch_embed', 'proj')

# Keys some Vim checkpoints carry that these models (midclstok, bimamba v2, RMSNorm, no rope,
# no layer scale) never have. They are errors, not silently dropped: each means the checkpoint
# belongs to another architecture and the logits would be wrong.
_FOREIGN_KEY_HINTS = (
    (r'^module\.', "saved from a DistributedDataParallel wrapper: strip the 'module.' prefix"),
    (r'\.gamma$', 'layer scale (init_layer_scale); the midclstok Vim models have none'),
    (r'^head_dist\.|^dist_token$', 'distillation head/token; not part of these Vim models'),
    (r'^rope\.', 'rotary position buffers (if_rope=True); these models use abs pos_embed'),
    (r'(norm|norm_f)\.bias$', 'a LayerNorm bias; these models use RMSNorm (no bias)'),
    (r'\.A_log_b$', "hustvl names the backward log-A 'A_b_log'"),
)


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


def hustvl_key(path: tuple[str, ...]) -> str:
  """('layers_3', 'mixer', 'in_proj', 'kernel') -> 'layers.3.mixer.in_proj.weight'."""
  return state_dicts.torch_key(path, _NUMBERED)


def layout_for(path: tuple[str, ...]) -> Layout:
  if path[-1] != 'kernel':
    return AS_IS
  module = path[-2] if len(path) > 1 else ''
  if module in _LINEAR_MODULES:
    return LINEAR
  if module in _CONV1D_MODULES:
    return CONV1D
  if tuple(path[-3:-1]) == _PATCH_CONV:
    return CONV2D
  raise ValueError(f'no hustvl layout is known for the kernel at {"/".join(path)}; add its '
                   'module to ouromamba_jax/io/hustvl_keys.py')


@dataclasses.dataclass(frozen=True)
class Entry:
  flax_path: tuple[str, ...]
  layout: Layout
  flax_shape: tuple[int, ...]
  dtype: Any

  @property
  def hustvl_shape(self) -> tuple[int, ...]:
    return self.layout.hustvl_shape(self.flax_shape)


def key_table(param_shapes: Mapping[str, Any]) -> dict[str, Entry]:
  """{hustvl key: Entry} for a Flax param tree of arrays or ShapeDtypeStructs."""
  table = {}
  for path, leaf in traverse_util.flatten_dict(state_dicts.unwrap(param_shapes)).items():
    is_array = isinstance(leaf, (np.ndarray, jax.Array, jax.ShapeDtypeStruct))
    if not is_array or not jnp.issubdtype(leaf.dtype, jnp.floating):
      kind = f'{leaf.dtype} array' if is_array else type(leaf).__name__
      raise TypeError(f'param {"/".join(path)} holds a {kind}, not a float array; only float '
                      '(unquantized) params map to hustvl checkpoints')
    table[hustvl_key(path)] = Entry(path, layout_for(path), tuple(leaf.shape), leaf.dtype)
  return table


def model_param_shapes(model) -> dict[str, Any]:
  """The model's param tree as ShapeDtypeStructs (no memory, no compute)."""
  images = jax.ShapeDtypeStruct((1, model.img_size, model.img_size, model.in_chans), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)['params']


def _explain_unexpected(key: str, depth: int) -> str:
  for pattern, hint in _FOREIGN_KEY_HINTS:
    if re.search(pattern, key):
      return hint
  match = re.match(r'^layers\.(\d+)\.', key)
  if match and int(match.group(1)) >= depth:
    return f'block {match.group(1)} is beyond the model depth ({depth})'
  return ''


def check_state_dict(state_dict: Mapping[str, np.ndarray], table: Mapping[str, Entry],
                     source: str = 'checkpoint', model_name: str = 'the model') -> None:
  """Raises CheckpointMismatchError naming every missing, unexpected and misshaped key."""
  depth = sum(1 for k in table if re.fullmatch(r'layers\.\d+\.norm\.weight', k))
  state_dicts.check_state_dict(
      state_dict, table, source=source, model_name=model_name, names='hustvl names',
      explain=lambda key: _explain_unexpected(key, depth),
      advice='Check that the model variant, img_size, patch_size, depth and num_classes match '
             'the checkpoint (pos_embed is not interpolated).')


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], param_shapes: Mapping[str, Any],
                           *, dtype=None, source: str = 'checkpoint',
                           model_name: str = 'the model') -> dict[str, Any]:
  """Strictly converts a hustvl state_dict to the Flax params tree (jax arrays); a tensor
  holding NaN/Inf is refused (integrity.NonFiniteError) by its hustvl name.

  dtype: None keeps each param's dtype from `param_shapes` (fp32 for our models).
  """
  table = key_table(param_shapes)
  check_state_dict(state_dict, table, source, model_name)
  return state_dicts.params_from_checked(state_dict, table, source=source, dtype=dtype)


def state_dict_from_params(params: Mapping[str, Any], dtype=None) -> dict[str, np.ndarray]:
  """hustvl-named, torch-laid-out, contiguous numpy arrays for a Flax params tree."""
  return state_dicts.state_dict_from(params, key_table(params), dtype)


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


def _model_name(model) -> str:
  fields = ('img_size', 'patch_size', 'd_model', 'depth', 'd_state', 'num_classes')
  return f'{type(model).__name__}(' + ', '.join(
      f'{f}={getattr(model, f)}' for f in fields if hasattr(model, f)) + ')'


def params_from_file(path: str | os.PathLike, model, *, key: Optional[str] = 'model',
                     dtype=None) -> dict[str, Any]:
  """hustvl `.pth` (training-script dict or bare state_dict) or `.safetensors` -> Flax params.

  Returns the params tree itself (use as `model.apply({'params': params}, images)`).
  key: which entry of a training-script checkpoint holds the weights ('model' or 'model_ema').
  """
  return params_from_state_dict(read_state_dict(path, key), model_param_shapes(model),
                                dtype=dtype, source=os.fspath(path), model_name=_model_name(model))


def export_safetensors(params: Mapping[str, Any], path: str | os.PathLike, dtype=None) -> None:
  """Writes params under hustvl names and torch layouts (loadable by hustvl's `load_state_dict`)."""
  metadata = {'format': 'pt', 'producer': 'ouromamba_jax', 'layout': 'hustvl-vim'}
  safetensors_io.write_safetensors(state_dict_from_params(params, dtype), path, metadata)
