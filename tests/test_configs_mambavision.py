"""configs/mambavision_t_cifar10.py: the testbed model builds from it; without a checkpoint the
pipeline stops in one line."""
import os
import pathlib
import subprocess
import sys

from configs import mambavision_t_cifar10
from ouromamba_jax.models.mambavision import MambaVision
from ouromamba_jax.stages import sections

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_config_builds_the_testbed():
  config = mambavision_t_cifar10.get_config()
  model = sections.model_from_config(config.model)
  assert isinstance(model, MambaVision) and model.img_size == 32 and model.num_classes == 10
  assert config.data.name == 'cifar10' and config.train.epochs > 0


def test_missing_checkpoint_is_one_line():
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, str(ROOT / 'main.py'),
                         '--config=configs/mambavision_t_cifar10.py'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
  assert "model 'mambavision_t_cifar10' has no checkpoint" in lines[0]
