"""The one place where the Pallas kernels meet the Pallas Triton API of JAX 0.11.

Why this module exists:
  * JAX 0.11 deprecates the Pallas Triton backend and warns (a DeprecationWarning) every time a
    Triton `pallas_call` is lowered. The warning is expected here, so it is filtered once, in
    this module, by its message; nothing else in the repo touches warning filters for it.
  * Kernels need the same few helpers: the `interpret` default (the Triton lowering only exists
    on a CUDA GPU, so everywhere else the kernel runs in the Pallas interpreter) and the Triton
    compiler parameters (`jax.experimental.pallas.triton.CompilerParams` in 0.11; it was
    `TritonCompilerParams` in older releases).

Kernels import `pl` and `plgpu` from here so the filter is installed before any lowering.
"""
from __future__ import annotations

import warnings

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

__all__ = ['pl', 'plgpu', 'filter_triton_deprecation', 'default_interpret', 'resolve_interpret',
           'triton_compiler_params']

# Start of the message JAX 0.11 emits from the Triton `pallas_call` lowering rule.
_TRITON_DEPRECATION_MESSAGE = r'The Pallas Triton backend is deprecated'


def filter_triton_deprecation() -> None:
  """Ignores JAX's Pallas-Triton deprecation warning (idempotent).

  Called at import and again whenever a kernel is traced: the warning fires at lowering time,
  and tools such as pytest reset the warning filters per test, so an import-time filter alone
  would not survive there. `warnings.filterwarnings` de-duplicates, so repeated calls are cheap.
  """
  warnings.filterwarnings('ignore', message=_TRITON_DEPRECATION_MESSAGE,
                          category=DeprecationWarning)


filter_triton_deprecation()


def default_interpret() -> bool:
  """Interpret the kernel unless JAX runs on a GPU (the Triton lowering needs CUDA)."""
  return jax.default_backend() != 'gpu'


def resolve_interpret(interpret: bool | None) -> bool:
  """`None` means the platform default; an explicit bool is kept as given."""
  return default_interpret() if interpret is None else bool(interpret)


def triton_compiler_params(num_warps: int, num_stages: int) -> plgpu.CompilerParams:
  """Triton launch parameters: warps per program and software-pipelining depth of loops."""
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)
