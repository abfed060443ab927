"""Which source line made each kernel of a compiled program: HLO metadata → `file:line`.

A GPU profile names XLA's kernels after their HLO instructions (`loop_add_fusion_4`), which
says nothing about the model code that asked for them. The compiled module's text keeps, per
instruction, the JAX op name and a stack frame; this module reads both so that a profile's
device time can be summed by the model line that produced it (`profile_e2e.py --by_source`).
Only text parsing: works on any backend's `compiled.as_text()`.
"""
from __future__ import annotations

import collections
import re

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FRAME = re.compile(r'stack_frame_id=(\d+)')
_CALLS = re.compile(r'calls=%([\w.\-]+)')
_TABLE_ROW = re.compile(r'^(\d+)\s+(.*)$')
_FIELDS = re.compile(r'(\w+)=("[^"]*"|\S+?)(?=[\s}])')
_PROJECT_DIRS = ('ouromamba_jax/', 'kernels_pallas/')


def _tables(text: str) -> dict[str, dict[int, str]]:
  """The module's FileNames / FunctionNames / FileLocations / StackFrames tables, raw rows."""
  tables, current = {}, None
  for line in text.splitlines():
    if line in ('FileNames', 'FunctionNames', 'FileLocations', 'StackFrames'):
      current = tables.setdefault(line, {})
      continue
    row = _TABLE_ROW.match(line) if current is not None else None
    if row:
      current[int(row.group(1))] = row.group(2)
    else:
      current = None
  return tables


def _frames(text: str) -> dict[int, list[str]]:
  """{stack frame id: ['file:line function', ...] innermost first}."""
  t = _tables(text)
  if not t.get('StackFrames'):
    return {}
  unquote = lambda s: s.strip('"')
  files = {k: unquote(v) for k, v in t.get('FileNames', {}).items()}
  functions = {k: unquote(v) for k, v in t.get('FunctionNames', {}).items()}
  locations = {}
  for k, v in t.get('FileLocations', {}).items():
    f = dict(_FIELDS.findall(v))
    locations[k] = (f'{files.get(int(f.get("file_name_id", 0)), "?")}:{f.get("line", "?")} '
                    f'{functions.get(int(f.get("function_name_id", 0)), "?")}')
  parents = {}
  for k, v in t['StackFrames'].items():
    f = dict(_FIELDS.findall(v))
    parents[k] = (int(f.get('file_location_id', 0)), int(f.get('parent_frame_id', 0)))
  out = {}
  for k in parents:
    chain, seen, frame = [], set(), k
    while frame in parents and frame not in seen:
      seen.add(frame)
      location, parent = parents[frame]
      chain.append(locations.get(location, '?'))
      frame = parent
    out[k] = chain
  return out


def _short_file(location: str) -> str:
  """`/abs/path/ouromamba_jax/models/vim.py:120 f` → `ouromamba_jax/models/vim.py:120 f`."""
  for d in _PROJECT_DIRS:
    i = location.find(d)
    if i >= 0:
      return location[i:]
  return location.rsplit('/', 1)[-1]


def instruction_sources(text: str) -> dict[str, str]:
  """{instruction name: 'op · project file:line function'} for every instruction with metadata.

  The location is the innermost stack frame inside the project (the model or kernel line),
  falling back to the innermost frame; the op is the last part of JAX's op name (the
  primitive, e.g. `convert_element_type`). Fusions carry their root's metadata; for a fusion
  without any, the first instruction with metadata inside its fused computation is used.
  """
  frames = _frames(text)
  own, calls, first_in = {}, {}, {}
  computation = None
  for line in text.splitlines():
    if line.startswith(('%', 'ENTRY')) and line.rstrip().endswith('{'):
      computation = line.split()[1 if line.startswith('ENTRY') else 0].lstrip('%')
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, rest = m.groups()
    c = _CALLS.search(rest)
    if c:
      calls[name] = c.group(1)
    op = _OP_NAME.search(rest)
    if not op or not op.group(1).startswith('jit('):
      continue
    frame = _FRAME.search(rest)
    chain = frames.get(int(frame.group(1)), []) if frame else []
    inside = [loc for loc in chain if any(d in loc for d in _PROJECT_DIRS)]
    where = _short_file((inside or chain or ['?'])[0])
    label = f'{op.group(1).rsplit("/", 1)[-1]} · {where}'
    own[name] = label
    if computation is not None:
      first_in.setdefault(computation, label)
  for name, called in calls.items():
    if name not in own and called in first_in:
      own[name] = first_in[called]
  return own


def _normalized(name: str) -> str:
  return name.replace('.', '_').replace('-', '_')


def by_source(kernel_us: dict[str, float], sources: dict[str, str]) -> list[tuple[str, float, int]]:
  """Sum per-kernel device time by source label: [(label, µs, kernels)], largest first.

  Profiles write instruction names with `_` where HLO has `.`; kernels no instruction
  explains (Pallas/Triton kernels, cuBLAS, memcpy) keep their own name as the label.
  """
  lookup = {_normalized(k): v for k, v in sources.items()}
  totals, counts = collections.Counter(), collections.Counter()
  for kernel, us in kernel_us.items():
    label = sources.get(kernel) or lookup.get(_normalized(kernel)) or f'(kernel) {kernel}'
    totals[label] += us
    counts[label] += 1
  return [(label, us, counts[label]) for label, us in totals.most_common()]
