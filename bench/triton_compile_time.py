"""How long Triton takes to compile each Pallas kernel form, measured on a CPU (no GPU needed).

  pip install triton==3.9.0        # once, into the environment that runs this (not a dependency)
  python bench/triton_compile_time.py --out=compile_time.json [--forms=act_quant_c48_unrolled,...]
      [--sass] [--num_warps=N]

Why: three sessions of card time went to compiles that stalled (act_quant's unrolled window
walk: GPU tests and benches that timed out before timing anything, BENCHMARKS.md sessions
22-23). Each form here is lowered for an abstract H100 as the GPU run would lower it, its
Triton IR (`.ttir` text, saved under `--ir_dir`) is compiled to PTX and a cubin for sm_90 by
the `triton` package in a child process under `--timeout`, and the wall time, PTX size and
outcome are reported. The `triton` package is not the one XLA bundles, so the seconds are a
proxy: what matters is the ratio between forms (a form 50x slower to compile than its loop
twin will stall a card too). `--sass` also disassembles each cubin with the wheel's cuobjdump:
registers, spills and the instructions and barriers of the innermost loop, a CPU proxy for a
latency-bound kernel's time (session 23 read act_quant's window step this way).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ouromamba_jax.io import atomic  # pylint: disable=g-import-not-at-top,wrong-import-position

H100 = jax.sharding.AbstractDevice(device_kind='NVIDIA H100 80GB HBM3', num_cores=132,
                                   platform='cuda')
BATCH, TOKENS = 64, 197

# Run in the child process: compile one .ttir file for sm_90, write the cubin beside it and
# print the PTX size and the directory of the triton wheel's CUDA tools (cuobjdump).
_COMPILE = """
import os
import sys
import triton
from triton.backends.compiler import GPUTarget
kernel = triton.compile(sys.argv[1], target=GPUTarget('cuda', 90, 32),
                        options={'num_warps': int(sys.argv[2]), 'num_stages': int(sys.argv[3])})
with open(sys.argv[1][:-len('.ttir')] + '.cubin', 'wb') as f:
  f.write(kernel.asm['cubin'])
