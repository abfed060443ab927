"""Summaries for issue 22's runs (`issue22.sh`): one line per comparison, and exit status 1
when results that must agree do not.

  python results/multi_gpu/compare.py gen_scaling gen_weak_1dev.json gen_weak_2dev.json ...
  python results/multi_gpu/compare.py images WORKDIR_A WORKDIR_B ...   # Gen's synthetic.npz
  python results/multi_gpu/compare.py evals WORKDIR_A WORKDIR_B ...    # eval.json
  python results/multi_gpu/compare.py reports WORKDIR_A WORKDIR_B      # reports/accuracy.json
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ouromamba_jax.stages import gen_outputs  # pylint: disable=wrong-import-position


def gen_scaling(paths: list[str]) -> bool:
  """Weak scaling of the Gen step (the same images per device): efficiency is the per-device
  throughput against one device's."""
  rows = sorted((r for p in paths for r in json.load(open(p))['results']),
                key=lambda r: r['num_devices'])
  base = rows[0]['gen']['img_it_per_s'] / rows[0]['num_devices']
  print('devices  images/step  step ms  img-it/s  efficiency')
  for r in rows:
    g, n = r['gen'], r['num_devices']
    print(f'{n:7d}  {r["images_per_step"]:11d}  {g["step_ms"]:7.1f}  {g["img_it_per_s"]:8.1f}  '
          f'{g["img_it_per_s"] / n / base:10.2f}')
  return True


def images(workdirs: list[str]) -> bool:
  """Synthetic images of each run against the first: equal, or how far apart (relative L2),
  and the final losses. The first two (one process on N devices, N processes of one) split
  the images alike and must agree to float rounding; one device alone may drift (Adam's
  sign-like first steps amplify rounding, BENCHMARKS.md session 6)."""
  sets = []
  for w in workdirs:
    imgs, labels = gen_outputs.load_synthetic(os.path.join(gen_outputs.gen_dir(w),
                                                           gen_outputs.SYNTHETIC_FILE))
    sets.append((w, imgs.astype(np.float64), labels))
  ref_dir, ref, ref_labels = sets[0]
  ok = True
  for i, (w, x, labels) in enumerate(sets[1:], 1):
    same_labels = np.array_equal(labels, ref_labels)
    rel = float(np.linalg.norm(x - ref) / np.linalg.norm(ref))
    print(f'{w} vs {ref_dir}: labels equal {same_labels}, images equal {np.array_equal(x, ref)}, '
          f'relative L2 {rel:.2e}, max |diff| {float(np.abs(x - ref).max()):.2e}')
    if i == 1:
      ok &= same_labels and rel < 1e-3
  return ok


def evals(workdirs: list[str]) -> bool:
  """eval.json of each run: top-1 / top-5 must be identical; throughput side by side."""
  records = [(w, json.load(open(os.path.join(w, 'eval.json')))) for w in workdirs]
  for w, r in records:
    print(f'{w}: top-1 {r["top1"]:.4f} top-5 {r["top5"]:.4f} on {r["images"]} images, '
          f'{r["images_per_s"]:.1f} images/s, {r["seconds"]:.1f} s')
  same = len({(r['top1'], r['top5'], r['images']) for _, r in records}) == 1
  print(f'top-1 / top-5 identical: {same}')
  return same


def reports(workdirs: list[str]) -> bool:
  """The pipelines' accuracy reports: every run's top-1 / top-5 identical (times differ)."""
  def scores(w):
    d = json.load(open(os.path.join(w, 'reports', 'accuracy.json')))
    fp = d['fp'] and (d['fp']['top1'], d['fp']['top5'])
    return {r['name']: (r.get('top1'), r.get('top5')) for r in d['runs']}, fp
  (a_runs, a_fp), (b_runs, b_fp) = (scores(w) for w in workdirs)
  same = a_runs == b_runs and a_fp == b_fp
  differ = sorted(k for k in a_runs.keys() | b_runs.keys() if a_runs.get(k) != b_runs.get(k))
  print(f'{len(a_runs)} / {len(b_runs)} runs; reports identical: {same}'
        + (f'; differ: {differ}' if differ else ''))
  return same


def main(argv: list[str]) -> int:
  commands = {'gen_scaling': gen_scaling, 'images': images, 'evals': evals, 'reports': reports}
  if len(argv) < 3 or argv[1] not in commands:
    print(__doc__)
    return 2
  return 0 if commands[argv[1]](argv[2:]) else 1


if __name__ == '__main__':
  sys.exit(main(sys.argv))
