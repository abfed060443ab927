"""Public entry point of the selective scan: one function, several implementations.

implementation (`kernels_pallas._dispatch`):
  None          -> 'triton' on GPU (below SMALL_BATCH samples 'associative', off by default:
                   see below),
                   'sequential' on CPU, 'associative' on TPU. Measured: on
                   CPU the fused sequential form runs the testbed Vim-T forward 3.7x faster
                   than the associative one (8.5 s vs 31.7 s, batch 64, 2 cores); on an H100
                   it trains 2x faster (BENCHMARKS.md). TPUs pay per loop step, so they keep
                   the log-depth associative form.
  'xla'         -> alias of 'associative'
  'associative' -> `lax.associative_scan` (parallel over time; default on CPU/TPU)
  'sequential'  -> `lax.scan` over time (the ground truth)
  'triton'      -> Pallas Triton kernel (GPU; `interpret=True` runs it on CPU for tests)
"""
from __future__ import annotations

import jax.numpy as jnp

from kernels_pallas import _dispatch
from kernels_pallas.act_quant import producers
from kernels_pallas.selective_scan import pallas_triton
from kernels_pallas.selective_scan import reference

# Below SMALL_BATCH samples the default is XLA's associative scan instead of the kernel (0: the
# kernel at every batch). The unsplit kernel runs one program per (sample, block of channels)
# along the whole sequence, so at batch 1-2 it filled a fraction of the GPU (Vim-B bf16,
# 4 blocks, H200, 2026-12-02: associative vs kernel 0.90 vs 1.70 ms at batch 1) and this was 4.
# Since the kernel splits a small batch's sequence into segments walked in parallel
# (`config.time_segments_for`), it is the faster one at batch 1 too: Vim-B end to end, one
# H100, one process (BENCHMARKS.md "Session 32"): 3.59 ms against 4.83 ms for the associative
# scan, and 4.02 against 5.10 with 8 segments instead of 11 in a second process. Kept as a
# switch for benchmarks' A/B.
SMALL_BATCH = 0


def _triton_not_default(batch=None):
  if batch is not None and batch < SMALL_BATCH:
    return (f'batch {batch} < SMALL_BATCH={SMALL_BATCH} (a benchmark switch, 0 by default): '
            'the associative scan is asked for below it')
  return None


DISPATCH = _dispatch.Dispatch(
    op='selective_scan',
    implementations=(_dispatch.Implementation('associative'),
                     _dispatch.Implementation('sequential'),
                     _dispatch.Implementation('triton', not_default_reason=_triton_not_default)),
    preference={'gpu': ('triton', 'associative'), 'cpu': ('sequential',),
                'default': ('associative',)},
    aliases={'xla': 'associative'})
IMPLEMENTATIONS = DISPATCH.names


def default_implementation(batch: int | None = None) -> str:
  """What `implementation=None` runs on this platform for `batch` samples (None: any batch)."""
  return DISPATCH.choose(None, batch)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *,
                   delta_softplus=True, reverse=False, return_states=False,
                   implementation=None, interpret=None, block_config=None,
                   vjp='kernel', states_layout='bldn',
                   mean_with=None):
  """Mamba selective scan. u, delta, z: (B, L, D); B, C: (B, L, N); A: (D, N); D, delta_bias: (D,).

  Returns y (B, L, D) in u.dtype, and with `return_states` also the fp32 states (B, L, D, N),
  or (B, L, N, D) with states_layout='blnd' (the Triton kernel's own layout: no transpose).
  `reverse=True` scans from the last time step to the first (the Vim backward direction,
  without a flipped copy). The state is always fp32. For 'triton': `interpret=None` runs the
  kernel in the Pallas interpreter off-GPU; `block_config` is a `SelectiveScanBlockConfig`
  (None: the default for D and dtype).

  How 'triton' is differentiated (NOTES.md): vjp='kernel' (default) through the Pallas backward
  kernel (on an H100 the Vim-T forward + backward takes 0.72 ms against 7.80 ms), 'reference'
  through the sequential XLA reference's VJP (kept as the ground truth). Its `return_states`
  are written by the forward kernel (differentiable with either `vjp`).

  `mean_with` (the other scan direction's output, (B, L, D) in token order; not with
  `return_states`): returns `act_quant.producers.DirectionMean(mean_with, y, u.dtype)`
  materialized instead of y, i.e. Vim's v2 mixer output. 'triton' forms it in the kernel's
  epilogue (no separate flip + add + cast pass), the others after the scan. Same values.
  """
  impl = DISPATCH.choose(implementation, u.shape[0])
  if impl == 'triton':
    return pallas_triton.selective_scan(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus=delta_softplus, reverse=reverse,
        return_states=return_states, vjp=vjp, interpret=interpret, block_config=block_config,
        states_layout=states_layout, mean_with=mean_with)
  pallas_triton.check_options(u, vjp=vjp, states_layout=states_layout, mean_with=mean_with,
                              return_states=return_states)
  out = reference.selective_scan_xla(
      u, delta, A, B, C, D, z, delta_bias, delta_softplus=delta_softplus, reverse=reverse,
      return_states=return_states, sequential=(impl == 'sequential'))
  if mean_with is not None:
    return producers.DirectionMean(mean_with, out, out.dtype).materialize()
  if return_states and states_layout == 'blnd':
    return out[0], jnp.swapaxes(out[1], 2, 3)
  return out
