"""The pipeline's list of quantization runs: 'method:preset:source,...' or 'table'."""
from __future__ import annotations

from ouromamba_jax.quant.config import METHODS
from ouromamba_jax.quant.presets import PRESETS
from ouromamba_jax.quant.run_spec import SOURCES

# The official W4A4 site set next to W4A4 with A on a log-domain grid (what recovers W4A4 on
# the testbed); `pipeline.full=True` replaces it by the table unless it was changed.
DEMO_RUNS = 'ouromamba:w4a4:gen,ouromamba:w4a4_alog:gen'
TABLE_METHODS = (('rtn', 'real'), ('ptq4vm', 'real'), ('ouromamba', 'noise'),
                 ('ouromamba', 'gen'), ('ouromamba', 'real'))
TABLE_PRESETS = ('w8a8', 'w4a8', 'w4a4')
# Plus two W4A4 variants where the testbed's W4A4 accuracy comes back (RESULTS.md): A on a
# log-domain grid, and 8-bit SSM tensors, for the three OuroMamba calibration sources.
TABLE_RUNS = ','.join([f'{m}:{p}:{s}' for p in TABLE_PRESETS for m, s in TABLE_METHODS] +
                      [f'ouromamba:{p}:{s}' for p in ('w4a4_alog', 'w4a4_ssm8')
                       for s in ('noise', 'gen', 'real')])


def parse_runs(runs: str) -> list[tuple[str, str, str]]:
  """'method:preset:source,...' or 'table' -> [(method, preset, source)]."""
  text = TABLE_RUNS if runs.strip() == 'table' else runs
  out = []
  for item in (s.strip() for s in text.split(',') if s.strip()):
    parts = item.split(':')
    if len(parts) != 3:
      raise ValueError(f'pipeline.runs entry {item!r} must be method:preset:source, e.g. '
                       f'ouromamba:w4a4:gen (or runs="table").')
    method, preset, source = (p.strip().lower() for p in parts)
    if method not in METHODS:
      raise ValueError(f'pipeline.runs {item!r}: method must be one of {METHODS}.')
    if preset not in PRESETS:
      raise ValueError(f'pipeline.runs {item!r}: preset must be one of {sorted(PRESETS)}.')
    if source not in SOURCES:
      raise ValueError(f'pipeline.runs {item!r}: source must be one of {SOURCES}.')
    out.append((method, preset, source))
  if not out:
    raise ValueError('pipeline.runs is empty; give at least one method:preset:source.')
  return out
