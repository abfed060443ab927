"""Benchmark of the mixed int4/int8 GEMM against XLA bf16 and XLA int8 matmuls at Vim shapes.

  python -m kernels_pallas.mixed_gemm.bench --out mixed_gemm.json   # GPU (H100)
  python -m kernels_pallas.mixed_gemm.bench --sweep --out f.json    # also try a few tiles
  python -m kernels_pallas.mixed_gemm.bench --sweep --shapes=vim_b --tokens=197   # batch 1
  python -m kernels_pallas.mixed_gemm.bench --smoke                 # tiny CPU interpret run

Tokens M = 64 * 197 (batch 64, 197 Vim tokens); (K, N) are the in_proj and out_proj of
Vim-T/S/B and Vim-B's x_proj and dt_proj. Activations are int4 codes one per byte, as the
model sends them. Each timing: warm-up, then `trials` runs of `inner` back-to-back calls over inputs
rotated through enough copies to spill the 50 MB L2, blocked on the last; the median per-call
time is reported. The roofline floor is max(ops / peak, bytes / HBM bandwidth) with bf16
~800 TFLOP/s (measured on H100), int8 2x that, HBM 3.0 TB/s. Before timing, the kernel's int32
sums are checked equal to XLA's at every shape (`exact` in the JSON).
"""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp

from kernels_pallas import _bench
from kernels_pallas import int4
from kernels_pallas.mixed_gemm import api, reference
from kernels_pallas.mixed_gemm.config import (MixedGemmBlockConfig, default_block_config,
                                             reading_weights_as_stored)

BF16_PEAK = 800e12       # FLOP/s, dense bf16 MMA as measured on the H100
INT8_PEAK = 2 * BF16_PEAK
HBM_BW = _bench.HBM_BYTES_PER_S

VIM_TOKENS = 64 * 197
VIM_SHAPES = (  # (name, K, N); Vim-B first: its shapes decide the defaults, and a call cut short
    # (the JSON is rewritten after every shape) should have timed them
    ('vim_b.in_proj', 768, 3072), ('vim_b.out_proj', 1536, 768), ('vim_b.x_proj', 1536, 80),
    ('vim_b.dt_proj', 48, 1536), ('vim_s.in_proj', 384, 1536), ('vim_s.out_proj', 768, 384),
    ('vim_t.in_proj', 192, 768), ('vim_t.out_proj', 384, 192),
)
# --sweep times SWEEP_CONFIGS for these (the model's forms); the other kernel variants, which
# answer narrower questions (the outlier walk, what outliers cost), run their default tile only.
SWEPT_VARIANTS = ('triton_w4a4o8', 'triton_w8a8')
SMOKE_SHAPES = (('smoke.a', 128, 64), ('smoke.b', 192, 48))
# Every tile fits sm_90's shared memory with the outlier codes (`shared_bytes`: 128 x 128 x 256
# and 128 x 64 x 256 at 3 stages, sweep tiles until session 24, needed 288 / 240 KiB and could
# not launch); 64 x 128 x 128 / 3 stages and 64 x 64 x 128 fit 2 and 3 programs per SM by
# registers and shared memory (the default fits 1; SASS, bench/triton_compile_time.py).
SWEEP_CONFIGS = (
    MixedGemmBlockConfig(128, 128, 128, 8, 3), MixedGemmBlockConfig(128, 128, 256, 8, 2),
    MixedGemmBlockConfig(64, 128, 128, 4, 4), MixedGemmBlockConfig(128, 256, 128, 8, 3),
    MixedGemmBlockConfig(64, 64, 256, 4, 4), MixedGemmBlockConfig(128, 64, 256, 4, 2),
    MixedGemmBlockConfig(64, 128, 128, 4, 3), MixedGemmBlockConfig(64, 64, 128, 4, 3),
)
# Also swept where M <= SMALL_M (batch 1's 197 rows): row tiles under 64 (mma.sync instead of
# wgmma) spread a batch-1 call over more SMs (in_proj at 64 x 128: 96 programs on 132 SMs).
# Session 34's batch-1 sweep was timed at the host's dispatch pace, so it could not rank tiles.
# All three compile for sm_90 without spills (96 / 222 / 104 registers, session 36).
SMALL_M = 512
SMALL_M_SWEEP_CONFIGS = (
    MixedGemmBlockConfig(32, 64, 128, 4, 3), MixedGemmBlockConfig(32, 128, 128, 4, 3),
    MixedGemmBlockConfig(16, 64, 256, 4, 3),
)


