"""Quantized checkpoints (Orbax + JSON, tied to their model) and calibration snapshots (npz).

  save_quantized('ckpt', qparams, model, report)     # records the model and the preset
  qparams, report = load_quantized('ckpt', model)    # refuses another model, naming both

A quantized tree mixes arrays with quant objects whose static fields (bits, spec, mode, ...)
are not arrays. `to_state` splits it into a nested dict of arrays (each quant object becomes
a dict of its array fields) plus JSON metadata {path: {qtype, static fields}}; `from_state`
rebuilds it. `save_quantized` writes the arrays with Orbax and the metadata beside them, so an
evaluation can reload the model without recalibrating. The float checkpoints are beside this
module, in `checkpoints`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas import int4
from ouromamba_jax import distributed
from ouromamba_jax.io import atomic
from ouromamba_jax.io import checked_npz
from ouromamba_jax.io import integrity
from ouromamba_jax.io import manifest
from ouromamba_jax.models import registry
from ouromamba_jax.quant import qtypes
from ouromamba_jax.quant import rewrite
from ouromamba_jax.quant.config import ActSpec
from ouromamba_jax.quant.rewrite import as_dict

# 2: QuantizedWeight codes stored K-major, (out, in), int4 packed in halves along `in`
# (`quant.weights.to_kernel_layout`). 1 stored them (in, out), int4 packed in neighbouring pairs
# along `in`; such checkpoints are converted when loaded (`weights_from_v1`).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_FILE = 'quant_meta.json'
ARRAYS_DIR = 'arrays'
OLD_SUFFIX = '_old'


def _static_json(value):
  if isinstance(value, ActSpec):
    return {'ActSpec': dataclasses.asdict(value)}
  return value


def _static_from_json(value):
  if isinstance(value, dict) and set(value) == {'ActSpec'}:
    return ActSpec(**value['ActSpec'])
  return value


def _fields(obj):
  array_fields, static_fields = {}, {}
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    if f.metadata.get('pytree_node', True):
      if value is not None:
        array_fields[f.name] = value
    else:
      static_fields[f.name] = _static_json(value)
  return array_fields, static_fields


def to_state(tree, prefix: str = ''):
  """(nested dict of arrays, {path: {'qtype', 'static'}}) for a (quantized) param tree."""
  arrays, meta = {}, {}
  for key, value in as_dict(tree).items():
    path = f'{prefix}/{key}' if prefix else key
    if qtypes.is_qtype(value):
      array_fields, static_fields = _fields(value)
      arrays[key] = array_fields
      meta[path] = {'qtype': type(value).__name__, 'static': static_fields}
    elif isinstance(value, Mapping):
      arrays[key], sub_meta = to_state(value, path)
      meta.update(sub_meta)
    else:
      arrays[key] = value
  return arrays, meta


def from_state(arrays, meta: Mapping[str, Any]):
  """Inverse of `to_state`."""
  tree = _copy_dicts(arrays)
  for path, info in meta.items():
    cls = qtypes.QTYPES.get(info['qtype'])
    if cls is None:
      raise ValueError(f'unknown quantized type {info["qtype"]!r} at {path}; this checkpoint '
                       f'needs a newer ouromamba_jax (known: {sorted(qtypes.QTYPES)}).')
    keys = path.split('/')
    parent = tree
    for k in keys[:-1]:
      parent = parent[k]
    fields = dict(parent[keys[-1]])
    static = {k: _static_from_json(v) for k, v in info['static'].items()}
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {name: fields.get(name) for name in names if name not in static}
    parent[keys[-1]] = cls(**kwargs, **static)
  return tree


def _v1_codes(values, in_features: int, packed: bool):
  """Version 1's stored weight (..., in, out), or int4 bytes (..., ceil(in/2), out) holding
  rows 2i (low nibble) and 2i + 1 (high), as int8 codes (..., in, out)."""
  values = np.asarray(values)
  if not packed:
    return values
  low, high = map(np.asarray, int4.unpack_nibbles(jnp.asarray(values.view(np.int8))))
  rows, cols = values.shape[-2:]
  codes = np.stack([low, high], axis=-2).reshape(values.shape[:-2] + (2 * rows, cols))
  return codes[..., :in_features, :]


def weights_from_v1(arrays, meta: Mapping[str, Any]):
  """A version-1 array tree with every QuantizedWeight's values in today's layout
  (`quant.weights.to_kernel_layout`, applied to each stacked kernel); other arrays untouched."""
  from ouromamba_jax.quant import weights as w_lib  # pylint: disable=g-import-not-at-top
  tree = _copy_dicts(arrays)
  for path, info in meta.items():
    if info['qtype'] != 'QuantizedWeight':
      continue
    parent = rewrite.get_path(tree, path)   # the weight's dict of arrays, in the copy
    static = info['static']
    codes = _v1_codes(parent['values'], static.get('in_features', 0), static.get('packed', False))
    flat = codes.reshape((-1,) + codes.shape[-2:])
    stored = [np.asarray(w_lib.to_kernel_layout(c, static.get('packed', False))) for c in flat]
    parent['values'] = np.stack(stored).reshape(codes.shape[:-2] + stored[0].shape)
  return tree


def _copy_dicts(tree):
  if isinstance(tree, Mapping):
    return {k: _copy_dicts(v) for k, v in tree.items()}
  return tree


def _to_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def model_record(model) -> dict[str, Any]:
  """The architecture a quantized tree belongs to: registered name (or None) and fields."""
  return {'name': registry.variant_of(model),
          'fields': registry.architecture(model)}


def _describe(record: Mapping[str, Any]) -> str:
  fields = ', '.join(f'{k}={v}' for k, v in record['fields'].items())
  return f'{record.get("name") or "an unregistered model"} ({fields})'


def _checkpointer(ocp):
  """Orbax's checkpointer; for a run one process does alone in a multi-process program
  (`distributed.local_work`: a pipeline run it claimed) one that syncs with no other process,
  since the others are busy with runs of their own."""
  if distributed.process_count() == 1 < jax.process_count():
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f'local{me}'))
  return ocp.StandardCheckpointer()


def save_quantized(path: str, qparams, model, report: Optional[Mapping[str, Any]] = None) -> str:
  """Writes `qparams` of `model` to the directory `path` (Orbax arrays + JSON metadata naming
  the model and the preset). Returns path.

  Atomic: everything is written into a temporary sibling folder that then replaces `path`, so
  a killed save leaves either the previous checkpoint or the new one, never a mix. The
  metadata carries a CRC-32 of every array (Orbax does not checksum them), which
  `load_quantized` verifies. A NaN/Inf array is refused before anything is written."""
  # Lazy: Orbax (and tensorstore) take seconds to import, and only checkpoint I/O needs them.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  report = dict(report or {})
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  arrays, meta = to_state(qparams)
  arrays = _to_numpy(arrays)
  flat = _flatten(arrays)
  integrity.check_finite(flat.items(), path, 'refusing to save it: the quantized tree is '
                         'broken (were the float params or calibration images finite?).')
  tmp = tempfile.mkdtemp(dir=parent, prefix=f'.tmp_{os.path.basename(path)}_')
  try:
    with _checkpointer(ocp) as checkpointer:   # closed: no background thread outlives it
      checkpointer.save(os.path.join(tmp, ARRAYS_DIR), arrays, force=True)
      checkpointer.wait_until_finished()
    doc = {'format_version': FORMAT_VERSION, 'model': model_record(model),
           'preset': (report.get('spec') or {}).get('name'), 'method': report.get('method'),
           'qtypes': meta, 'arrays': manifest.manifest(flat.items()),
           'extra': {'report': report}}
    atomic.write_json(os.path.join(tmp, META_FILE), doc)
    old = None
    if os.path.exists(path):
      old = f'{tmp}{OLD_SUFFIX}'
      os.replace(path, old)      # a kill between these two renames: `recover` undoes it
    os.replace(tmp, path)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return path


def recover(path: str) -> None:
  """Puts back the previous checkpoint when a save was killed between moving it aside and
  moving the new one in (a directory cannot be replaced in one rename)."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    return
  parent, name = os.path.split(path)
  if not os.path.isdir(parent):
    return
  aside = sorted(n for n in os.listdir(parent)
                 if n.startswith(f'.tmp_{name}_') and n.endswith(OLD_SUFFIX))
  if aside:
    os.replace(os.path.join(parent, aside[-1]), path)


