"""Benchmark of the fused Pallas Triton selective scan against the XLA associative scan.

  python -m kernels_pallas.selective_scan.bench --out selective_scan.json   # GPU (H100)
  python -m kernels_pallas.selective_scan.bench --reverse --out rev.json    # backward direction
  python -m kernels_pallas.selective_scan.bench --configs 32:4:1:1,64:2:1:2 # own sweep
  python -m kernels_pallas.selective_scan.bench --grad --out grad.json      # forward + backward
  python -m kernels_pallas.selective_scan.bench --grad --states --reverse   # ... as Gen uses it
  python -m kernels_pallas.selective_scan.bench --smoke                     # tiny CPU interpret run

Problem: one Vim direction at batch 64 (`--batch`), L = 197 tokens, N = 16 states, bf16 inputs, with
softplus(delta + bias), the D skip and the SiLU(z) gate fused; D = 384 / 768 / 1536 are the
inner widths of Vim-T / S / B. Timing: warm-up, then `trials` rounds of `inner` back-to-back
calls (async dispatch keeps the GPU busy) over input copies rotated to spill the 50 MB L2, each
round blocked on its last result; the median per-call time is reported.

--grad times jax.grad of 0.5 |y|^2 (+ 0.5 |states|^2 with --states) w.r.t. all inputs for the
sequential reference (lax.scan and its VJP), the Pallas forward with the reference VJP and
with the Pallas backward kernel (vjp='kernel', the default), and the XLA associative scan; the
config sweep is then of the kernel VJP, and errors are the worst ||grad - ref|| / ||ref|| over
the inputs against the sequential reference. --smoke runs both the forward and the --grad pass.

Roofline floors (H100 SXM): memory = bytes / 3.0 TB/s, bytes = read u, delta, z (B, L, D) +
B, C (B, L, N) + A, D, delta_bias, write y (B, L, D); exp = B * L * D * N exps at the MUFU rate
132 SMs * 16 ops/clk * 1.755 GHz ~ 3.7e12/s. Errors: ||y - ref|| / ||ref|| against the
sequential (lax.scan) reference, both from the same bf16 inputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas import _bench
from kernels_pallas.selective_scan import pallas_triton, reference
from kernels_pallas.selective_scan.config import SelectiveScanBlockConfig, default_block_config

HBM_BYTES_PER_S = _bench.HBM_BYTES_PER_S
EXP_PER_S = 132 * 16 * 1.755e9

# (name, batch, length, channels, n_state); targets and the untuned design's times in ms.
VIM_SIZES = (('vim_t', 64, 197, 384, 16), ('vim_s', 64, 197, 768, 16),
             ('vim_b', 64, 197, 1536, 16))
SMOKE_SIZES = (('smoke_a', 2, 13, 64, 16), ('smoke_b', 1, 9, 96, 16))
TARGET_MS = {'vim_s': 0.21, 'vim_b': 0.27}
UNTUNED_MS = {'vim_s': 0.40, 'vim_b': 0.46}

SWEEP_CONFIGS = tuple(SelectiveScanBlockConfig(*c) for c in (
    (32, 1, 1, 1), (32, 2, 1, 1), (32, 4, 1, 1), (32, 8, 1, 1), (32, 1, 1, 2), (32, 2, 1, 2),
    (32, 4, 1, 2), (64, 2, 1, 1), (64, 2, 1, 2), (64, 4, 2, 1), (64, 4, 2, 2), (128, 4, 4, 2)))
SMOKE_CONFIGS = (SelectiveScanBlockConfig(32, 4, 1, 1), SelectiveScanBlockConfig(64, 2, 1, 2))


def make_inputs(key, batch, length, channels, n_state, dtype):
  """Vim-like inputs: S4D-real A, dt biases with softplus(bias) in [1e-3, 1e-1]."""
  keys = jax.random.split(key, 8)
  act = lambda k, *s: jax.random.normal(k, s, jnp.float32).astype(dtype)
  a_log = jnp.log(jnp.arange(1, n_state + 1, dtype=jnp.float32))
  A = -jnp.exp(jnp.broadcast_to(a_log, (channels, n_state)))
  dt = jnp.exp(jax.random.uniform(keys[7], (channels,), minval=np.log(1e-3), maxval=np.log(1e-1)))
  delta_bias = dt + jnp.log(-jnp.expm1(-dt))
  return (act(keys[0], batch, length, channels), act(keys[1], batch, length, channels), A,
          act(keys[2], batch, length, n_state), act(keys[3], batch, length, n_state),
          jax.random.normal(keys[4], (channels,), jnp.float32),
          act(keys[5], batch, length, channels), delta_bias)


def problem_bytes(batch, length, channels, n_state, itemsize):
  activations = 4 * batch * length * channels * itemsize    # u, delta, z read; y written
  states = 2 * batch * length * n_state * itemsize          # B, C
  params = channels * n_state * 4 + 2 * channels * 4        # A, D, delta_bias (fp32)
  return activations + states + params


def rel_err(out, ref):
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def parse_configs(text):
  """'bd:ct:nw:ns[:segments],...' -> configs (validated by SelectiveScanBlockConfig)."""
  configs = []
  for item in text.split(','):
    fields = item.strip().split(':')
    if len(fields) not in (4, 5):
      raise argparse.ArgumentTypeError(
          f'--configs item {item!r}: write block_d:chunk_t:num_warps:num_stages[:time_segments]'
          ', e.g. 32:4:1:1 or 64:2:1:2:8')
    configs.append(SelectiveScanBlockConfig(*map(int, fields)))
  return tuple(configs)


@dataclasses.dataclass
class Row:
  size: str
  impl: str
  config: str
  ms: float
  gb_per_s: float
  rel_err: float | None
  vs_floor: float


# The timed variants per mode ('sequential' is the ground truth errors are taken against; in
# --grad mode it is timed too) and the one the block-config sweep runs.
FORWARD_VARIANTS = ('pallas', 'xla_associative')
GRAD_VARIANTS = ('sequential', 'pallas_vjp_reference', 'pallas_vjp_kernel', 'xla_associative')
SWEPT = {'forward': 'pallas', 'grad': 'pallas_vjp_kernel'}


def variant_scan(variant, *, reverse, states, interpret, block_config=None):
  """The scan of one variant: the XLA reference (sequential or associative) or the Pallas
  kernel (differentiated through the reference VJP for 'pallas_vjp_reference')."""
  def scan(*a):
    if variant in ('sequential', 'xla_associative'):
      return reference.selective_scan_xla(*a, delta_softplus=True, reverse=reverse,
                                          return_states=states,
                                          sequential=(variant == 'sequential'))
    return pallas_triton.selective_scan(
        *a, delta_softplus=True, reverse=reverse, return_states=states,
        vjp='reference' if variant == 'pallas_vjp_reference' else 'kernel',
        interpret=interpret, block_config=block_config)
  return scan


def forward_fn(variant, *, reverse, interpret, block_config=None):
  """jit of the variant's forward (y only); unoptimised when interpreted (--smoke)."""
  return _bench.jit(variant_scan(variant, reverse=reverse, states=False, interpret=interpret,
                                 block_config=block_config), interpret)


