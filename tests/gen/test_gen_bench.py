"""bench/gen_bench.py --smoke runs and reports its numbers, the real-run timing and the profile
included."""
import json
import os
import subprocess
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gen_bench_smoke(tmp_path):
  out = tmp_path / 'bench.json'
  proc = subprocess.run(
      [sys.executable, os.path.join(_REPO, 'bench', 'gen_bench.py'), '--smoke', f'--out={out}',
       '--full_run', '--full_images=8', '--full_iterations=2', '--profile=2'],
      cwd=_REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = proc.stdout.splitlines()
  assert 'img-it/s' in lines[-3]  # the table is printed last (header, rule, the one case)
  assert any('ms' in line and '%' in line for line in lines[:-3])  # the profile's rows
  (result,) = json.load(open(out))['results']
  assert result['case'] == 'tiny' and result['gen']['img_it_per_s'] > 0
  assert result['output_loss_only']['step_ms'] > 0
  profile = result['gen']['profile']   # on a CPU: the host threads' events, most first
  assert profile and all(r['us_per_step'] > 0 and r['launches_per_step'] > 0 for r in profile)
  assert [r['us_per_step'] for r in profile] == sorted((r['us_per_step'] for r in profile),
                                                       reverse=True)
  full = result['full_run']  # generator.generate: 8 images in two groups of 4, 2 steps each
  assert full['images'] == 8 and full['iterations'] == 2 and full['images_per_step'] == 4
  assert full['wall_s'] > 0 and len(full['final_total_loss']) == 2
