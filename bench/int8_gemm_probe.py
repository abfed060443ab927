"""Why the Pallas int8 GEMM is 3-5x slower than cuBLAS bf16: a probe of the weight layout.

  python bench/int8_gemm_probe.py --out=probe.json

Hopper's int8 wgmma reads its B operand K-major. The mixed GEMM used to read (K, N) (N-major)
weight tiles, which Triton cannot feed to wgmma from shared memory directly; this probe's
answer (2026-12-02) made it read them K-major. This times, at the Vim
GEMM shapes, a minimal Pallas int8 GEMM (masked M/N tails, as the mixed GEMM) (int32 accumulate, per-row x per-column fp32 epilogue,
bf16 out) with weights (K, N) and with weights (N, K), over a few tiles, next to XLA's bf16
and int8 dots in the same run. Every variant's output is checked against the XLA int8 dot.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels_pallas import _pallas_compat as compat  # pylint: disable=g-import-not-at-top,wrong-import-position
from kernels_pallas._pallas_compat import pl, plgpu  # pylint: disable=g-import-not-at-top,wrong-import-position

SHAPES = {  # name: (M, K, N), M = 64 images x 197 tokens
    'vim_b.in_proj': (12608, 768, 3072),
    'vim_b.out_proj': (12608, 1536, 768),
    'vim_s.in_proj': (12608, 384, 1536),
    'vim_b.in_proj.b1': (197, 768, 3072),
}
TILES = ((128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (128, 128, 128, 4, 4),
         (64, 128, 256, 4, 3), (128, 64, 256, 4, 3))


def _kernel(x_ref, w_ref, sx_ref, sw_ref, y_ref, *, m, n, k, bm, bn, bk, k_major):
  col0 = pl.program_id(0) * bn
  row0 = pl.program_id(1) * bm
  rows_ok = row0 + jnp.arange(bm) < m  # M and N tails are masked, as in the mixed GEMM
  cols_ok = col0 + jnp.arange(bn) < n

  def body(kb, acc):
    x = plgpu.load(x_ref.at[pl.ds(row0, bm), pl.ds(kb * bk, bk)], mask=rows_ok[:, None],
                   other=jnp.int8(0))
    if k_major:
      w = plgpu.load(w_ref.at[pl.ds(col0, bn), pl.ds(kb * bk, bk)], mask=cols_ok[:, None],
                     other=jnp.int8(0))
      return acc + jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())),
                                       preferred_element_type=jnp.int32)
    w = plgpu.load(w_ref.at[pl.ds(kb * bk, bk), pl.ds(col0, bn)], mask=cols_ok[None, :],
                   other=jnp.int8(0))
    return acc + jnp.dot(x, w, preferred_element_type=jnp.int32)

  acc = jax.lax.fori_loop(0, k // bk, body, jnp.zeros((bm, bn), jnp.int32))
  sx = plgpu.load(sx_ref.at[pl.ds(row0, bm)], mask=rows_ok, other=0.0)
  sw = plgpu.load(sw_ref.at[pl.ds(col0, bn)], mask=cols_ok, other=0.0)
  y = acc.astype(jnp.float32) * sx[:, None] * sw[None]
  plgpu.store(y_ref.at[pl.ds(row0, bm), pl.ds(col0, bn)], y.astype(y_ref.dtype),
              mask=rows_ok[:, None] & cols_ok[None, :])


def pallas_gemm(x, w, sx, sw, *, tile, k_major):
  bm, bn, bk, warps, stages = tile
  m, k = x.shape
  n = w.shape[0] if k_major else w.shape[1]
  compat.filter_triton_deprecation()
  return pl.pallas_call(
      functools.partial(_kernel, m=m, n=n, k=k, bm=bm, bn=bn, bk=bk, k_major=k_major),
      out_shape=jax.ShapeDtypeStruct((m, n), jnp.bfloat16),
      grid=(pl.cdiv(n, bn), pl.cdiv(m, bm)), name="int8_gemm_probe",
      interpret=compat.default_interpret(),
      compiler_params=compat.triton_compiler_params(warps, stages))(x, w, sx, sw)


def xla_int8(x, w, sx, sw):
  acc = jax.lax.dot_general(x, w, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
  return (acc.astype(jnp.float32) * sx[:, None] * sw[None]).astype(jnp.bfloat16)


def xla_bf16(xb, wb):
  return jnp.dot(xb, wb, preferred_element_type=jnp.bfloat16)


def _time_ms(fn, *args):
  from triton.testing import do_bench  # pylint: disable=g-import-not-at-top
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  return do_bench(lambda: jax.block_until_ready(fn(*args)), warmup=25, rep=100,
                  return_mode='median')


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--shapes', default=','.join(SHAPES))
  p.add_argument('--out', default='')
  args = p.parse_args()
  rows = []
  for name in args.shapes.split(','):
    m, k, n = SHAPES[name]
    kx, kw, ks = jax.random.split(jax.random.key(0), 3)
    x = jax.random.randint(kx, (m, k), -8, 8, jnp.int8)
    w = jax.random.randint(kw, (k, n), -8, 8, jnp.int8)
    sx = jax.random.uniform(ks, (m,), jnp.float32, 0.5, 1.5)
    sw = jax.random.uniform(ks, (n,), jnp.float32, 0.5, 1.5)
    wt = jnp.asarray(w.T)
    ref = jax.jit(xla_int8)(x, w, sx, sw).astype(jnp.float32)
    row = {'shape': name, 'mkn': [m, k, n],
           'xla_bf16': _time_ms(xla_bf16, x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)),
           'xla_int8': _time_ms(xla_int8, x, w, sx, sw)}
    for tile in TILES:
      for k_major, weights in ((False, w), (True, wt)):
        key = f'pallas_{"kmajor" if k_major else "nmajor"}_{"x".join(map(str, tile))}'
        try:
          fn = functools.partial(pallas_gemm, tile=tile, k_major=k_major)
          out = jax.jit(fn)(x, weights, sx, sw).astype(jnp.float32)
          err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
          row[key] = _time_ms(fn, x, weights, sx, sw)
          row[key + '_relerr'] = err
        except Exception as e:  # pylint: disable=broad-except
          row[key] = f'{type(e).__name__}: {str(e)[:120]}'
    rows.append(row)
    best = min((v, kk) for kk, v in row.items() if kk.startswith('pallas') and
               not kk.endswith('relerr') and isinstance(v, float))
    print(f'{name}: bf16 {row["xla_bf16"]:.4f} ms, xla int8 {row["xla_int8"]:.4f} ms, '
          f'best pallas {best[0]:.4f} ms ({best[1]})', flush=True)
    for kk, v in row.items():
      if kk.startswith('pallas') and not kk.endswith('relerr'):
        print(f'   {kk:<40} {v if isinstance(v, str) else f"{v:.4f} ms"}')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'device': jax.devices()[0].device_kind, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