def grad_fn(variant, *, reverse, states, interpret, block_config=None):
  """jit(grad) w.r.t. all 8 inputs of 0.5 |y|^2 (+ 0.5 |states|^2 with `states`, as Gen uses
  them): a non-trivial output cotangent, as in training."""
  scan = variant_scan(variant, reverse=reverse, states=states, interpret=interpret,
                      block_config=block_config)

  def loss(*a):
    leaves = jax.tree.leaves(scan(*a))
    return sum(0.5 * jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)

  return _bench.jit(jax.grad(loss, argnums=tuple(range(8))), interpret)


def grad_bytes(batch, length, channels, n_state, itemsize, states):
  """HBM bytes of an ideal fused forward + backward: the forward's, then read u, delta, z, dy,
  B, C and write du, ddelta, dz, dB, dC (+ write the fp32 states and read their cotangent)."""
  backward = (7 * batch * length * channels + 4 * batch * length * n_state) * itemsize
  state_bytes = 2 * 4 * batch * length * channels * n_state if states else 0
  return problem_bytes(batch, length, channels, n_state, itemsize) + backward + state_bytes


def max_rel_err(outs, refs):
  return max(rel_err(o, r) for o, r in zip(jax.tree.leaves(outs), jax.tree.leaves(refs)))


def _bench_mode(mode, args, report, main_rows, sweep_rows):
  """One pass over the sizes: mode 'forward' times y, mode 'grad' times jax.grad of a loss."""
  smoke = args.smoke
  interpret = smoke   # run() refuses anything else off a GPU
  dtype = jnp.dtype(args.dtype)
  # --smoke runs one size and sweeps one config per mode (each compiles the interpreted
  # kernel again)
  if mode == 'grad':
    sizes = SMOKE_SIZES[1:] if smoke else VIM_SIZES
    sweep = args.configs or (SMOKE_CONFIGS[:1] if smoke else SWEEP_CONFIGS)
  else:
    sizes = SMOKE_SIZES[:1] if smoke else VIM_SIZES
    sweep = args.configs or (SMOKE_CONFIGS[1:] if smoke else SWEEP_CONFIGS)
  timing = dict(warmup=1, trials=2, inner=1, smoke=True) if smoke else dict(trials=args.trials,
                                                                inner=args.inner)
  if mode == 'grad':
    variants = GRAD_VARIANTS
    make = functools.partial(grad_fn, reverse=args.reverse, states=args.states,
                             interpret=interpret)
  else:
    variants = FORWARD_VARIANTS
    make = functools.partial(forward_fn, reverse=args.reverse, interpret=interpret)
  swept_impl = SWEPT[mode]

  for name, batch, length, channels, n_state in sizes:
    batch = args.batch or batch
    if mode == 'grad':
      nbytes = grad_bytes(batch, length, channels, n_state, dtype.itemsize, args.states)
    else:
      nbytes = problem_bytes(batch, length, channels, n_state, dtype.itemsize)
    copies = _bench.n_copies(nbytes, smoke, most=8)
    arg_sets = [make_inputs(jax.random.key(i), batch, length, channels, n_state, dtype)
                for i in range(copies)]
    ref = make('sequential')(*arg_sets[0])
    passes = 2 if mode == 'grad' else 1  # the backward recomputes the forward's exps
    memory_floor = nbytes / HBM_BYTES_PER_S
    exp_floor = passes * batch * length * channels * n_state / EXP_PER_S
    floor = max(memory_floor, exp_floor)

    def measure(impl, fn, config, size=name, floor=floor, nbytes=nbytes, ref=ref,
                arg_sets=arg_sets):
      err = max_rel_err(fn(*arg_sets[0]), ref)
      seconds = _bench.time_fn(fn, arg_sets, **timing)
      return Row(size, impl, config, seconds * 1e3, nbytes / seconds / 1e9, err, seconds / floor)

    default_cfg = default_block_config(channels, dtype, batch=batch, length=length)
    rows = [measure(v, make(v, block_config=default_cfg),
                    _config_str(default_cfg) if v.startswith('pallas') else '-')
            for v in variants]
    main_rows += rows
    entry = dict(mode=mode, name=name, batch=batch, length=length, channels=channels,
                 n_state=n_state, bytes=nbytes, memory_floor_ms=memory_floor * 1e3,
                 exp_floor_ms=exp_floor * 1e3,
                 target_ms=TARGET_MS.get(name) if mode == 'forward' else None,
                 untuned_ms=UNTUNED_MS.get(name) if mode == 'forward' else None,
                 results=[dataclasses.asdict(r) for r in rows])
    report['sizes'].append(entry)

    for cfg in sweep:
      try:
        row = measure(swept_impl, make(swept_impl, block_config=cfg), _config_str(cfg))
      except Exception as e:  # pylint: disable=broad-except
        report['sweep'].append(dict(mode=mode, size=name, config=_config_str(cfg),
                                    error=repr(e)[:300]))
        print(f'{mode} {name} {_config_str(cfg)}: failed: {e!r:.200}')
        continue
      sweep_rows.append(row)
      report['sweep'].append(dict(dataclasses.asdict(row), mode=mode))

    what = 'forward + backward' if mode == 'grad' else 'forward'
    print(f'\n{name} ({what}): B={batch} L={length} D={channels} N={n_state} {dtype.name}, '
          f'{nbytes / 1e6:.1f} MB, floors: memory {memory_floor * 1e3:.4f} ms, '
          f'exp {exp_floor * 1e3:.4f} ms')
    for r in rows:
      print(f'  {r.impl:20s} {r.ms:8.4f} ms  {r.gb_per_s:7.1f} GB/s  x{r.vs_floor:5.1f} floor  '
            f'err {r.rel_err:.1e}  [{r.config}]')
    best = min((r for r in sweep_rows if r.size == name), key=lambda r: r.ms, default=None)
    if best is not None:
      entry['best'] = dataclasses.asdict(best)
    if mode == 'forward' and name in TARGET_MS and best is not None:
      verdict = 'meets' if best.ms <= TARGET_MS[name] else 'misses'
      print(f'  best {best.ms:.4f} ms [{best.config}] {verdict} the {TARGET_MS[name]} ms target '
            f'(untuned design: {UNTUNED_MS[name]} ms)')

  print(f'\n{mode} sweep of {swept_impl} (block_d:chunk_t:num_warps:num_stages), ms; '
        '* = best per size')
  names = [s[0] for s in sizes]
  configs = list(dict.fromkeys(r.config for r in sweep_rows))
  table = {(r.size, r.config): r for r in sweep_rows}
  print(f'{"config":>12s} ' + ' '.join(f'{n:>12s}' for n in names))
  best = {n: min((r.ms for r in sweep_rows if r.size == n), default=None) for n in names}
  for c in configs:
    cells = []
    for n in names:
      r = table.get((n, c))
      cells.append(f'{"-":>12s}' if r is None else
                   f'{r.ms:10.4f}{"*" if r.ms == best[n] else " "} ')
    print(f'{c:>12s} ' + ' '.join(cells))