@dataclasses.dataclass
class Problem:
  """Random codes and scales for one (M, K, N); int8 operands are what the XLA int8 dot reads."""
  m: int
  k: int
  n: int
  x_codes: jax.Array
  x_int8: jax.Array
  x_outlier: jax.Array
  x_bf16: jax.Array
  w_packed: jax.Array
  w_int8: jax.Array
  w_bf16: jax.Array
  a_scale: jax.Array
  o_scale: jax.Array
  w_scale: jax.Array


def make_problem(key, m, k, n, outlier_frac=0.02):
  ks = jax.random.split(key, 8)
  xi = jax.random.randint(ks[0], (m, k), -7, 8, jnp.int8)
  xo = jax.random.randint(ks[1], (m, k), -127, 128, jnp.int8)
  xo = jnp.where(jax.random.uniform(ks[2], (m, k)) < outlier_frac, xo, 0).astype(jnp.int8)
  w4 = jax.random.randint(ks[3], (n, k), -7, 8, jnp.int8)      # K-major, as the model stores
  w8 = jax.random.randint(ks[4], (n, k), -127, 128, jnp.int8)
  x8 = jax.random.randint(ks[5], (m, k), -127, 128, jnp.int8)
  return Problem(
      m=m, k=k, n=n, x_codes=xi, x_int8=x8, x_outlier=xo,
      x_bf16=jax.random.normal(ks[6], (m, k), jnp.bfloat16), w_packed=int4.pack_int4(w4, -1),
      w_int8=w8, w_bf16=jax.random.normal(ks[7], (k, n), jnp.bfloat16),
      a_scale=jnp.full((m,), 0.02, jnp.float32), o_scale=jnp.full((m,), 0.1, jnp.float32),
      w_scale=jnp.full((n,), 0.01, jnp.float32))


