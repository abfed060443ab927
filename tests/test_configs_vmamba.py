"""configs/vmamba_t_cifar10.py: without a checkpoint the pipeline stops in one line."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_missing_checkpoint_is_one_line():
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, str(ROOT / 'main.py'),
                         '--config=configs/vmamba_t_cifar10.py'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
  assert "model 'vmamba_t_cifar10' has no checkpoint" in lines[0]
  assert '--config.model.checkpoint=' in lines[0]