def run(args):
  smoke = args.smoke
  if not smoke and jax.default_backend() != 'gpu':
    raise SystemExit('bench: no GPU here; use --smoke for the CPU interpret run.')
  dtype = jnp.dtype(args.dtype)
  # --smoke covers both modes, so the CPU test keeps the --grad path from rotting.
  modes = ('forward', 'grad') if smoke else (('grad',) if args.grad else ('forward',))
  report = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
                jax=jax.__version__, dtype=str(dtype), reverse=args.reverse, smoke=smoke,
                modes=list(modes), states=args.states, sizes=[], sweep=[])
  main_rows, sweep_rows = [], []
  for mode in modes:
    mode_rows, mode_sweep = [], []
    _bench_mode(mode, args, report, mode_rows, mode_sweep)
    main_rows += mode_rows
    sweep_rows += mode_sweep

  worst_err = max(r.rel_err for r in main_rows + sweep_rows)
  report['max_rel_err'] = worst_err
  if args.out:
    _bench.write_report(report, args.out)
    print(f'\nwrote {args.out}')
  tol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
  if worst_err > tol:
    raise SystemExit(f'bench: max rel. error {worst_err:.2e} exceeds {tol:.0e}')
  return report


def _config_str(cfg: SelectiveScanBlockConfig) -> str:
  segments = f':{cfg.time_segments}' if cfg.time_segments > 1 else ''
  return f'{cfg.block_d}:{cfg.chunk_t}:{cfg.num_warps}:{cfg.num_stages}{segments}'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=None, help='write the JSON report here')
  parser.add_argument('--smoke', action='store_true', help='tiny sizes, interpreted (CPU)')
  parser.add_argument('--reverse', action='store_true', help='time the backward direction')
  parser.add_argument('--grad', action='store_true',
                      help='time jax.grad (forward + backward) of the sequential reference '
                           'VJP, the Pallas forward with the reference or the kernel VJP, and '
                           'the XLA associative scan; the sweep is of the kernel VJP')
  parser.add_argument('--states', action='store_true',
                      help='with --grad: the loss also uses the fp32 states (as Gen does)')
  parser.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'))
  parser.add_argument('--configs', type=parse_configs, default=None,
                      help='sweep these instead: block_d:chunk_t:num_warps:num_stages'
                           '[:time_segments],...')
  parser.add_argument('--batch', type=int, default=0,
                      help='batch of every size (0: 64); batch 1-2 is where time_segments '
                           'pays')
  parser.add_argument('--trials', type=int, default=30)
  parser.add_argument('--inner', type=int, default=10)
  return run(parser.parse_args(argv))


if __name__ == '__main__':
  main()