def load_quantized(path: str, model=None, mode: Optional[str] = None):
  """Returns (qparams, report) saved by `save_quantized`. With `model`, a checkpoint made for
  another architecture is refused with both named; `mode` ('fake' | 'int') switches the
  execution mode. Damaged metadata or arrays (unreadable, or failing the manifest's checksums)
  and NaN/Inf arrays are refused (`integrity` errors) naming the array."""
  # Lazy: see `save_quantized`.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  recover(path)
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f'{meta_path} not found: {path} is not a quantized checkpoint '
                            'written by save_quantized.')
  try:
    with open(meta_path) as f:
      doc = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise integrity.damaged(meta_path, 'quantized-checkpoint metadata file', e,
                            f'delete {path} and quantize again.') from e
  version = doc.get('format_version')
  if version not in READABLE_VERSIONS:
    raise ValueError(f'{path}: format_version {version} is not supported (this ouromamba_jax '
                     f'reads {READABLE_VERSIONS}); quantize again, or load it with the release '
                     'that wrote it.')
  if model is not None and doc['model']['fields'] != model_record(model)['fields']:
    raise ValueError(f'{path} was quantized for {_describe(doc["model"])}, not for this model, '
                     f'{_describe(model_record(model))}; build that model to load it.')
  remedy = f'delete {path} and quantize again.'
  try:
    with _checkpointer(ocp) as checkpointer:   # closed also when a damaged store raises
      arrays = checkpointer.restore(os.path.join(path, ARRAYS_DIR))
  except Exception as e:  # pylint: disable=broad-except  (tensorstore/Orbax raise many kinds)
    raise integrity.damaged(os.path.join(path, ARRAYS_DIR), 'quantized-checkpoint array store',
                            e, remedy) from e
  flat = _flatten(arrays)
  if 'arrays' in doc:   # checkpoints written before the manifest load unchecked
    manifest.verify(flat, doc['arrays'], path, remedy)
  integrity.check_finite(flat.items(), path, f'the checkpoint is damaged: {remedy}')
  if version == 1:
    arrays = weights_from_v1(arrays, doc['qtypes'])
  arrays = jax.tree.map(jax.numpy.asarray, arrays)
  qparams = from_state(arrays, doc['qtypes'])
  if mode is not None:
    qparams = rewrite.set_mode(qparams, mode)
  return qparams, doc.get('extra', {}).get('report', {})


