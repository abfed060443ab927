"""stages.pipeline_workers: how many workers, their device groups, one claim per run, and the
pipeline's runs spread over two worker processes of main.py (CPU)."""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from ouromamba_jax.stages import pipeline_workers as pw
from tests.test_main import ROOT, TINY_VIM_T, TINY_RUN


def test_auto_means_one_worker_per_gpu_from_two_up():
  assert [pw.resolve_workers(0, g) for g in (0, 1, 2, 8)] == [1, 1, 2, 8]
  assert pw.resolve_workers(3, 0) == 3
  with pytest.raises(ValueError, match='pipeline.workers must be >= 0'):
    pw.resolve_workers(-1, 8)


def test_only_the_main_py_pipeline_parent_starts_workers():
  argv = ['main.py', '--config=configs/vim_t.py']
  assert pw.planned_workers('pipeline', 0, -1, argv, 8) == 8
  assert pw.planned_workers('pipeline', 0, 2, argv, 8) == 1     # a worker starts none
  assert pw.planned_workers('study', 0, -1, argv, 8) == 1       # a study's cells run in place
  assert pw.planned_workers('pipeline', 0, -1, None, 8) == 1    # Python API: auto = in place
  with pytest.raises(ValueError, match='pipeline.workers=2 starts copies of main.py'):
    pw.planned_workers('pipeline', 2, -1, None, 8)
  assert pw.main_argv(['/x/main.py', '-v']) == ['/x/main.py', '-v']
  assert pw.main_argv(['pytest']) is None


def test_gpus_are_split_into_equal_contiguous_groups():
  assert pw.device_groups(['0', '1', '2', '3', '4', '5', '6', '7'], 4) == [
      '0,1', '2,3', '4,5', '6,7']
  assert pw.device_groups(['0', '1', '2'], 2) == ['0,1', '2']
  assert pw.device_groups([], 2) == [None, None]
  with pytest.raises(ValueError, match='only 2 GPUs are visible'):
    pw.device_groups(['0', '1'], 3)
  assert pw.visible_gpus({'CUDA_VISIBLE_DEVICES': '3,5'}) == ['3', '5']
  assert pw.local_gpu_count({'CUDA_VISIBLE_DEVICES': ''}) == 0


def _claim_file(workdir, run_name) -> str:
  """What the claim file of `run_name` says ('worker I'), or '' when no worker took it."""
  path = os.path.join(workdir, pw.CLAIMS_SUBDIR, run_name)
  if not os.path.isfile(path):
    return ''
  with open(path) as f:
    return f.read().strip()


def test_exactly_one_worker_claims_a_run(tmp_path):
  wins = []
  threads = [threading.Thread(target=lambda i=i: wins.append(i) if pw.claim(
      str(tmp_path), 'rtn_w8a8_real', i) else None) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(wins) == 1 and _claim_file(tmp_path, 'rtn_w8a8_real') == f'worker {wins[0]}'
  assert _claim_file(tmp_path, 'other') == ''
  assert pw.worker_command(['main.py', '--config=c.py'], 1)[1:] == [
      'main.py', '--config=c.py', '--config.pipeline.worker=1', '--config.pipeline.workers=1']


def _tiny_checkpoint(tmp_path):
  from ouromamba_jax import build_model  # pylint: disable=g-import-not-at-top
  from ouromamba_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.io import hustvl_keys  # pylint: disable=g-import-not-at-top
  from tests.io import synthetic_pth  # pylint: disable=g-import-not-at-top
  model = build_model('vim_t', img_size=32, patch_size=8, depth=2, d_model=32, num_classes=10)
  pth = tmp_path / 'tiny.pth'
  state = hustvl_keys.state_dict_from_params(checkpoints.random_params(model, seed=1))
  synthetic_pth.write_state_dict(pth, {k: np.asarray(v) for k, v in state.items()})
  return pth


RUNS = ['rtn_w8a8_noise', 'rtn_w4a8_noise']


def _pipeline_command(tmp_path, *extra):
  args = [a for a in TINY_RUN if not a.startswith('--config.pipeline.runs=')]
  return [sys.executable, 'main.py', '--config=configs/vim_t.py', f'--workdir={tmp_path / "wd"}',
          *TINY_VIM_T, *args, f'--config.model.checkpoint={_tiny_checkpoint(tmp_path)}',
          '--config.pipeline.runs=rtn:w8a8:noise,rtn:w4a8:noise', *extra]


def _check_spread(workdir):
  for run in RUNS:
    assert _claim_file(workdir, run) in ('worker 0', 'worker 1')
    assert (workdir / 'quant' / run / 'quantized' / 'quant_meta.json').is_file()
  with open(workdir / 'reports' / 'accuracy.json') as f:
    assert sorted(r['name'] for r in json.load(f)['runs']) == sorted(RUNS)


@pytest.mark.slow  # three processes each compiling the tiny model: ~1-3 min on 2 CPU cores
def test_two_workers_share_the_runs_and_the_parent_writes_one_report(tmp_path):
  proc = subprocess.run(_pipeline_command(tmp_path, '--config.pipeline.workers=2'), cwd=ROOT,
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'PYTHONPATH': str(ROOT), 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'worker 1/2 started' in proc.stderr and 'worker 1 finished' in proc.stderr
  _check_spread(tmp_path / 'wd')
  logs = [(tmp_path / 'wd' / 'workers' / f'worker{i}.log').read_text() for i in (0, 1)]
  assert all('[pipeline] worker' in log for log in logs)


@pytest.mark.slow  # two processes joined by JAX's distributed runtime: ~1-3 min on 2 CPU cores
def test_two_processes_share_the_runs_and_process_0_writes_the_report(tmp_path):
  from tests.test_distributed import _free_port  # pylint: disable=g-import-not-at-top
  command = _pipeline_command(tmp_path, '--config.distributed.coordinator_address='
                              f'127.0.0.1:{_free_port()}', '--config.distributed.num_processes=2')
  env = {**os.environ, 'PYTHONPATH': str(ROOT), 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  procs = [subprocess.Popen(command + [f'--config.distributed.process_id={i}'], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in (0, 1)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert '[pipeline] done' in outs[0] and '[pipeline] worker 1 done' in outs[1]
  _check_spread(tmp_path / 'wd')
