"""bench/gen_bench.py --smoke runs and reports its numbers."""
import json
import os
import subprocess
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gen_bench_smoke(tmp_path):
  out = tmp_path / 'bench.json'
  proc = subprocess.run(
      [sys.executable, os.path.join(_REPO, 'bench', 'gen_bench.py'), '--smoke', f'--out={out}'],
      cwd=_REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'img-it/s' in proc.stdout.splitlines()[0]  # the table is printed last
  (result,) = json.load(open(out))['results']
  assert result['case'] == 'tiny' and result['gen']['img_it_per_s'] > 0
  assert result['output_loss_only']['step_ms'] > 0