def variants(smoke):
  """name -> (builder(problem) -> (fn, args), ops, bytes, peak, uses_kernel)."""
  impl = dict(implementation='triton', interpret=smoke)

  def bf16(p):
    return _bench.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.bfloat16), smoke), \
        (p.x_bf16, p.w_bf16)

  def int8(p):
    return _bench.jit(lambda x, w: jax.lax.dot_general(
        x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32), smoke), \
        (p.x_int8, p.w_int8)

  def xla_w4a4o8(p):
    f = _bench.jit(lambda x, a, w, s, xo, o: reference.mixed_gemm_xla(
        x, a, w, s, xo, o), smoke)
    return f, (p.x_codes, p.a_scale, p.w_packed, p.w_scale, p.x_outlier, p.o_scale)

  # Activations go in as the model sends them (`int_linear.prepare_operands`): int4 codes one
  # per byte, next to int4-packed weights.
  def kernel(weight_bits, outliers, dense_outliers_above=None, as_stored=False):
    def build(p, cfg=None):
      """(fn, args, the tile it runs: `cfg`, else the library's for the shape)."""
      cfg = cfg or default_block_config(p.m, p.n, p.k, weight_bits)
      if dense_outliers_above is not None:
        # Lists walk the weight unpacked (a narrow weight's default reads it as stored).
        cfg = dataclasses.replace(cfg, dense_outliers_above=dense_outliers_above,
                                  weights_as_stored=False)
      if as_stored:
        cfg = reading_weights_as_stored(cfg)
      x = p.x_codes if weight_bits == 4 else p.x_int8
      w = p.w_packed if weight_bits == 4 else p.w_int8
      xo, o = (p.x_outlier, p.o_scale) if outliers else (None, None)
      f = _bench.jit(lambda x, a, w, s, xo, o: api.mixed_gemm(
          x, a, w, s, xo, o, weight_bits=weight_bits, block_config=cfg,
          **impl), smoke)
      return f, (x, p.a_scale, w, p.w_scale, xo, o), cfg
    return build

  def mnk(p):
    return p.m * p.n * p.k

  return {
      'xla_bf16': (bf16, lambda p: 2 * mnk(p),
                   lambda p: 2 * (p.m * p.k + p.k * p.n + p.m * p.n), BF16_PEAK, False),
      'xla_int8': (int8, lambda p: 2 * mnk(p),
                   lambda p: p.m * p.k + p.k * p.n + 4 * p.m * p.n, INT8_PEAK, False),
      'xla_w4a4o8': (xla_w4a4o8, lambda p: 4 * mnk(p),
                     lambda p: 2 * p.m * p.k + p.k * p.n // 2 + 2 * p.m * p.n, INT8_PEAK,
                     False),
      'triton_w4a4o8': (kernel(4, True), lambda p: 4 * mnk(p),
                        lambda p: 2 * p.m * p.k + p.k * p.n // 2 + 2 * p.m * p.n,
                        INT8_PEAK, True),
      # the packed weight unpacked in the kernel (`weights_as_stored`), not by XLA before it
      'triton_w4a4o8_as_stored': (kernel(4, True, as_stored=True), lambda p: 4 * mnk(p),
                                  lambda p: 2 * p.m * p.k + p.k * p.n // 2 + 2 * p.m * p.n,
                                  INT8_PEAK, True),
      # the outlier product always listed (gathers); the default above walks it densely
      'triton_w4a4o8_list': (kernel(4, True, 1.0), lambda p: 4 * mnk(p),
                             lambda p: 2 * p.m * p.k + p.k * p.n // 2 + 2 * p.m * p.n,
                             INT8_PEAK, True),
      'triton_w4a4': (kernel(4, False), lambda p: 2 * mnk(p),
                      lambda p: p.m * p.k + p.k * p.n // 2 + 2 * p.m * p.n, INT8_PEAK, True),
      'triton_w8a8': (kernel(8, False), lambda p: 2 * mnk(p),
                      lambda p: p.m * p.k + p.k * p.n + 2 * p.m * p.n, INT8_PEAK, True),
  }


def check_exact(p, smoke):
  """Kernel int32 sums == XLA int32 sums for W4A4+O8 and W8A8 at this shape."""
  ok = True
  for wb, x, w in ((4, p.x_codes, p.w_packed), (8, p.x_int8, p.w_int8)):
    got = api.mixed_gemm_accumulators(x, w, p.x_outlier, weight_bits=wb,
                                      implementation='triton', interpret=smoke)
    want = api.mixed_gemm_accumulators(x, w, p.x_outlier, weight_bits=wb, implementation='xla')
    ok &= all(bool(jnp.array_equal(g, e)) for g, e in zip(got, want))
  return ok


def run(args):
  smoke = args.smoke
  m = 64 if smoke else args.tokens
  shapes = SMOKE_SHAPES if smoke else VIM_SHAPES
  if args.shapes:
    shapes = [s for s in shapes if re.search(args.shapes, s[0])]
    if not shapes:
      raise SystemExit(f'--shapes={args.shapes!r} matches none of '
                       f'{[s[0] for s in (SMOKE_SHAPES if smoke else VIM_SHAPES)]}.')
  timing = dict(warmup=1, trials=2, inner=1, smoke=True) if smoke else dict(warmup=3, trials=args.trials,
                                                               inner=args.inner)
  table = variants(smoke)
  results = []
  report = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
                smoke=smoke, peaks=dict(bf16_flops=BF16_PEAK, int8_ops=INT8_PEAK, hbm_bw=HBM_BW),
                results=results)
  key = jax.random.PRNGKey(0)
  for name, k, n in shapes:
    key, sub = jax.random.split(key)
    base = make_problem(sub, m, k, n, args.outlier_frac)
    set_bytes = m * k * 2 + k * n * 2
    copies = [base] + [make_problem(jax.random.fold_in(sub, i), m, k, n, args.outlier_frac)
                       for i in range(1, _bench.n_copies(set_bytes, smoke))]
    entry = dict(shape=name, M=m, K=k, N=n, outlier_frac=args.outlier_frac,
                 rotating_copies=len(copies),
                 exact=check_exact(base, smoke), variants={})
    bf16_ms = None
    for vname, (build, ops_fn, bytes_fn, peak, uses_kernel) in table.items():
      configs = [None]
      if vname in SWEPT_VARIANTS and args.sweep and not smoke:
        configs = [None] + list(SWEEP_CONFIGS) + list(SMALL_M_SWEEP_CONFIGS if m <= SMALL_M
                                                      else ())
      best, tried = None, []
      for cfg in configs:
        try:
          fn, _, *used = build(base, cfg) if uses_kernel else build(base)
          arg_sets = [(build(c, cfg) if uses_kernel else build(c))[1] for c in copies]
          sec = _bench.time_fn(fn, arg_sets, **timing)
        except Exception as e:  # a tile the compiler rejects must not end the sweep
          print(f'  {name} {vname} cfg={cfg}: failed: {type(e).__name__}: {e}'[:300])
          continue
        used = used[0] if used else None
        tried.append(dict(ms=sec * 1e3, default=cfg is None,
                          config=dataclasses.asdict(used) if used else None))
        if best is None or sec < best[0]:
          best = (sec, used)
      if best is None:
        continue
      sec, cfg = best
      ops, nbytes = ops_fn(base), bytes_fn(base)
      floor = max(ops / peak, nbytes / HBM_BW)
      ms = sec * 1e3
      if vname == 'xla_bf16':
        bf16_ms = ms
      entry['variants'][vname] = dict(
          ms=ms, tops=ops / sec / 1e12, floor_ms=floor * 1e3, roofline_frac=floor / sec,
          bytes=nbytes, ops=ops, speedup_vs_bf16=(bf16_ms / ms) if bf16_ms else None,
          config=dataclasses.asdict(cfg) if cfg else None)
      if len(tried) > 1:  # every tile of the sweep, the default's marked: what the winner gains
        entry['variants'][vname]['sweep'] = tried
      tile = '' if cfg is None else (f'  tile {cfg.block_m}x{cfg.block_n}x{cfg.block_k} '
                                     f'w{cfg.num_warps} s{cfg.num_stages}')
      print(f'  {name:16s} {vname:20s} {ms:8.4f} ms{tile}', flush=True)
    results.append(entry)
    _bench.write_report(report, args.out)  # what a call cut short has timed comes back
  return report


