"""Hand-assembled torch-format checkpoints (no torch needed) for the reader's edge cases.

Pickles are written opcode by opcode (protocol 2), so a test can reference any global, storage
geometry or byte order, including malicious ones that no real torch.save would produce.
"""
from __future__ import annotations

import struct
import zipfile

import ml_dtypes
import numpy as np

STORAGE_NAMES = {
    np.dtype(np.float32): 'FloatStorage', np.dtype(np.float64): 'DoubleStorage',
    np.dtype(np.float16): 'HalfStorage', np.dtype(ml_dtypes.bfloat16): 'BFloat16Storage',
    np.dtype(np.int64): 'LongStorage', np.dtype(np.int32): 'IntStorage',
    np.dtype(np.int8): 'CharStorage', np.dtype(np.uint8): 'ByteStorage',
    np.dtype(np.bool_): 'BoolStorage',
}

PROTO2 = b'\x80\x02'
MARK, TUPLE, REDUCE, BUILD, STOP = b'(', b't', b'R', b'b', b'.'
EMPTY_DICT, SETITEM, SETITEMS, EMPTY_TUPLE, BINPERSID, NEWFALSE = b'}', b's', b'u', b')', b'Q', b'\x89'


def text(s: str) -> bytes:
  data = s.encode()
  return b'X' + struct.pack('<I', len(data)) + data


def integer(n: int) -> bytes:
  return b'J' + struct.pack('<i', n)


def global_ref(module: str, name: str) -> bytes:
  return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def tuple_of(*items: bytes) -> bytes:
  return MARK + b''.join(items) + TUPLE


def call(module: str, name: str, *args: bytes) -> bytes:
  return global_ref(module, name) + tuple_of(*args) + REDUCE


def tensor(storage_name: str, key: str, numel: int, offset: int, size, stride,
           rebuild: str = '_rebuild_tensor_v2', extra_args: bytes = b'',
           storage_module: str = 'torch') -> bytes:
  """`_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())` opcodes."""
  storage = tuple_of(text('storage'), global_ref(storage_module, storage_name), text(key),
                     text('cpu'), integer(numel)) + BINPERSID
  hooks = global_ref('collections', 'OrderedDict') + EMPTY_TUPLE + REDUCE
  return call('torch._utils', rebuild, storage, integer(offset),
              tuple_of(*map(integer, size)), tuple_of(*map(integer, stride)), NEWFALSE, hooks,
              extra_args)


def dict_of(items: dict[str, bytes]) -> bytes:
  return EMPTY_DICT + MARK + b''.join(text(k) + v for k, v in items.items()) + SETITEMS


def pickle_bytes(body: bytes) -> bytes:
  return PROTO2 + body + STOP


def write_zip(path, data_pkl: bytes, storages: dict[str, bytes], byteorder: str = 'little',
              archive: str = 'archive') -> None:
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
    z.writestr(f'{archive}/data.pkl', data_pkl)
    z.writestr(f'{archive}/byteorder', byteorder)
    for key, data in storages.items():
      z.writestr(f'{archive}/data/{key}', data)
    z.writestr(f'{archive}/version', '3\n')


def write_state_dict(path, arrays: dict[str, np.ndarray], byteorder: str = 'little') -> None:
  """A bare state_dict `.pth` of contiguous tensors, one storage each."""
  items, storages = {}, {}
  for i, (name, array) in enumerate(arrays.items()):
    array = np.ascontiguousarray(array)
    stride = [s // array.itemsize for s in array.strides]
    items[name] = tensor(STORAGE_NAMES[array.dtype], str(i), array.size, 0, array.shape, stride)
    data = array
    if byteorder == 'big' and array.itemsize > 1:
      data = array.view(f'u{array.itemsize}').byteswap()
    storages[str(i)] = data.tobytes()
  write_zip(path, pickle_bytes(dict_of(items)), storages, byteorder)
