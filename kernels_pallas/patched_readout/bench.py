"""Benchmark of the patched readout: Pallas kernels vs the XLA reference, forward and
forward + backward (what the Gen step runs per block and scan direction).

  python -m kernels_pallas.patched_readout.bench --out patched_readout.json   # GPU (H100)
  python -m kernels_pallas.patched_readout.bench --smoke                      # CPU interpret run

Inputs as the Gen step passes them per block and scan direction: fp32 states in the scan
kernel's (B, L, 16, D) layout (states_layout='blnd') and the 5x5 window: the CIFAR testbed (8x8
grid, D = 384) at 128 images, Vim-T/S (14x14 grid, D = 384 / 768) at 32 images; the
`_reversed` row has the states in the backward scan's order (reversed_tokens=True). The
roofline floor is the compulsory HBM traffic / 3.0 TB/s:
forward reads the states, w and C once and writes f; the backward reads them again with the
cotangent of f and writes their three gradients. Before timing, outputs and gradients are
compared with the reference (`rel_err`, ‖out − ref‖ / ‖ref‖, worst of all).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas import _bench
from kernels_pallas.patched_readout import api
from kernels_pallas.patched_readout.config import PatchedReadoutBlockConfig

STATES_LAYOUT = 'blnd'  # the layout the Gen step feeds (its objective's STATES_LAYOUT)
# name: (batch, grid, channels, N, reversed_tokens)
SIZES = {'testbed_gen128': (128, (8, 8), 384, 16, False),   # the CIFAR testbed's Gen step
         'vim_t_gen32': (32, (14, 14), 384, 16, False),
         'vim_s_gen32': (32, (14, 14), 768, 16, False),
         'vim_s_gen32_reversed': (32, (14, 14), 768, 16, True)}
SMOKE = {'smoke': (2, (3, 4), 20, 16, False), 'smoke_reversed': (2, (3, 4), 20, 16, True)}


def make_inputs(key, batch, grid, channels, n_state):
  """states (B, L, N, D), weights (B, P), c_patches (B, P, N), cotangent of f (B, P, D)."""
  length = grid[0] * grid[1] + 1
  k = jax.random.split(key, 4)
  return (jax.random.normal(k[0], (batch, length, n_state, channels)),
          jax.random.uniform(k[1], (batch, length - 1)),
          jax.random.normal(k[2], (batch, length - 1, n_state)),
          jax.random.normal(k[3], (batch, length - 1, channels)))


def functions(impl, grid, reversed_tokens, smoke, block_config):
  """(forward, forward + backward) jitted for one implementation."""
  kw = dict(cls_index=grid[0] * grid[1] // 2, grid_size=grid, neighbourhood=5,
            states_layout=STATES_LAYOUT, reversed_tokens=reversed_tokens, implementation=impl,
            interpret=smoke, block_config=block_config)
  fwd = _bench.jit(lambda h, w, c, g: api.patched_readout(h, w, c, **kw), smoke)

  def fwd_bwd(h, w, c, g):
    out, vjp = jax.vjp(lambda *a: api.patched_readout(*a, **kw), h, w, c)
    return (out,) + vjp(g)

  return fwd, _bench.jit(fwd_bwd, smoke)


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))


def run(args):
  sizes = SMOKE if args.smoke else SIZES
  timing = dict(warmup=1, trials=2, inner=1, smoke=True) if args.smoke else dict(
      warmup=3, trials=args.trials, inner=args.inner)
  block_config = PatchedReadoutBlockConfig(args.block_d, args.num_warps, by_state=args.by_state)
  results = []
  for name, (batch, grid, channels, n_state, reversed_tokens) in sizes.items():
    args_set = make_inputs(jax.random.key(0), batch, grid, channels, n_state)
    copies = [args_set] + [make_inputs(jax.random.key(i), batch, grid, channels, n_state)
                           for i in range(1, _bench.n_copies(args_set[0].nbytes, args.smoke))]
    table = {impl: functions(impl, grid, reversed_tokens, args.smoke, block_config)
             for impl in ('xla', 'triton')}
    ref = table['xla'][1](*args_set)
    got = table['triton'][1](*args_set)
    entry = dict(size=name, B=batch, grid=list(grid), D=channels, N=n_state,
                 states_layout=STATES_LAYOUT, reversed_tokens=reversed_tokens,
                 block_d=args.block_d, num_warps=args.num_warps, by_state=args.by_state,
                 rel_err=max(_rel(a, b) for a, b in zip(got, ref)), variants={})
    states, weights, c_patches, cotangent = (a.nbytes for a in args_set)
    inputs = states + weights + c_patches
    forward = inputs + cotangent  # f has the cotangent's size
    floors = {'forward': forward, 'forward_backward': forward + 2 * inputs + cotangent}
    for impl, fns in table.items():
      for what, fn in zip(('forward', 'forward_backward'), fns):
        ms = 1e3 * _bench.time_fn(fn, copies, **timing)
        floor_ms = 1e3 * floors[what] / _bench.HBM_BYTES_PER_S
        entry['variants'][f'{impl}_{what}'] = dict(ms=ms, floor_ms=floor_ms,
                                                   gb_per_s=floors[what] / ms / 1e6)
        print(f'  {name:20s} {impl:6s} {what:17s} {ms:9.4f} ms  (floor {floor_ms:.4f} ms)',
              flush=True)
    results.append(entry)
  return dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
              smoke=args.smoke, hbm_bw=_bench.HBM_BYTES_PER_S, results=results)


def print_table(report):
  print(f'\npatched_readout on {report["device"]} ({report["backend"]})'
        f'{" SMOKE (interpret, timings meaningless)" if report["smoke"] else ""}')
  for e in report['results']:
    v = e['variants']
    for what in ('forward', 'forward_backward'):
      x, t = v[f'xla_{what}']['ms'], v[f'triton_{what}']['ms']
      print(f'{e["size"]:20s} {what:17s} xla {x:9.4f} ms  triton {t:9.4f} ms  ({x / t:5.2f}x)  '
            f'floor {v[f"triton_{what}"]["floor_ms"]:.4f} ms  rel err {e["rel_err"]:.1e}')


def main(argv=None):
  def options(parser):
    parser.add_argument('--block_d', type=int, default=PatchedReadoutBlockConfig.block_d)
    parser.add_argument('--num_warps', type=int, default=PatchedReadoutBlockConfig.num_warps)
    parser.add_argument('--by_state', action='store_true',
                        help='the kernels that walk N with (rows, block_d) tiles')
  return _bench.main(__doc__, run, print_table, argv, inner=5, add_options=options)


if __name__ == '__main__':
  main()
