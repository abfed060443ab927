"""Reads PyTorch `.pth` checkpoints without torch and without running pickled code.

A torch checkpoint is a pickle whose tensors point at raw storages kept beside it: in the zip
format (torch >= 1.6) as `<archive>/data/<key>` entries next to `<archive>/data.pkl`; in the
legacy format appended to the pickle stream. Unpickling an untrusted file may call any
importable function, so the unpickler here resolves only an allow-list of globals (the tensor
rebuild functions, storage and dtype names, a few containers) and raises `UnsafePickleError`
naming `module.name` for anything else. Tensors come back as numpy arrays (bf16 and float8 as
`ml_dtypes` types), always contiguous and writable copies.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Optional

import ml_dtypes
import numpy as np

from ouromamba_jax.io import integrity


class UnsafePickleError(integrity.UnusableFileError, pickle.UnpicklingError):
  """The checkpoint's pickle references a global outside the allow-list."""


class PthFormatError(integrity.DamagedFileError):
  """The file is not a readable PyTorch checkpoint (or is corrupt)."""


# Legacy storage classes (`torch.FloatStorage`, ...) name their element type.
_STORAGE_DTYPES = {
    'DoubleStorage': np.dtype(np.float64),
    'FloatStorage': np.dtype(np.float32),
    'HalfStorage': np.dtype(np.float16),
    'BFloat16Storage': np.dtype(ml_dtypes.bfloat16),
    'LongStorage': np.dtype(np.int64),
    'IntStorage': np.dtype(np.int32),
    'ShortStorage': np.dtype(np.int16),
    'CharStorage': np.dtype(np.int8),
    'ByteStorage': np.dtype(np.uint8),
    'BoolStorage': np.dtype(np.bool_),
    'ComplexDoubleStorage': np.dtype(np.complex128),
    'ComplexFloatStorage': np.dtype(np.complex64),
    'UntypedStorage': np.dtype(np.uint8),
}

# `torch.<dtype>` globals, used by `_rebuild_tensor_v3` (dtypes without a legacy storage class).
_TORCH_DTYPES = {
    'float64': np.float64, 'float32': np.float32, 'float16': np.float16,
    'bfloat16': ml_dtypes.bfloat16, 'int64': np.int64, 'int32': np.int32, 'int16': np.int16,
    'int8': np.int8, 'uint8': np.uint8, 'uint16': np.uint16, 'uint32': np.uint32,
    'uint64': np.uint64, 'bool': np.bool_, 'complex64': np.complex64,
    'complex128': np.complex128, 'float8_e4m3fn': ml_dtypes.float8_e4m3fn,
    'float8_e5m2': ml_dtypes.float8_e5m2, 'float8_e4m3fnuz': ml_dtypes.float8_e4m3fnuz,
    'float8_e5m2fnuz': ml_dtypes.float8_e5m2fnuz,
}

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
  """Stands in for `torch.FloatStorage` & co. inside the pickle."""
  name: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True, slots=True)
class _TorchDtype:
  """Stands in for `torch.float32` & co. inside the pickle."""
  name: str
  dtype: np.dtype


class ConfigNode(dict):
  """Inert stand-in for `yacs.config.CfgNode`, the 'config' entry of checkpoints written by
  Swin-style training scripts (VMamba's `save_checkpoint_ema`): its items load as a plain dict;
  its yacs flags (`__immutable__`, ...) are dropped."""


