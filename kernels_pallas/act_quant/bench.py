"""Benchmark of the activation-quantization kernel against the canonical XLA quantizer.

  python -m kernels_pallas.act_quant.bench --out act_quant.json   # GPU (H100)
  python -m kernels_pallas.act_quant.bench --smoke                # tiny CPU interpret run
  python -m kernels_pallas.act_quant.bench --batch=1 --warps=4,8,16  # the small-grid warps

Shapes: batch 64 x 197 Vim tokens x C, with C the inputs of the quantized Linears of Vim-T/S/B
(in_proj: d_model 192/384/768; x_proj/out_proj: d_inner 384/768/1536). The op is memory-bound,
so the roofline floor is bytes / 3.0 TB/s, bytes = x + inlier codes + outlier codes + mask +
per-token scales (codes one per byte, int4 ones too: the form the mixed GEMM reads; the packed
int4 form was deleted in session 26, NOTES.md). Timing as in `kernels_pallas.mixed_gemm.bench`
(warm-up, rotating inputs, median of back-to-back batches); `speedup_vs_xla` is against
xla_sample. Before timing, every Triton variant's outputs are compared with those of the XLA
variant of its trigger (`mismatch`, per variant: the fraction of differing inlier/outlier codes
and mask entries).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas import _bench
from kernels_pallas.act_quant import api
from kernels_pallas.act_quant.config import ActQuantBlockConfig, ActQuantParams

VIM_BATCH, VIM_TOKENS = 64, 197
# Widest first: Vim-B's widths decide the kernel's defaults, and a call that ends early (every
# variant compiles before it is timed, ~2 min per shape on an H200) should have timed them.
VIM_CHANNELS = (('vim_b.d_inner', 1536), ('vim_b.d_model|vim_s.d_inner', 768),
                ('vim_s.d_model', 384), ('vim_t.d_model', 192))
SMOKE = (2, 23, (('smoke', 64),))  # one shape: the bench's code path (kernel tests cover the rest)


def make_inputs(key, b, l, c, dtype):
  """Heavy-tailed activations with hopping loud channels, and per-step inlier scales."""
  k1, k2, k3 = jax.random.split(key, 3)
  x = jax.random.t(k1, 3.0, (b, l, c), jnp.float32)
  hop = jax.random.randint(k2, (b, l), 0, c)
  x = x + 12.0 * jax.nn.one_hot(hop, c) * (jnp.arange(l)[None, :, None] % 3 == 0)
  scale = jax.random.uniform(k3, (l,), jnp.float32, 2.0, 4.0) / 7.0
  return x.astype(dtype), scale


# --sweep: (samples per program, warps) of the per-sample kernel, timed besides the default
# (`triton_sample_b{b}_w{w}`).
# --unrolled: also the window walked as straight-line code (`triton_sample_unrolled`; each
# width's unrolled kernel compiles for ~1 min against ~1 s for the loop:
# bench/triton_compile_time.py, so it is not timed unless asked).
SWEEP = tuple((b, w) for b in (1, 2, 4, 8) for w in (1, 2, 4, 8))


def variants(smoke, sweep=False, unrolled=False, warps=()):
  """name -> (fn(x, scale) -> IntActivation), xla_sample first (the speedups' baseline);
  `warps`: the per-sample kernel also at each of these warps per program
  (`triton_sample_w{w}`), e.g. to time the small-grid rule (config.SMALL_GRID_PROGRAMS) at
  --batch=1."""
  def kernel(trigger, block_config=None):
    spec = ActQuantParams(bits=4, trigger=trigger)
    return _bench.jit(lambda x, s: api.act_quant(x, s, spec, implementation='triton',
                                                 interpret=smoke, block_config=block_config),
                      smoke)

  swept = {f'triton_sample_b{b}_w{w}': kernel('sample', ActQuantBlockConfig(
      block_b=b, num_warps=w)) for b, w in (SWEEP if sweep else ())}

  def xla(trigger):
    spec = ActQuantParams(bits=4, trigger=trigger)
    return _bench.jit(lambda x, s: api.act_quant(x, s, spec, implementation='xla'), smoke)

  return {
      'xla_sample': xla('sample'),
      'triton_sample': kernel('sample'),
      **({'triton_sample_unrolled': kernel('sample', ActQuantBlockConfig(unroll=True))}
         if unrolled else {}),
      'xla_batch': xla('batch'),
      'triton_batch': kernel('batch'),
      **swept,
      **{f'triton_sample_w{w}': kernel('sample', ActQuantBlockConfig(num_warps=w))
         for w in warps},
  }


def reference_of(vname):
  """The XLA variant a Triton variant is checked against: the one of its trigger."""
  return 'xla_batch' if vname.startswith('triton_batch') else 'xla_sample'


def io_bytes(b, l, c, itemsize):
  """x read; inlier codes, outlier codes and mask written (a byte each per element); the
  per-token outlier scale (fp32)."""
  return b * l * c * itemsize + 3 * b * l * c + 4 * b * l


def mismatch(got, want):
  fields = ('inlier_q', 'outlier_q', 'outlier_mask')
  diffs = sum(int(jnp.sum(getattr(got, f) != getattr(want, f))) for f in fields)
  return diffs / sum(getattr(want, f).size for f in fields)


def run(args):
  smoke = args.smoke
  if smoke:
    b, l, shapes = SMOKE
    timing = dict(warmup=1, trials=2, inner=1, smoke=True)
  else:
    b, l, shapes = args.batch, VIM_TOKENS, VIM_CHANNELS
    timing = dict(warmup=3, trials=args.trials, inner=args.inner)
  dtype = jnp.dtype(args.dtype)
  warps = tuple(int(w) for w in args.warps.split(',') if w)
  table = variants(smoke, args.sweep, args.unrolled, warps)
  results = []
  report = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
                smoke=smoke, hbm_bw=_bench.HBM_BYTES_PER_S, results=results)
  key = jax.random.PRNGKey(0)
  for name, c in shapes:
    key, sub = jax.random.split(key)
    base = make_inputs(sub, b, l, c, dtype)
    copies = [base] + [make_inputs(jax.random.fold_in(sub, i), b, l, c, dtype)
                       for i in range(1, _bench.n_copies(b * l * c * dtype.itemsize, smoke))]
    entry = dict(shape=name, B=b, L=l, C=c, dtype=str(dtype), rotating_copies=len(copies),
                 mismatch={}, variants={})
    wants = {}
    for vname, fn in table.items():  # every Triton variant against XLA, before any timing
      if not vname.startswith('triton_'):
        continue
      ref = reference_of(vname)
      try:
        if ref not in wants:
          wants[ref] = table[ref](*base)
        entry['mismatch'][vname] = mismatch(fn(*base), wants[ref])
      except Exception as e:  # the timing loop reports it again; the other checks go on
        print(f'  {name} {vname}: check failed: {type(e).__name__}: {e}'[:300])
    del wants
    xla_ms = None
    for vname, fn in table.items():
      try:
        sec = _bench.time_fn(fn, copies, **timing)
      except Exception as e:  # report and go on: one failing variant must not hide the rest
        print(f'  {name} {vname}: failed: {type(e).__name__}: {e}'[:300])
        continue
      nbytes = io_bytes(b, l, c, dtype.itemsize)
      floor = nbytes / _bench.HBM_BYTES_PER_S
      ms = sec * 1e3
      if vname == 'xla_sample':
        xla_ms = ms
      entry['variants'][vname] = dict(ms=ms, gb_per_s=nbytes / sec / 1e9, floor_ms=floor * 1e3,
                                      roofline_frac=floor / sec, bytes=nbytes,
                                      speedup_vs_xla=(xla_ms / ms) if xla_ms else None)
      print(f'  {name:30s} {vname:22s} {ms:8.4f} ms', flush=True)
    results.append(entry)
    _bench.write_report(report, args.out)  # what a call cut short has timed comes back
  return report


def print_table(report):
  print(f'\nact_quant on {report["device"]} ({report["backend"]})'
        f'{" SMOKE (interpret, timings meaningless)" if report["smoke"] else ""}')
  print(f'{"shape":30s} {"C":>5s} {"variant":22s} {"ms":>9s} {"GB/s":>7s} {"floor ms":>9s} '
        f'{"%roof":>6s} {"x xla":>6s} mismatch vs XLA')
  for e in report['results']:
    for vname, v in e['variants'].items():
      speed = f'{v["speedup_vs_xla"]:.2f}' if v['speedup_vs_xla'] else '-'
      mm = e['mismatch'].get(vname)
      mm = '-' if mm is None else f'{mm:.1e}'
      print(f'{e["shape"]:30s} {e["C"]:5d} {vname:22s} {v["ms"]:9.4f} {v["gb_per_s"]:7.0f} '
            f'{v["floor_ms"]:9.4f} {100 * v["roofline_frac"]:5.1f}% {speed:>6s} {mm}')


def main(argv=None):
  def options(parser):
    parser.add_argument('--dtype', default='bfloat16', help='activation dtype (bfloat16|float32)')
    parser.add_argument('--sweep', action='store_true',
                        help='also time the per-sample kernel at every (block_b, num_warps) '
                             'of SWEEP (triton_sample_b{b}_w{w})')
    parser.add_argument('--unrolled', action='store_true',
                        help='also time the window walked as straight-line code '
                             '(triton_sample_unrolled; slow compiles)')
    parser.add_argument('--batch', type=int, default=VIM_BATCH,
                        help='samples per call (64: a Vim batch of 64; 1: batch 1, a small grid)')
    parser.add_argument('--warps', default='',
                        help='comma-separated warps per program to time the per-sample kernel '
                             'at besides its default (triton_sample_w{w}; e.g. 4,8,16 at '
                             '--batch=1)')
  return _bench.main(__doc__, run, print_table, argv, add_options=options)


if __name__ == '__main__':
  main()
