"""The pipeline's quantization runs spread over worker processes, one device group each.

Why processes: a run (calibrate, report, evaluate) is one device's worth of work, so on a host
with several GPUs the table's runs finish sooner side by side than one after another on all
devices, and a process per device group keeps XLA's memory and compilation per group. This is
what RESULTS.md's commands did by hand with CUDA_VISIBLE_DEVICES.

How: the parent (the `main.py` process) makes what every run shares first (FP evaluation,
Gen), then starts `workers` copies of its own command line with `--config.pipeline.worker=I`,
each seeing only its GPUs (CUDA_VISIBLE_DEVICES). Every worker walks the whole run list and
takes a run by creating its claim file first (O_EXCL: exactly one worker wins), so faster
workers take more runs. The parent waits, then walks the list itself: every finished run is
skipped (its outputs exist), an unfinished one (a worker died) is done there, and it writes
the one report. Worker logs: WORKDIR/workers/worker<I>.log.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Mapping, Optional, Sequence

from ouromamba_jax import progress

CLAIMS_SUBDIR = 'claims'
LOGS_SUBDIR = 'workers'
# The parent only evaluates FP and runs Gen before its workers start; it keeps this fraction of
# each GPU's memory so the workers' XLA allocators get the rest.
PARENT_MEMORY_FRACTION = '0.2'


def visible_gpus(environ: Mapping[str, str] = os.environ) -> list[str]:
  """The ids of the GPUs this process may use (a worker's CUDA_VISIBLE_DEVICES names some of
  them), found without starting JAX (whose allocator would take their memory first):
  CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`'s count, else none."""
  visible = environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return [d.strip() for d in visible.split(',') if d.strip() and d.strip() != '-1']
  try:
    out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return []
  count = sum(line.startswith('GPU ') for line in out.stdout.splitlines()) \
      if out.returncode == 0 else 0
  return [str(i) for i in range(count)]


def local_gpu_count(environ: Mapping[str, str] = os.environ) -> int:
  """How many GPUs this process may use (`visible_gpus`)."""
  return len(visible_gpus(environ))


def resolve_workers(requested: int, gpus: int) -> int:
  """How many worker processes: `requested`, or for 0 (auto) one per GPU when there are two or
  more, else none (1 = the runs go in this process)."""
  if requested < 0:
    raise ValueError(f'pipeline.workers must be >= 0 (0 = one per local GPU), got {requested}')
  if requested == 0:
    return gpus if gpus >= 2 else 1
  return requested


def planned_workers(mode: str, requested: int, worker: int, argv: Optional[Sequence[str]],
                    gpus: int, processes: int = 1) -> int:
  """Worker processes this pipeline starts: none inside a worker, in another mode (a study's
  cells) or without `main.py`'s command line to copy (auto then means this process)."""
  if mode != 'pipeline' or worker >= 0:
    return 1
  if processes > 1:   # several processes (hosts): each process is a worker of its own
    return 1
  workers = resolve_workers(requested, gpus)
  if workers > 1 and argv is None:
    if requested == 0:
      return 1
    raise ValueError(f'pipeline.workers={requested} starts copies of main.py\'s command line, '
                     'and this pipeline was not started by main.py: set pipeline.workers=1 '
                     '(every run in this process) or run main.py.')
  return workers


def workers_here(mode: str, requested: int, worker: int, processes: int = 1) -> int:
  """`planned_workers` for this process: its own command line, its GPUs counted only when
  `requested` is auto (0). One rule for main.py (memory share) and the pipeline (the spread)."""
  gpus = local_gpu_count() if requested == 0 else 0
  return planned_workers(mode, requested, worker, main_argv(), gpus, processes)


def main_argv(argv: Sequence[str] = sys.argv) -> Optional[list[str]]:
  """This process's command line when it is `main.py`'s (the one a worker copies), else None."""
  return list(argv) if argv and os.path.basename(argv[0]) == 'main.py' else None


def device_groups(gpus: Sequence[str], workers: int) -> list[Optional[str]]:
  """CUDA_VISIBLE_DEVICES of each worker: the GPUs split into `workers` contiguous groups of
  equal size (the remainder to the first ones); None for every worker without GPUs (CPU)."""
  if not gpus:
    return [None] * workers
  if workers > len(gpus):
    raise ValueError(f'pipeline.workers={workers} but only {len(gpus)} GPUs are visible: use at '
                     f'most {len(gpus)} (each worker needs a device of its own).')
  base, extra = divmod(len(gpus), workers)
  groups, start = [], 0
  for i in range(workers):
    size = base + (i < extra)
    groups.append(','.join(gpus[start:start + size]))
    start += size
  return groups


def clear_claims(workdir: str) -> None:
  """Forgets the last spread's claims (before a new one: every unfinished run is free)."""
  shutil.rmtree(os.path.join(workdir, CLAIMS_SUBDIR), ignore_errors=True)


def claim(workdir: str, run_name: str, worker: int) -> bool:
  """Whether `worker` takes `run_name`: True for exactly one of the workers that ask."""
  folder = os.path.join(workdir, CLAIMS_SUBDIR)
  os.makedirs(folder, exist_ok=True)
  try:
    fd = os.open(os.path.join(folder, run_name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
  except FileExistsError:
    return False
  with os.fdopen(fd, 'w') as f:
    f.write(f'worker {worker}\n')
  return True


def worker_command(argv: Sequence[str], worker: int) -> list[str]:
  """The parent's own command line (`main.py` and its flags) as worker `worker`; later flags
  win, so the worker's two settings override the parent's."""
  return [sys.executable, *argv, f'--config.pipeline.worker={worker}',
          '--config.pipeline.workers=1']


def spread(workdir: str, argv: Sequence[str], workers: int, log: progress.Log,
           environ: Mapping[str, str] = os.environ) -> list[int]:
  """Runs `workers` workers to the end; returns their exit codes (the parent does whatever
  a failed worker left)."""
  clear_claims(workdir)
  logs = os.path.join(workdir, LOGS_SUBDIR)
  os.makedirs(logs, exist_ok=True)
  groups = device_groups(visible_gpus(environ), workers)
  procs = []
  for i, group in enumerate(groups):
    env = dict(environ)
    env.pop('XLA_PYTHON_CLIENT_MEM_FRACTION', None)   # the parent's share is not theirs
    if group is not None:
      env['CUDA_VISIBLE_DEVICES'] = group
    path = os.path.join(logs, f'worker{i}.log')
    with open(path, 'w') as out:
      procs.append(subprocess.Popen(worker_command(argv, i), env=env, stdout=out,
                                    stderr=subprocess.STDOUT))
    log(f'[pipeline] worker {i}/{workers} started on '
        f'{"GPUs " + group if group is not None else "this host"} (log {path})')
  start = time.time()
  codes = [p.wait() for p in procs]
  for i, code in enumerate(codes):
    log(f'[pipeline] worker {i} ' + ('finished' if code == 0 else
                                      f'FAILED (exit {code}; see {logs}/worker{i}.log)'))
  log(f'[pipeline] workers done in {time.time() - start:.0f} s; gathering the runs')
  return codes