# ----------------------------------------------------------------------------------------------
# Atomic npz snapshots (calibration resume).

def _flatten(tree, prefix=''):
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}/{key}' if prefix else key
    if isinstance(value, Mapping):
      flat.update(_flatten(value, path))
    else:
      flat[path] = np.asarray(value)
  return flat


def _unflatten(flat):
  tree = {}
  for path, value in flat.items():
    node = tree
    keys = path.split('/')
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = value
  return tree


class SnapshotFile:
  """A (quantized) tree + JSON info in one npz, replaced atomically: calibration's resume point.

  A snapshot that cannot be read is refused (DamagedFileError saying to delete it), not silently
  discarded: it is written atomically, so damage means a disk or another program broke it, and
  quietly recalibrating hours of blocks would hide that.
  """

  def __init__(self, path: str):
    self.path = path

  def save(self, tree, info: Mapping[str, Any]) -> None:
    arrays, meta = to_state(tree)
    flat = _flatten(arrays)
    atomic.write_npz(self.path,
                     __meta__=np.asarray(json.dumps({'qtypes': meta, 'info': dict(info)})), **flat)

  def load(self):
    """(tree, info), or None when nothing was saved yet."""
    if not os.path.exists(self.path):
      return None
    what, remedy = 'calibration snapshot', 'delete it and rerun to recalibrate from block 1.'
    flat = checked_npz.read(self.path, what, remedy)
    try:
      doc = json.loads(str(flat.pop('__meta__')))
    except (KeyError, ValueError) as e:   # no metadata, or not JSON
      raise integrity.damaged(self.path, what, e, remedy) from e
    integrity.check_finite(flat.items(), self.path,
                           'the snapshot is damaged: delete it and rerun to recalibrate.')
    flat = {k: jax.numpy.asarray(v) for k, v in flat.items()}
    return from_state(_unflatten(flat), doc['qtypes']), doc['info']
