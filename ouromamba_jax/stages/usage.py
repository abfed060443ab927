"""`main.py --help`: the modes and, per config section, each field's value and documentation.

Pure text from the tables that define them (stages.MODE_DOCS / MODE_SECTIONS and the
documented section dataclasses), so the help cannot drift from the code.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from ouromamba_jax.stages import MODE_DOCS, MODE_SECTIONS

USAGE = ('usage: python main.py --config=configs/FILE.py [--config.mode=MODE] [--workdir=DIR] '
         '[--config.SECTION.FIELD=VALUE ...]\n'
         '  configs: vim_t_cifar10.py (the bundled CIFAR-10 testbed), vim_t.py | vim_s.py | '
         'vim_b.py (hustvl ImageNet checkpoints), vmamba_t_cifar10.py | '
         'mambavision_t_cifar10.py (their bundled CIFAR-10 testbeds)\n'
         '  --help with --config=FILE shows that file\'s values; with --config.mode=MODE only '
         'the fields of that mode.')
MAX_VALUE = 60


def _value(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 3] + '...'


def section_lines(name: str, spec_cls, values: Mapping[str, Any], readers: list[str],
                  extra: Mapping[str, str]) -> list[str]:
  """One section: its header, then `field = value` and the field's documentation."""
  prefix = f'{name}.' if name else ''
  doc = (spec_cls.__doc__ or '').strip().splitlines()[0]
  lines = [f'[{name or "top level"}] {doc}' + (f' (read by {", ".join(readers)})' if readers
                                               else '')]
  for f in dataclasses.fields(spec_cls):
    lines.append(f'  {prefix}{f.name} = {_value(values.get(f.name, f.default))}')
    lines.append(f'      {f.metadata.get("help", "")}')
  for field_name, help_text in extra.items():
    lines.append(f'  {prefix}{field_name}')
    lines.append(f'      {help_text}')
  return lines


def render(sections: Mapping[str, type], config: Optional[Mapping[str, Any]] = None,
           mode: str = '', extra: Optional[Mapping[str, Mapping[str, str]]] = None) -> str:
  """The help text. `sections`: section name ('' = top level) -> documented dataclass;
  `config`: the config's values as a dict (None: the defaults); `mode`: only its sections;
  `extra`: per section, documented fields the dataclass does not hold (nested ones)."""
  config, extra = config or {}, extra or {}
  modes = [mode] if mode in MODE_SECTIONS else list(MODE_SECTIONS)
  lines = [USAGE, '', 'modes (--config.mode=MODE; default pipeline, help prints this):']
  for m in modes:
    lines.append(f'  {m:<9} {MODE_DOCS[m]}')
    lines.append(f'  {"":<9} fields: {", ".join(MODE_SECTIONS[m])} (and the top level)')
  for name, spec_cls in sections.items():
    readers = [m for m in modes if name in MODE_SECTIONS[m]]
    if name and not readers:
      continue
    values = config.get(name, {}) if name else config
    lines += [''] + section_lines(name, spec_cls, values or {}, readers, extra.get(name, {}))
  return '\n'.join(lines)
