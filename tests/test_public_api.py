"""The README's Python API example, extracted from README.md and run as written (so it can't drift)."""
import os
import pathlib
import re

import numpy as np

import ouromamba_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARKER = '<!-- public-api-example -->'


def readme_example() -> str:
  text = (ROOT / 'README.md').read_text()
  match = re.search(re.escape(MARKER) + r'\s*```python\n(.*?)```', text, re.S)
  assert match, f'README.md lost its {MARKER} code block'
  return match.group(1)


def test_public_names_resolve_lazily():
  for name in ouromamba_jax.__all__:
    assert getattr(ouromamba_jax, name) is not None, name


def test_readme_example_runs(monkeypatch):
  monkeypatch.chdir(ROOT)
  namespace = {'__name__': 'readme_example'}
  exec(compile(readme_example(), 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['report']['spec']['name'] == 'w4a4'
  assert os.path.isdir(namespace['path'])
  predicted = np.asarray(namespace['predict'](namespace['qparams'], namespace['synthetic'].images))
  assert predicted.shape == (2,)
  if namespace['test'] is not None:   # CIFAR-10 present: the quantized model still classifies
    assert namespace['metrics']['images'] == 64 and namespace['metrics']['top1'] > 0.3