def print_table(report):
  print(f'\nmixed_gemm on {report["device"]} ({report["backend"]})'
        f'{" SMOKE (interpret, timings meaningless)" if report["smoke"] else ""}')
  print(f'{"shape":16s} {"M":>6s} {"K":>5s} {"N":>5s} {"variant":14s} {"ms":>9s} {"TOPS":>7s} '
        f'{"floor ms":>9s} {"%roof":>6s} {"x bf16":>7s} exact')
  for e in report['results']:
    for vname, v in e['variants'].items():
      speed = f'{v["speedup_vs_bf16"]:.2f}' if v['speedup_vs_bf16'] else '-'
      print(f'{e["shape"]:16s} {e["M"]:6d} {e["K"]:5d} {e["N"]:5d} {vname:14s} '
            f'{v["ms"]:9.4f} {v["tops"]:7.1f} {v["floor_ms"]:9.4f} '
            f'{100 * v["roofline_frac"]:5.1f}% {speed:>7s} {e["exact"]}')


def main(argv=None):
  def options(parser):
    parser.add_argument('--sweep', action='store_true', help='also time a few block configs')
    parser.add_argument('--tokens', type=int, default=VIM_TOKENS)
    parser.add_argument('--shapes', default='',
                        help='regex over the shape names (e.g. vim_b), default: all')
    parser.add_argument('--outlier_frac', type=float, default=0.02,
                        help='fraction of non-zero outlier codes (independent per entry)')
  return _bench.main(__doc__, run, print_table, argv, add_options=options)


if __name__ == '__main__':
  main()
