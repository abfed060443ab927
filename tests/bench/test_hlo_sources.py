"""bench/hlo_sources.py: compiled-HLO instructions mapped to the source lines that made them."""

import jax
import jax.numpy as jnp

from ouromamba_jax.models import layers
from tests.bench import load_bench


def _glue(x, w):
  y = jnp.tanh(x @ w) * 2 + 1
  return jax.nn.silu(y).astype(jnp.bfloat16)


def _compiled_text(fn, *args):
  return jax.jit(fn).lower(*args).compile().as_text()


def test_each_fusion_is_named_by_its_op_and_line():
  hlo = load_bench('hlo_sources')
  text = _compiled_text(_glue, jnp.ones((8, 16)), jnp.ones((16, 32)))
  sources = hlo.instruction_sources(text)
  root = [line.split('=')[0].split('%')[1].strip() for line in text.splitlines()
          if line.strip().startswith('ROOT %') and 'fusion(' in line]
  assert root, text
  label = sources[root[-1]]
  op, where = label.split(' · ')
  assert op == 'convert_element_type'
  line = _glue.__code__.co_firstlineno + 2       # the `return` line of _glue
  assert where == f'test_hlo_sources.py:{line} _glue', label


def test_project_code_is_named_by_its_project_path():
  hlo = load_bench('hlo_sources')
  x = jnp.linspace(-2.0, 2.0, 64).reshape(4, 16)
  text = _compiled_text(lambda v: layers.linear(v, jnp.ones((16, 8)), jnp.zeros((8,)), None,
                                                jnp.float32), x)
  labels = set(hlo.instruction_sources(text).values())
  assert any(' · ouromamba_jax/models/layers.py:' in label for label in labels), labels


def test_time_is_summed_by_source_and_unexplained_kernels_keep_their_name():
  hlo = load_bench('hlo_sources')
  sources = {'loop_add_fusion.4': 'add · m.py:3 f', 'fusion.7': 'add · m.py:3 f',
             'convert.2': 'convert_element_type · m.py:9 g'}
  kernel_us = {'loop_add_fusion_4': 5.0, 'fusion.7': 2.0, 'convert_2': 1.0,
               'act_quant_kernel': 9.0}
  assert hlo.by_source(kernel_us, sources) == [
      ('(kernel) act_quant_kernel', 9.0, 1), ('add · m.py:3 f', 7.0, 2),
      ('convert_element_type · m.py:9 g', 1.0, 1)]
