"""OuroMamba-Gen speed: image-iterations per second and peak device memory of the jitted step.

  python bench/gen_bench.py --out=gen_bench.json               # GPU: testbed Vim-T 32x32, Vim-S 224
  python bench/gen_bench.py --smoke --out=/tmp/gen_smoke.json  # tiny model on CPU, a few seconds
  python bench/gen_bench.py --cases=vim_t_cifar10 --images_per_step=128 --nobaseline --profile=5  # + where the step time goes
  python bench/gen_bench.py --cases=vim_s_224 --dtype=bfloat16 --noremat --images_per_step=128 \
      --full_run          # 4 GPUs: also the real 128 x 1000 run (generator.generate), timed

For each case it times the full Gen step (L_C + L_O, patched states, Adam; random weights, which
is fine for speed) and, as a baseline, the L_O-only step (no state hook), and projects the time
for the paper's 128 images x 1000 iterations; `--full_run` also does that run for real (the
product's `generator.generate`: checkpoints, outputs, data-parallel over all local devices) and
reports its wall time, compilation included. Each case runs in its own subprocess so that
`peak_bytes_in_use` is that case's peak. Prints a table last; writes all numbers to --out.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = {
    # name: (registry name, model overrides)
    'vim_t_cifar10': ('vim_t_cifar10', {}),
    'vim_s_224': ('vim_s', {}),
    'tiny': ('vim_t', dict(img_size=32, patch_size=8, depth=2, d_model=32, num_classes=10)),
}
TARGET_SECONDS = {'vim_s_224': 180.0}  # 128 images x 1000 iterations

_CASES = flags.DEFINE_list('cases', ['vim_t_cifar10', 'vim_s_224'], f'cases to run: {list(CASES)}')
_CASE = flags.DEFINE_string('case', None, 'internal: run this one case in this process')
_SMOKE = flags.DEFINE_bool('smoke', False, 'tiny model, 3 timed steps, 4 images unless '
                           '--images_per_step is given (CPU check)')
_IMAGES = flags.DEFINE_integer('images_per_step', 32, 'images per step')
_STEPS = flags.DEFINE_integer('steps', 10, 'timed steps (after one compile step)')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'model compute dtype')
_REMAT = flags.DEFINE_bool('remat', True, 'rematerialise blocks in the backward pass')
_SCAN = flags.DEFINE_string('scan', '', "scan implementation ('' = platform default)")
_NEIGHBOURHOOD = flags.DEFINE_integer('neighbourhood', 5, 'p of the p x p window')
_READOUT = flags.DEFINE_string('readout', '', "patched-readout implementation ('' = the default: "
                               "triton on GPU, else xla)")
_READOUT_BY_STATE = flags.DEFINE_bool(
    'readout_by_state', False, "the readout's kernels walk N with (rows, block_d) tiles "
    '(patched_readout.config.BY_STATE)')
_BASELINE = flags.DEFINE_bool('baseline', True, 'also time the L_O-only step (no state hook)')
_OUT = flags.DEFINE_string('out', None, 'JSON file for the results')
_FULL_RUN = flags.DEFINE_bool('full_run', False, 'also run generator.generate for --full_images x '
                              '--full_iterations (images_per_step per step) and time it')
_FULL_IMAGES = flags.DEFINE_integer('full_images', 128, 'images of the --full_run')
_FULL_ITERATIONS = flags.DEFINE_integer('full_iterations', 1000, 'iterations of the --full_run')
_PROFILE = flags.DEFINE_integer('profile', 0, 'also run this many Gen steps under jax.profiler and '
                                'report the kernel families that take the most device time')
_PROFILE_TOP = 30   # kernel families kept per profile


def _full_run(model, params, spec) -> dict:
  """The real Gen run (generator.generate with the stage's store in a temporary folder),
  wall-timed end to end."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.gen import generator  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.stages import gen_store  # pylint: disable=g-import-not-at-top

  spec = dataclasses.replace(spec, num_images=_FULL_IMAGES.value,
                                       iterations=_FULL_ITERATIONS.value)
  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    result = generator.generate(model, params, spec,
                                store=gen_store.FolderGroupStore(directory, spec.keep_checkpoints))
    wall_s = time.perf_counter() - start
  if not np.isfinite(result.images).all():
    raise FloatingPointError('the full run produced non-finite images')
  return {'images': int(result.images.shape[0]), 'iterations': int(spec.iterations),
          'images_per_step': int(spec.images_per_step), 'wall_s': wall_s,
          'final_total_loss': [h['total'][-1] for h in result.history]}


def _profile(step, args, steps: int) -> list[dict]:
  """[{kernel, us_per_step, launches_per_step, share}] of the `steps` steps run under the
  profiler, most first: the step's device time by kernel family (`bench/profile_e2e.py`'s
  trace reading), so a slow Gen says which kernels pay for it. On a CPU the host threads'
  events (a check that it runs)."""
  import glob  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import profile_e2e  # pylint: disable=g-import-not-at-top

  params, state, labels, keys = args
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      for t in range(steps):
        state, metrics = step(params, state, labels, keys, t)
      jax.block_until_ready((state, metrics))
    paths = glob.glob(os.path.join(tmp, 'plugins', 'profile', '*', '*.trace.json.gz'))
    if not paths:
      raise RuntimeError(f'jax.profiler wrote no trace.json.gz under {tmp}')
    families = profile_e2e.by_family(profile_e2e.device_events(paths[0]))
  total = sum(us for us, _ in families.values())
  rows = sorted(families.items(), key=lambda kv: -kv[1][0])[:_PROFILE_TOP]
  return [{'kernel': name, 'us_per_step': us / steps, 'launches_per_step': n / steps,
           'share': us / total if total else 0.0} for name, (us, n) in rows]


def _time_step(model, params, spec, images_per_step: int, steps: int,
               profile_steps: int = 0) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.gen import objective, optimize  # pylint: disable=g-import-not-at-top

  objective.check_objective(spec, model)
  mesh = optimize.data_mesh(0)
  optimizer = optimize.build_optimizer(spec)
  gen_model = objective.generation_model(model, spec)
  step = optimize.make_step(gen_model, spec, optimizer, mesh)
  keys = jax.device_put(optimize.image_keys(0, np.arange(images_per_step)),
                        optimize.batch_sharding(mesh))
  labels = jax.device_put(jnp.arange(images_per_step) % model.num_classes,
                          optimize.batch_sharding(mesh))
  images = optimize.initial_images(keys, (model.img_size, model.img_size, model.in_chans), 1.0)
  state = optimize.shard_batch_tree(optimize.GroupState(images, optimizer.init(images)), mesh,
                                    images_per_step)
  params = jax.device_put(params, optimize.replicated(mesh))
  start = time.perf_counter()
  state, metrics = step(params, state, labels, keys, 0)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for t in range(steps):
    state, metrics = step(params, state, labels, keys, t + 1)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - start) / steps
  if not bool(metrics['loss_finite']):
    raise FloatingPointError('the benchmark step produced a non-finite loss')
  rate = images_per_step / step_s
  out = {'compile_s': compile_s, 'step_ms': 1e3 * step_s, 'img_it_per_s': rate,
         'projected_128x1000_s': 128 * 1000 / rate}
  if profile_steps:
    out['profile'] = _profile(step, (params, state, labels, keys), profile_steps)
  return out