def _as_index_tuple(value, what: str) -> tuple[int, ...]:
  if isinstance(value, int):
    value = (value,)
  if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) for v in value):
    raise PthFormatError(f'tensor {what} must be a tuple of ints; got {value!r}')
  return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """A copy of `storage[offset + sum(i_k * stride_k)]` with shape `size` (torch semantics)."""
  del unused  # requires_grad, backward_hooks, metadata: irrelevant for numpy
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise PthFormatError(f'tensor storage must come from persistent_load; got {type(storage)}')
  size = _as_index_tuple(size, 'size')
  stride = _as_index_tuple(stride, 'stride')
  if not isinstance(storage_offset, int) or storage_offset < 0:
    raise PthFormatError(f'bad storage offset {storage_offset!r}')
  if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
    raise PthFormatError(f'bad tensor geometry: size {size}, stride {stride}')
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise PthFormatError(
        f'tensor (offset {storage_offset}, size {size}, stride {stride}) reaches element {last} '
        f'of a storage with {storage.size} elements; the checkpoint is corrupt')
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=size, strides=[s * itemsize for s in stride],
      writeable=False)
  return np.array(view, copy=True, order='C')


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, *unused):
  """torch >= 2.1 form for dtypes without a legacy storage class: untyped bytes + a dtype."""
  del requires_grad, backward_hooks, unused
  if not isinstance(dtype, _TorchDtype):
    raise PthFormatError(f'_rebuild_tensor_v3 expects a torch dtype; got {dtype!r}')
  if storage.dtype != np.uint8 or storage.size % dtype.dtype.itemsize:
    raise PthFormatError(f'storage of {storage.size} bytes cannot hold {dtype.name} elements')
  return _rebuild_tensor(storage.view(dtype.dtype), storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
  del requires_grad, backward_hooks, state
  return data


def _allowed_globals() -> dict[tuple[str, str], Any]:
  allowed: dict[tuple[str, str], Any] = {
      ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
      ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
      ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('argparse', 'Namespace'): argparse.Namespace,
      ('yacs.config', 'CfgNode'): ConfigNode,
      # Protocol 2 spells bytes as _codecs.encode(latin1 str) and sets as builtins.set(list).
      ('_codecs', 'encode'): _latin1_encode,
  }
  for module in ('builtins', '__builtin__'):
    for name, value in (('set', set), ('frozenset', frozenset), ('bytearray', bytearray),
                        ('complex', complex)):
      allowed[(module, name)] = value
  for name, dtype in _STORAGE_DTYPES.items():
    allowed[('torch', name)] = _StorageType(name, dtype)
    allowed[('torch.storage', name)] = _StorageType(name, dtype)
  for name, dtype in _TORCH_DTYPES.items():
    allowed[('torch', name)] = _TorchDtype(name, np.dtype(dtype))
  return allowed


def _latin1_encode(text, encoding='latin1'):
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise UnsafePickleError(f'_codecs.encode is allowed only for latin1 bytes; got {encoding!r}')
  return text.encode('latin1')


_ALLOWED_GLOBALS = _allowed_globals()


# What BUILD (set an object's state) may carry, per target type: Namespace fields, the
# `_metadata` that `nn.Module.state_dict()` attaches to its OrderedDict (module versions;
# dropped), a CfgNode's flags (dropped).
_BUILD_STATE_KEYS = {argparse.Namespace: None, collections.OrderedDict: {'_metadata'},
                     ConfigNode: None}


def _load_build_restricted(unpickler):
  """BUILD is how a pickle could rewrite an allowed class or function; a tensor checkpoint
  needs it only for the targets in `_BUILD_STATE_KEYS`, with a dict of str keys as state."""
  state = unpickler.stack.pop()
  target = unpickler.stack[-1]
  kind = type(target)
  allowed = _BUILD_STATE_KEYS.get(kind, set())
  if (kind not in _BUILD_STATE_KEYS or not isinstance(state, dict) or
      not all(isinstance(k, str) for k in state) or
      (allowed is not None and not set(state) <= allowed)):
    raise UnsafePickleError(
        f'{unpickler.source}: refusing to set pickled state on a {kind.__name__} object; only '
        'argparse.Namespace, state_dict OrderedDict metadata and yacs CfgNode flags may carry '
        'state in a tensor checkpoint')
  if kind is argparse.Namespace:
    vars(target).update(state)


class _RestrictedUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Resolves only allow-listed globals; storages come from `read_storage(key, dtype, numel)`.

  The pure-Python unpickler is used (the pickle holds structure, not tensor bytes, so speed is
  no concern) because its opcode table can be narrowed: see `_load_build_restricted`.
  """
  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access
  dispatch[pickle.BUILD[0]] = _load_build_restricted

  def __init__(self, file, read_storage, source: str):
    super().__init__(file)
    self._read_storage = read_storage
    self.source = source
    self._storages: dict[str, np.ndarray] = {}

  def load(self):
    """Unpickles; a damaged stream becomes a PthFormatError, a refused global stays itself."""
    try:
      return super().load()
    except (UnsafePickleError, PthFormatError):
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise PthFormatError(f'{self.source}: corrupt or non-checkpoint pickle: '
                           f'{type(e).__name__}: {e}') from e

  def find_class(self, module, name):
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f'{self.source}: refusing to load global {module}.{name}: the checkpoint pickle '
          'references code outside the tensor-checkpoint allow-list (tensors, storages, '
          'OrderedDict, argparse.Namespace, yacs CfgNode, plain containers). If the file is trusted, re-save '
          'it as a plain state_dict or as safetensors.') from None

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] not in ('storage', b'storage'):
      kind = pid[0] if isinstance(pid, tuple) and pid else pid
      raise PthFormatError(f'{self.source}: unsupported persistent id {kind!r}; only tensor '
                           'storages are supported (whole pickled nn.Modules are not)')
    if len(pid) not in (5, 6):
      raise PthFormatError(f'{self.source}: malformed storage id {pid!r}')
    storage_type, key, _, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType):
      raise PthFormatError(f'{self.source}: storage id names {storage_type!r}, not a storage type')
    if isinstance(key, bytes):
      key = key.decode('ascii')
    if not isinstance(numel, int) or numel < 0:
      raise PthFormatError(f'{self.source}: bad storage size {numel!r} for key {key!r}')
    if key not in self._storages:
      self._storages[key] = self._read_storage(str(key), storage_type.dtype, numel)
    storage = self._storages[key]
    if view is not None:  # legacy storage views: (view_key, offset, size) in elements
      _, offset, view_size = view
      storage = storage[offset:offset + view_size]
    return storage


def _native(array: np.ndarray, big_endian: bool) -> np.ndarray:
  if not big_endian or array.dtype.itemsize == 1:
    return array
  if array.dtype.kind == 'V' or array.dtype.type.__module__.startswith('ml_dtypes'):
    uint = np.dtype(f'u{array.dtype.itemsize}')
    return array.view(uint).byteswap().view(array.dtype)
  return array.byteswap()


def _storage_from_bytes(data: bytes, dtype: np.dtype, numel: int, big_endian: bool, what: str):
  nbytes = numel * dtype.itemsize
  if len(data) < nbytes:
    raise PthFormatError(f'{what}: storage holds {len(data)} bytes, expected {nbytes} '
                         f'({numel} x {dtype}); the file is truncated or corrupt')
  return _native(np.frombuffer(data, dtype, count=numel), big_endian)


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
      raise PthFormatError(
          f'{path}: a zip checkpoint needs exactly one <archive>/data.pkl; found {pickles}. '
          'TorchScript archives (torch.jit.save) are not supported.')
    prefix = pickles[0][:-len('data.pkl')]
    names = set(archive.namelist())
    byteorder = b'little'
    if prefix + 'byteorder' in names:
      byteorder = archive.read(prefix + 'byteorder').strip()
      if byteorder not in (b'little', b'big'):
        raise PthFormatError(f'{path}: unknown byteorder record {byteorder!r}')

    def read_storage(key, dtype, numel):
      name = f'{prefix}data/{key}'
      if name not in names:
        raise PthFormatError(f'{path}: storage record {name} is missing')
      return _storage_from_bytes(archive.read(name), dtype, numel, byteorder == b'big', name)

    unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), read_storage, path)
    return unpickler.load()


def _load_legacy(path: str) -> Any:
  """torch < 1.6 stream: magic, protocol, sys_info, main pickle, storage keys, raw storages.

  The storages follow the main pickle, so it is read twice: first with zero-filled stand-ins to
  learn each storage's dtype and size, then again with the real data.
  """
  plain = lambda f: _RestrictedUnpickler(f, _no_storage, path).load()
  with open(path, 'rb') as f:
    try:
      magic = plain(f)
    except PthFormatError as e:
      raise PthFormatError(f'{path}: neither a zip nor a legacy PyTorch checkpoint') from e
    if magic != _LEGACY_MAGIC_NUMBER:
      raise PthFormatError(f'{path}: not a PyTorch checkpoint (bad magic number). Very old '
                           'tar-based checkpoints (torch < 0.4) are not supported.')
    if plain(f) != _LEGACY_PROTOCOL_VERSION:
      raise PthFormatError(f'{path}: unsupported legacy protocol version')
    sys_info = plain(f)
    big_endian = isinstance(sys_info, dict) and sys_info.get('little_endian') is False
    main_start = f.tell()
    specs: dict[str, tuple[np.dtype, int]] = {}

    def record_spec(key, dtype, numel):
      specs[key] = (dtype, numel)
      return np.zeros(numel, dtype)

    _RestrictedUnpickler(f, record_spec, path).load()
    keys = plain(f)
    storages = {}
    for key in keys:
      if key not in specs:
        raise PthFormatError(f'{path}: storage {key!r} is listed but never used')
      dtype, _ = specs[key]
      (numel,) = struct.unpack('<q' if not big_endian else '>q', f.read(8))
      storages[key] = _storage_from_bytes(f.read(numel * dtype.itemsize), dtype, numel,
                                          big_endian, f'{path} storage {key}')
    f.seek(main_start)
    return _RestrictedUnpickler(f, lambda key, *_: storages[key], path).load()


def _no_storage(key, dtype, numel):
  raise PthFormatError(f'unexpected storage reference {key!r} outside the main pickle')


def load_pth(path: str | os.PathLike) -> Any:
  """The unpickled checkpoint object, with every tensor as a numpy array."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  return _load_legacy(path)


def _is_state_dict(obj: Any) -> bool:
  return (isinstance(obj, dict) and bool(obj) and
          all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()))


def state_dict_from_checkpoint(obj: Any, key: Optional[str] = 'model',
                               source: str = 'checkpoint') -> dict[str, np.ndarray]:
  """The state_dict inside a training-script checkpoint (`obj[key]`), or `obj` if it is one."""
  if _is_state_dict(obj):
    return dict(obj)
  if isinstance(obj, dict) and key is not None and key in obj:
    inner = obj[key]
    if _is_state_dict(inner):
      return dict(inner)
    raise PthFormatError(f'{source}[{key!r}] is not a state_dict of tensors '
                         f'(got {type(inner).__name__})')
  top = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
  raise PthFormatError(
      f'{source} is neither a state_dict nor a dict with a {key!r} state_dict; top level: {top}. '
      'Pass the right key (e.g. key="model_ema").')


def load_pth_state_dict(path: str | os.PathLike,
                        key: Optional[str] = 'model') -> dict[str, np.ndarray]:
  """hustvl checkpoints keep the weights under 'model'; bare state_dicts are accepted as is."""
  return state_dict_from_checkpoint(load_pth(path), key, source=os.fspath(path))
