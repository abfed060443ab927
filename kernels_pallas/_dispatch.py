"""One way for every op to pick its implementation (tokamax style).

An op lists its implementations in one `Dispatch`. Each `Implementation` can say why it cannot
take given inputs (`unsupported_reason`, e.g. a kernel limit) and, separately, why the platform
default should pass it over even though it could (`not_default_reason`, e.g. measured slower).
`Dispatch.choose(implementation, *inputs)`:

  None          -> the platform's preference order; the first implementation with neither
                   reason wins.
  'name'        -> that implementation; a ValueError with its reason and the alternatives that
                   can take the inputs if it cannot.
  ('a', 'b')    -> the first of these, in order, that can take the inputs (an explicit
                   fallback chain, e.g. "the kernel where it covers the inputs, else XLA").
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax

Reason = Callable[..., 'str | None']


def always_supported(*inputs) -> None:
  del inputs
  return None


@dataclasses.dataclass(frozen=True)
class Implementation:
  """name; unsupported_reason(*inputs): why it cannot run them (None: it can);
  not_default_reason(*inputs): why `implementation=None` should not pick it (None: no reason)."""
  name: str
  unsupported_reason: Reason = always_supported
  not_default_reason: Reason = always_supported


@dataclasses.dataclass(frozen=True)
class Dispatch:
  """op: the name in error messages; implementations: every implementation; preference:
  backend ('gpu', 'cpu', 'tpu') -> names in the order `None` tries them, 'default' for the rest;
  aliases: extra names -> the implementation they stand for."""
  op: str
  implementations: tuple[Implementation, ...]
  preference: Mapping[str, tuple[str, ...]]
  aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def names(self) -> tuple[str, ...]:
    """Every name `choose` accepts (aliases first, as listed)."""
    return tuple(self.aliases) + tuple(i.name for i in self.implementations)

  def _get(self, name: str) -> Implementation:
    target = self.aliases.get(name, name)
    for impl in self.implementations:
      if impl.name == target:
        return impl
    raise ValueError(f'{self.op}: unknown implementation {name!r}; choose one of {self.names} '
                     'or None for the platform default.')

  def _alternatives(self, excluded, inputs) -> str:
    ok = [i.name for i in self.implementations
          if i.name not in excluded and i.unsupported_reason(*inputs) is None]
    return ', '.join(repr(n) for n in ok) or 'none'

  def choose(self, implementation: str | Sequence[str] | None, *inputs) -> str:
    """The implementation name to run for these inputs (see the module docstring)."""
    if implementation is None:
      order = self.preference.get(jax.default_backend(), self.preference['default'])
      reasons = []
      for impl in map(self._get, order):
        reason = impl.unsupported_reason(*inputs) or impl.not_default_reason(*inputs)
        if reason is None:
          return impl.name
        reasons.append(f'{impl.name}: {reason}')
      raise ValueError(f'{self.op}: no implementation can take these inputs '
                       f'({"; ".join(reasons)}).')
    chain = (implementation,) if isinstance(implementation, str) else tuple(implementation)
    impls = [self._get(name) for name in chain]
    for impl in impls:
      if impl.unsupported_reason(*inputs) is None:
        return impl.name
    reasons = '; '.join(f'{i.name}: {i.unsupported_reason(*inputs)}' for i in impls)
    alternatives = self._alternatives({i.name for i in impls}, inputs)
    raise ValueError(f'{self.op}: implementation={implementation!r} cannot take these inputs '
                     f'({reasons}). Alternatives that can: {alternatives}, or None for the '
                     'platform default.')