def run_case(name: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import dataclasses  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.data import imagenet  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.gen.spec import GenSpec  # pylint: disable=g-import-not-at-top
  from kernels_pallas.patched_readout import config as rcfg  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.stages import sections  # pylint: disable=g-import-not-at-top

  rcfg.BY_STATE = _READOUT_BY_STATE.value   # an A/B in separate processes
  variant, overrides = CASES[name]
  model_cfg = common.model_config(variant, **overrides)
  model_cfg.dtype = _DTYPE.value
  model_cfg.scan_implementation = _SCAN.value
  model, params = sections.load_model(model_cfg)
  images_per_step, steps = _IMAGES.value, _STEPS.value
  if _SMOKE.value:  # 4 images unless asked for (a CPU check of a device split)
    images_per_step = _IMAGES.value if flags.FLAGS['images_per_step'].present else 4
    steps = 3
  gen_spec = GenSpec(remat=_REMAT.value, neighbourhood=_NEIGHBOURHOOD.value,
                    readout_implementation=_READOUT.value, mean=imagenet.MEAN, std=imagenet.STD,
                    num_positives=min(GenSpec.num_positives, model.num_patches - 2))
  result = {'case': name, 'device': str(jax.devices()[0].device_kind),
            'num_devices': jax.device_count(), 'images_per_step': images_per_step,
            'dtype': _DTYPE.value, 'remat': _REMAT.value, 'scan': _SCAN.value or 'default',
            'neighbourhood': _NEIGHBOURHOOD.value, 'readout': _READOUT.value or 'default',
            'readout_by_state': _READOUT_BY_STATE.value}
  result['gen'] = _time_step(model, params, gen_spec, images_per_step, steps,
                             profile_steps=_PROFILE.value)
  stats = jax.local_devices()[0].memory_stats() or {}
  result['peak_gib'] = stats['peak_bytes_in_use'] / 2**30 if 'peak_bytes_in_use' in stats else None
  if _BASELINE.value:  # both state-hooked losses off: the model's own forward + backward
    baseline_spec = dataclasses.replace(gen_spec, contrastive_weight=0.0, pse_weight=0.0)
    result['output_loss_only'] = _time_step(model, params, baseline_spec, images_per_step, steps)
  if _FULL_RUN.value:
    result['full_run'] = _full_run(
        model, params, dataclasses.replace(gen_spec, images_per_step=images_per_step, log_every=100))
  if name in TARGET_SECONDS:
    result['target_s'] = TARGET_SECONDS[name]
    result['meets_target'] = result['gen']['projected_128x1000_s'] <= TARGET_SECONDS[name]
    if 'full_run' in result:
      result['full_run_meets_target'] = result['full_run']['wall_s'] <= TARGET_SECONDS[name]
  return result


def _table(results: list[dict]) -> str:
  head = (f'{"case":<14}{"imgs/step":>10}{"step ms":>10}{"img-it/s":>10}{"128x1000 s":>12}'
          f'{"peak GiB":>10}{"compile s":>11}{"L_O-only img-it/s":>19}')
  rows = [head, '-' * len(head)]
  for r in results:
    if 'error' in r:
      rows.append(f'{r["case"]:<14}  FAILED: {r["error"][-200:]}')
      continue
    g = r['gen']
    peak = f'{r["peak_gib"]:.2f}' if r['peak_gib'] is not None else 'n/a'
    base = f'{r["output_loss_only"]["img_it_per_s"]:.1f}' if 'output_loss_only' in r else '-'
    rows.append(f'{r["case"]:<14}{r["images_per_step"]:>10}{g["step_ms"]:>10.1f}'
                f'{g["img_it_per_s"]:>10.1f}{g["projected_128x1000_s"]:>12.1f}{peak:>10}'
                f'{g["compile_s"]:>11.1f}{base:>19}')
  return '\n'.join(rows)


def main(argv):
  del argv
  if _CASE.value:
    print('RESULT ' + json.dumps(run_case(_CASE.value)), flush=True)
    return
  cases = ['tiny'] if _SMOKE.value else _CASES.value
  unknown = [c for c in cases if c not in CASES]
  if unknown:
    raise app.UsageError(f'unknown cases {unknown}; choose from {list(CASES)}')
  passthrough = [a for a in sys.argv[1:] if not a.startswith(('--cases', '--out'))]
  results = []
  for name in cases:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), f'--case={name}'] +
                          passthrough, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
    if proc.returncode or not lines:
      results.append({'case': name, 'error': proc.stderr[-2000:]})
      print(proc.stderr[-4000:], file=sys.stderr)
    else:
      results.append(json.loads(lines[-1][len('RESULT '):]))
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, 'w') as f:
      json.dump({'results': results}, f, indent=1)
  for r in results:
    for row in r.get('gen', {}).get('profile', [])[:15]:
      print(f'{r["case"]:<14}{row["us_per_step"] / 1e3:>9.2f} ms {100 * row["share"]:>5.1f} %  '
            f'{row["kernel"][:90]}')
  print(_table(results))
  if any('error' in r for r in results):
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
