"""The shared dispatch protocol: platform order, reasons, explicit choices and fallback chains."""
import jax
import pytest

from kernels_pallas import _dispatch

_SMALL_ONLY = lambda n: f'n={n} > 4' if n > 4 else None
_SLOW_WHEN_ODD = lambda n: 'measured slower for odd n' if n % 2 else None
DISPATCH = _dispatch.Dispatch(
    op='toy',
    implementations=(_dispatch.Implementation('xla'),
                     _dispatch.Implementation('kernel', _SMALL_ONLY, _SLOW_WHEN_ODD)),
    preference={'gpu': ('kernel', 'xla'), 'default': ('xla',)},
    aliases={'ref': 'xla'})


def test_platform_order_skips_unsupported_and_not_default(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert DISPATCH.choose(None, 2) == 'kernel'
  assert DISPATCH.choose(None, 8) == 'xla'       # cannot
  assert DISPATCH.choose(None, 3) == 'xla'       # can, but not by default
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert DISPATCH.choose(None, 2) == 'xla'


def test_explicit_choices_chains_and_errors():
  assert DISPATCH.choose('kernel', 3) == 'kernel'  # an explicit choice ignores "not default"
  assert DISPATCH.choose('ref', 8) == 'xla'
  assert DISPATCH.choose(('kernel', 'xla'), 8) == 'xla'
  with pytest.raises(ValueError, match=r"toy: implementation='kernel' cannot .*n=8 > 4.*'xla'"):
    DISPATCH.choose('kernel', 8)
  with pytest.raises(ValueError, match="unknown implementation 'cuda'.*'ref', 'xla', 'kernel'"):
    DISPATCH.choose('cuda', 2)
  assert DISPATCH.names == ('ref', 'xla', 'kernel')