print(len(kernel.asm['ptx']))
print(kernel.metadata.shared)
print(os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin'))
"""
_SASS_LINE = re.compile(r'^\s*/\*([0-9a-f]{4,})\*/\s*(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)(.*);')


def _act_quant_form(channels: int, unroll: bool, batch: int = BATCH, producer: str = ''):
  """(lower: () -> None, num_warps, num_stages) of act_quant's codes kernel as a Vim Linear
  input runs it (symmetric 4-bit, int8 outliers, no mask output); `producer`: reading the
  input from its operands, 'direction_mean' (out_proj's: the two directions' outputs,
  `producers.DirectionMean`) or 'rms_normed' (in_proj's: the residual stream and its 1/rms,
  `producers.RMSNormed`)."""
  from kernels_pallas.act_quant import api  # pylint: disable=g-import-not-at-top
  from kernels_pallas.act_quant import pallas_triton  # pylint: disable=g-import-not-at-top
  from kernels_pallas.act_quant import producers  # pylint: disable=g-import-not-at-top
  from kernels_pallas.act_quant.config import ActQuantBlockConfig, ActQuantParams  # pylint: disable=g-import-not-at-top
  x = jax.ShapeDtypeStruct((batch, TOKENS, channels), jnp.bfloat16)
  kw = api._kernel_args(ActQuantParams(bits=4), x, ActQuantBlockConfig(unroll=unroll), False)  # pylint: disable=protected-access
  if producer == 'direction_mean':
    x = producers.DirectionMean(x, x, jnp.dtype(jnp.bfloat16))
  elif producer == 'rms_normed':
    x = producers.RMSNormed(jax.ShapeDtypeStruct(x.shape, jnp.float32),
                            jax.ShapeDtypeStruct(x.shape[:2], jnp.float32),
                            jax.ShapeDtypeStruct(x.shape[2:], jnp.float32),
                            jnp.dtype(jnp.bfloat16))
  scale = jax.ShapeDtypeStruct((TOKENS,), jnp.float32)
  lower = lambda: pallas_triton.act_quant.trace(
      x, scale, None, trigger='sample', with_mask=False, **kw).lower(
          lowering_platforms=('cuda',))
  return lower, kw['num_warps'], 1


def _scan_form(channels: int = 1536, mean_with: bool = False, batch: int = BATCH):
  """The float selective scan, or writing the two directions' mean (Vim-B width, the
  library's tile for it; at batch 1 that splits the sequence: the form is the second walk,
  from each segment's carried state)."""
  from kernels_pallas.selective_scan import pallas_triton  # pylint: disable=g-import-not-at-top
  from kernels_pallas.selective_scan.config import default_block_config  # pylint: disable=g-import-not-at-top
  shape = lambda *s, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(s, dtype)
  n = 16
  args = (shape(batch, TOKENS, channels), shape(batch, TOKENS, channels),
          shape(channels, n, dtype=jnp.float32), shape(batch, TOKENS, n),
          shape(batch, TOKENS, n), shape(channels, dtype=jnp.float32),
          shape(batch, TOKENS, channels), None)
  cfg = default_block_config(channels, jnp.bfloat16, batch=batch, length=TOKENS)  # the model's
  fn = jax.jit(lambda *a: pallas_triton.selective_scan(
      *a, delta_softplus=True, interpret=False, block_config=cfg,
      mean_with=a[0] if mean_with else None))
  lower = lambda: fn.trace(*args).lower(lowering_platforms=('cuda',))
  return lower, cfg.num_warps, cfg.num_stages


def _dequantized_form(channels: int = 1536):
  """act_quant's one-pass quantize-dequantize as Vim's Δ site runs it (asymmetric 4-bit,
  k = 4, int8 outliers)."""
  from kernels_pallas.act_quant import api  # pylint: disable=g-import-not-at-top
  from kernels_pallas.act_quant import pallas_triton  # pylint: disable=g-import-not-at-top
  from kernels_pallas.act_quant.config import ActQuantParams  # pylint: disable=g-import-not-at-top
  params = ActQuantParams(bits=4, symmetric=False, k=4.0)
  x = jax.ShapeDtypeStruct((BATCH, TOKENS, channels), jnp.bfloat16)
  kw = api._kernel_args(params, x, None, False)  # pylint: disable=protected-access
  steps = jax.ShapeDtypeStruct((TOKENS,), jnp.float32)
  zero = jax.ShapeDtypeStruct((TOKENS,), jnp.int32)
  lower = lambda: pallas_triton.act_quant_dequantized.trace(
      x, steps, zero, out_dtype=jnp.dtype(jnp.bfloat16), **kw).lower(
          lowering_platforms=('cuda',))
  return lower, kw['num_warps'], 1


def _gemm_form(k: int, n: int = 1536, tile=None, batch: int = BATCH, as_stored: bool = False):
  """The W4A4O8 mixed GEMM (int8 codes, packed int4 K-major weights, dense outliers, bias) at
  Vim-B's rows for `batch`: K = 768 (in_proj's input), K = 48 (dt_proj's); `tile` a
  MixedGemmBlockConfig (default: the library's for the shape); `as_stored`: the form that
  reads the packed weight as stored and unpacks it in the kernel."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from kernels_pallas.mixed_gemm import config  # pylint: disable=g-import-not-at-top
  from kernels_pallas.mixed_gemm import pallas_triton  # pylint: disable=g-import-not-at-top
  m, s = batch * TOKENS, jax.ShapeDtypeStruct
  args = (s((m, k), jnp.int8), s((m,), jnp.float32), s((n, k // 2), jnp.int8),
          s((n,), jnp.float32), s((m, k), jnp.int8), s((m,), jnp.float32), s((n,), jnp.float32))
  cfg = tile or config.default_block_config(m, n, k)
  if as_stored:
    cfg = config.reading_weights_as_stored(cfg) if tile is None else dataclasses.replace(
        cfg, weights_as_stored=True)
  lower = lambda: pallas_triton.mixed_gemm.trace(
      *args, k=k, weight_bits=4, out_dtype=jnp.dtype(jnp.bfloat16), cfg=cfg).lower(
          lowering_platforms=('cuda',))
  return lower, cfg.num_warps, cfg.num_stages


def _gemm_tile(*fields):
  from kernels_pallas.mixed_gemm.config import MixedGemmBlockConfig  # pylint: disable=g-import-not-at-top
  return MixedGemmBlockConfig(*fields)


def _readout_form(by_state: bool, backward: bool, grid=(8, 8), channels: int = 384):
  """Gen's patched readout on the testbed's grid (forward or backward kernel; tiles of
  (rows, N x block_d), or walking N by state)."""
  from kernels_pallas.patched_readout import pallas_triton  # pylint: disable=g-import-not-at-top
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  patches, n, block_d, num_warps = grid[0] * grid[1], 16, 32, 4
  args = (f32(BATCH, patches + 1, n, channels), f32(BATCH, patches), f32(BATCH, patches, n))
  static = (patches // 2, grid, 5, True, block_d, num_warps, by_state, False)
  if backward:
    fn = jax.jit(lambda h, w, c, g: pallas_triton._backward(h, w, c, g, *static))  # pylint: disable=protected-access
    lower = lambda: fn.trace(*args, f32(BATCH, patches, channels)).lower(
        lowering_platforms=('cuda',))
  else:
    fn = jax.jit(lambda h, w, c: pallas_triton.patched_readout(h, w, c, *static))
    lower = lambda: fn.trace(*args).lower(lowering_platforms=('cuda',))
  return lower, num_warps, 1


FORMS: dict[str, Callable[[], tuple[Callable[[], Any], int, int]]] = {
    **{f'act_quant_c{c}_{walk}': (lambda c=c, walk=walk: _act_quant_form(c, walk == 'unrolled'))
       for c in (48, 192, 768, 1536) for walk in ('loop', 'unrolled')},
    'act_quant_c48_b2_unrolled': lambda: _act_quant_form(48, True, batch=2),  # Vim-B batch 1
    'act_quant_c1536_direction_mean': lambda: _act_quant_form(1536, False,
                                                              producer='direction_mean'),
    'act_quant_c768_rms_normed': lambda: _act_quant_form(768, False, producer='rms_normed'),
    'act_quant_dequantized_c1536': _dequantized_form,
    'mixed_gemm_k768': lambda: _gemm_form(768),
    # the sweep's tiles that fit 2 and 3 programs per SM (mixed_gemm NOTES, session 24)
    'mixed_gemm_k768_64x128x128': lambda: _gemm_form(768, tile=_gemm_tile(64, 128, 128, 4, 3)),
    'mixed_gemm_k768_64x64x128': lambda: _gemm_form(768, tile=_gemm_tile(64, 64, 128, 4, 3)),
    'mixed_gemm_k48': lambda: _gemm_form(48),
    'mixed_gemm_k768_as_stored': lambda: _gemm_form(768, as_stored=True),
    # batch 1: the kernel on XLA's unpacked copy against the one reading the packed weight as
    # stored (in_proj, out_proj, dt_proj)
    'mixed_gemm_k768_b1': lambda: _gemm_form(768, n=3072, batch=1),
    'mixed_gemm_k768_b1_as_stored': lambda: _gemm_form(768, n=3072, batch=1, as_stored=True),
    'mixed_gemm_k1536_b1': lambda: _gemm_form(1536, n=768, batch=1),
    'mixed_gemm_k1536_b1_as_stored': lambda: _gemm_form(1536, n=768, batch=1, as_stored=True),
    'mixed_gemm_k48_b1': lambda: _gemm_form(48, batch=1),
    'mixed_gemm_k48_b1_as_stored': lambda: _gemm_form(48, batch=1, as_stored=True),
    'scan': _scan_form,
    'scan_b1_segments': lambda: _scan_form(batch=1),
    'scan_direction_mean': lambda: _scan_form(mean_with=True),
    **{f'readout_{pass_}{"_by_state" if by_state else ""}': (
        lambda by_state=by_state, pass_=pass_: _readout_form(by_state, pass_ == 'backward'))
       for pass_ in ('forward', 'backward') for by_state in (False, True)},
}


def triton_ir(lower: Callable[[], Any]) -> str:
  """The Triton IR text of the (last) Pallas kernel that `lower()` lowers. Pallas serializes
  the module into the custom call as bytecode; its text is taken at the lowering step (a
  private JAX function, wrapped for the call: pinned jax 0.11.2)."""
  from jax._src.pallas.triton import pallas_call_registration as registration  # pylint: disable=g-import-not-at-top
  captured = []
  original = registration.lowering.lower_jaxpr_to_triton_module

  def capture(*args, **kwargs):
    result = original(*args, **kwargs)
    captured.append(result.module.operation.get_asm(enable_debug_info=False))
    return result

  registration.lowering.lower_jaxpr_to_triton_module = capture
  jax.clear_caches()  # a form lowered before in this process would be a cache hit: no capture
  try:
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ('x',),
                                                                  abstract_device=H100)):
      lower()
  finally:
    registration.lowering.lower_jaxpr_to_triton_module = original
  if not captured:
    raise RuntimeError('no Pallas Triton kernel was lowered; is this form a Pallas kernel?')
  return captured[-1]


def compile_seconds(ir_path: str, num_warps: int, num_stages: int, timeout: float,
                    python: str = sys.executable) -> dict[str, Any]:
  """Compiles one .ttir file in a child process: {'seconds', 'ptx_chars'} or {'error'}."""
  start = time.perf_counter()
  try:
    done = subprocess.run([python, '-c', _COMPILE, ir_path, str(num_warps), str(num_stages)],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, 'TRITON_DEFAULT_FP_FUSION': '1',
                               'TRITON_CACHE_DIR': tempfile.mkdtemp(prefix='triton_cache_')})
  except subprocess.TimeoutExpired:
    return {'error': f'over the {timeout:.0f} s timeout', 'seconds': timeout}
  seconds = time.perf_counter() - start
  if done.returncode != 0:
    return {'error': (done.stderr.strip().splitlines() or ['?'])[-1][:300], 'seconds': seconds}
  ptx_chars, shared, tools = done.stdout.split()[-3:]
  return {'seconds': seconds, 'ptx_chars': int(ptx_chars), 'shared_bytes': int(shared),
          'cuda_tools': tools}


_REGISTER = re.compile(r'(?<![A-Z])R(\d+)')
_LOAD_WIDTH = {'64': 2, '128': 4}


def load_first_reads(body: list[tuple[str, str]]) -> list[int | None]:
  """Per global load of a loop body ((op, operands) in order): how many instructions later
  its destination registers are first read, None where the body never reads them before its
  back edge (the value is carried into the next iteration). A load read a few instructions
  after it is issued makes the warp wait a memory latency there; act_quant's window step did
  that with its prefetched row until session 36."""
  reads = []
  for i, (op, operands) in enumerate(body):
    dest = _REGISTER.match(operands.strip())
    if op.split('.')[0] != 'LDG' or not dest:  # LDGSTS (to shared memory), LDGDEPBAR: no register
      continue
    width = _LOAD_WIDTH.get(op.split('.')[-1], 1)
    regs = {int(dest.group(1)) + j for j in range(width)}
    first = None
    for j in range(i + 1, len(body)):
      later_op, later = body[j]
      first_operand = later.split(',')[0].strip()
      writes = not later_op.startswith('ST') and re.fullmatch(r'R\d+(\.\w+)?', first_operand)
      sources = [int(r) for r in _REGISTER.findall(later)][1 if writes else 0:]
      if regs & set(sources):
        first = j - i
        break
    reads.append(first)
  return reads


def sass_summary(sass: str, resources: str) -> dict[str, Any]:
  """What bounds a latency-bound kernel, from `cuobjdump -sass` and `-res-usage` text:
  registers and local-memory (spill) bytes per thread, instructions in all, and in the last
  loop body (the range of the last backward branch: a kernel's innermost walk, e.g.
  act_quant's window step) its instructions, barriers, shuffles, global loads and stores,
  calls (a slow path's call splits the body into blocks ptxas schedules apart) and how soon
  each load is read (`load_first_reads`). Instructions and barriers per step were session
  23's proxy for act_quant's time."""
  ops = []
  branches = []
  for line in sass.splitlines():
    m = _SASS_LINE.match(line)
    if not m:
      continue
    addr, op = int(m.group(1), 16), m.group(2)
    ops.append((addr, op, m.group(3)))
    target = re.search(r'0x([0-9a-f]+)', m.group(3)) if op.startswith('BRA') else None
    if target and int(target.group(1), 16) < addr:
      branches.append((int(target.group(1), 16), addr))
  regs = re.search(r'REG:(\d+)', resources)
  local = re.search(r'LOCAL:(\d+)', resources)
  out = {'registers': int(regs.group(1)) if regs else None,
         'local_bytes': int(local.group(1)) if local else None, 'instructions': len(ops)}
  if branches:
    lo, hi = branches[-1]
    body = [(op, operands) for addr, op, operands in ops if lo <= addr <= hi]
    count = lambda prefix: sum(op.startswith(prefix) for op, _ in body)
    out['loop'] = {'instructions': len(body), 'barriers': count('BAR'), 'shuffles': count('SHFL'),
                   'global_loads': count('LDG'), 'global_stores': count('STG'),
                   'calls': count('CALL'), 'load_first_reads': load_first_reads(body)}
  return out


def programs_per_sm(registers: int, num_warps: int, shared_bytes: int = 0) -> int:
  """How many programs of num_warps warps an sm_90 SM holds: by registers (65,536, allocated
  per thread in steps of 8), warp slots (64) and shared memory (228 KiB, 1 KiB of it reserved
  per program). With the launch's program count: whether a grid runs in one wave."""
  per_thread = -(-registers // 8) * 8
  by_shared = (228 * 1024) // (shared_bytes + 1024)
  return min(65536 // (per_thread * 32 * num_warps), 64 // num_warps, by_shared)


def read_sass(cubin_path: str, tools: str) -> dict[str, Any]:
  """Disassembles a cubin with the triton wheel's cuobjdump: `sass_summary`, and the SASS text
  written beside the cubin (.sass)."""
  run = lambda flag: subprocess.run([os.path.join(tools, 'cuobjdump'), flag, cubin_path],
                                    capture_output=True, text=True, check=True).stdout
  sass = run('-sass')
  atomic.write_text(cubin_path[:-len('.cubin')] + '.sass', sass)
  return sass_summary(sass, run('-res-usage'))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--forms', default=','.join(FORMS), help='comma-separated names of FORMS')
  p.add_argument('--out', default='', help='JSON file for the results')
  p.add_argument('--ir_dir', default='', help='where the .ttir files go (default: a temp dir)')
  p.add_argument('--timeout', type=float, default=300.0, help='seconds per compile')
  p.add_argument('--python', default=sys.executable,
                 help='the interpreter that has the triton package')
  p.add_argument('--lower_only', action='store_true', help='write the IR, compile nothing')
  p.add_argument('--num_warps', type=int, default=0,
                 help="compile with this many warps instead of the form's launch setting "
                      '(the Triton IR does not depend on it)')
  p.add_argument('--sass', action='store_true',
                 help="disassemble each cubin (the triton wheel's cuobjdump): registers, "
                      'spills, instructions and barriers of the innermost loop body')
  args = p.parse_args(argv)
  unknown = [f for f in args.forms.split(',') if f not in FORMS]
  if unknown:
    p.error(f'unknown forms {unknown}; choose from {sorted(FORMS)}')
  return args


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  ir_dir = args.ir_dir or tempfile.mkdtemp(prefix='ttir_')
  os.makedirs(ir_dir, exist_ok=True)
  report = {'target': 'cuda sm_90', 'jax': jax.__version__, 'results': []}
  for name in args.forms.split(','):
    lower, num_warps, num_stages = FORMS[name]()
    num_warps = args.num_warps or num_warps
    text = triton_ir(lower)
    path = os.path.join(ir_dir, f'{name}.ttir')
    atomic.write_text(path, text)
    cell = {'form': name, 'num_warps': num_warps, 'num_stages': num_stages,
            'ir_chars': len(text), 'ir': path}
    if not args.lower_only:
      cell.update(compile_seconds(path, num_warps, num_stages, args.timeout, args.python))
      tools = cell.pop('cuda_tools', None)  # this machine's path: not part of the report
      if args.sass and 'error' not in cell:
        cell['sass'] = read_sass(path[:-len('.ttir')] + '.cubin', tools)
        cell['sass']['programs_per_sm'] = programs_per_sm(cell['sass']['registers'], num_warps,
                                                          cell['shared_bytes'])
    report['results'].append(cell)
    took = (f"{cell['seconds']:7.1f} s" if 'seconds' in cell else '      -')
    sass = cell.get('sass', {})
    loop = sass.get('loop', {})
    print(f"{name:28s} IR {len(text):8d} chars  compile {took}  "
          + (f"warps {num_warps} regs {sass['registers']} ({sass['programs_per_sm']} per SM) "
             f"loop {loop.get('instructions')} instr {loop.get('barriers')} bar "
             f"{loop.get('calls')} calls, loads first read after {loop.get('load_first_reads')}  "
             if sass else '')
          + f"{cell.get('error') or ''}", flush=True)
    if args.out:
      atomic.write_json(args.out, report)
  return report


if __name__ == '__main__':
  main()
