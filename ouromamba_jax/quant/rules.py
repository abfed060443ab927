"""Quantizable sites of a model and which rule each one gets (first applicable match wins).

A site is a place in the param tree the pass can fill: a Linear `kernel` ('weight'), the
`input_quantizer` beside it ('input'), or an SSM tensor quantizer of a mixer ('ssm'). Sites
are found by tracing the model once (`jax.eval_shape`, nothing is computed), so the list
follows the model code rather than a hard-coded table.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax

from ouromamba_jax.models import layers
from ouromamba_jax.models import mambavision
from ouromamba_jax.models import vim
from ouromamba_jax.models import vmamba
from ouromamba_jax.quant.config import ActSpec, QuantRule, WeightSpec

# The activation sites of a mixer that keeps its directions apart, per direction: Vim's
# `BiMambaV2Mixer` (through `layers.quantize_site` / `layers.split_sites`) and MambaVision's
# mixer (its one direction, through `layers.apply_site`).
SSM_TENSORS = ('delta', 'B', 'C', 'A', 'D')
PER_TENSOR = ('A', 'D')                       # static tensors: one per-tensor step


# VMamba's SS2D keeps each per-direction tensor stacked (B, K, L, C) in one site ('stacked':
# per-direction per-step scales along each direction's own scan order), A (K*Di, N) and D
# (K*Di,) one static per-tensor step each, and its two per-direction projections stacked
# (`layers.stacked_linear`: `{name}_weight` (K, out, in) and `{name}_input_quantizer`).
SS2D_SSM_SITES = (('delta_quantizer', 'stacked'), ('B_quantizer', 'stacked'),
                  ('C_quantizer', 'stacked'), ('A_quantizer', 'tensor'), ('D_quantizer', 'tensor'))
SS2D_STACKED_LINEARS = ('x_proj', 'dt_projs')
MIXERS = (vim.BiMambaV2Mixer, vmamba.SS2D, mambavision.MambaVisionMixer)


def ssm_site_names(directions=vim.DIRECTIONS) -> list[tuple[str, str]]:
  """(leaf name, layout) of every SSM site, e.g. ('delta_b_quantizer', 'steps').

  MambaVision's mixer scans one direction (its window's row-major tokens): the forward names,
  per step of the window's sequence (B*windows, ws*ws, C)."""
  names = []
  for _, suffix in directions:
    for tensor in SSM_TENSORS:
      layout = 'tensor' if tensor in PER_TENSOR else 'steps'
      names.append((f'{tensor}{suffix}_quantizer', layout))
  return names


@dataclasses.dataclass(frozen=True)
class Site:
  path: str                 # where the quantized leaf goes, e.g. layers_0/mixer/in_proj/kernel
  kind: str                 # 'weight' | 'input' | 'ssm'
  layout: str = 'steps'     # 'steps' per time step, 'tensor' per tensor, 'stacked' per
                            # direction and step (VMamba; a weight: stacked (K, out, in))
  linear: Optional[str] = None   # the Linear module path (weight and input sites); for a
                                 # stacked projection its module path + name ('op/x_proj')

  @property
  def rule_kind(self) -> str:
    return 'weight' if self.kind == 'weight' else 'act'


def find_sites(model: nn.Module, params, sample_input) -> list[Site]:
  """Every quantizable site, in call order. `sample_input` is only traced (eval_shape). The
  model runs module by module (`layers.module_by_module`) so each block's Linears show."""
  model = layers.module_by_module(model)
  linears, mixers = [], []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      path = '/'.join(context.module.scope.path)
      if isinstance(context.module, layers.Linear) and path not in linears:
        linears.append(path)
      elif isinstance(context.module, MIXERS) and path not in mixers:
        mixers.append((path, type(context.module)))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda p, x: model.apply({'params': p}, x), params, sample_input)

  sites = []
  for mixer, cls in mixers:
    for linear in (l for l in linears if l.startswith(mixer + '/')):
      sites += [Site(f'{linear}/kernel', 'weight', linear=linear),
                Site(f'{linear}/input_quantizer', 'input', linear=linear)]
    if cls is vmamba.SS2D:
      for name in SS2D_STACKED_LINEARS:
        linear = f'{mixer}/{name}'
        sites += [Site(f'{linear}_weight', 'weight', 'stacked', linear=linear),
                  Site(f'{linear}_input_quantizer', 'input', 'stacked', linear=linear)]
      sites += [Site(f'{mixer}/{name}', 'ssm', layout) for name, layout in SS2D_SSM_SITES]
    elif cls is mambavision.MambaVisionMixer:
      sites += [Site(f'{mixer}/{name}', 'ssm', layout)
                for name, layout in ssm_site_names(vim.DIRECTIONS[:1])]
    else:
      sites += [Site(f'{mixer}/{name}', 'ssm', layout) for name, layout in ssm_site_names()]
  in_mixer = lambda l: any(l.startswith(m + '/') for m, _ in mixers)
  for linear in (l for l in linears if not in_mixer(l)):
    sites += [Site(f'{linear}/kernel', 'weight', linear=linear),
              Site(f'{linear}/input_quantizer', 'input', linear=linear)]
  return sites


@dataclasses.dataclass
class RuleMatch:
  plan: dict[str, Any]                      # site path -> WeightSpec | ActSpec (quantized sites)
  matched_by: dict[str, int]                # site path -> index of the rule that decided it
  kept_float: list[str]                     # sites a None rule, or no rule, left in float
  unused_rules: list[tuple[int, str]]       # (index, pattern) of rules that decided nothing

  def report(self, sites: Sequence[Site] = ()) -> dict[str, Any]:
    layout = {s.path: s.layout for s in sites if s.kind != 'weight'}
    per = lambda p: {'steps': ' [per step]', 'tensor': ' [per tensor]',
                     'stacked': ' [per direction and step]'}.get(layout.get(p), '')
    return {'quantized': {p: s.describe() + per(p) for p, s in self.plan.items()},
            'kept_float': list(self.kept_float),
            'unused_rules': [{'index': i, 'pattern': p} for i, p in self.unused_rules]}


def match_rules(sites: Sequence[Site], rules: Sequence[QuantRule]) -> RuleMatch:
  """First applicable rule (regex fullmatch + spec kind) decides each site."""
  plan, matched_by, kept_float = {}, {}, []
  used = set()
  for site in sites:
    for i, rule in enumerate(rules):
      if rule.applies_to(site.path, site.rule_kind):
        used.add(i)
        matched_by[site.path] = i
        if rule.spec is None:
          kept_float.append(site.path)
        else:
          plan[site.path] = rule.spec
        break
    else:
      kept_float.append(site.path)
  unused = [(i, r.pattern) for i, r in enumerate(rules) if i not in used]
  return RuleMatch(plan, matched_by, kept_float, unused)


def check_plan(plan: dict[str, Any], sites: Sequence[Site]) -> None:
  kinds = {s.path: s.rule_kind for s in sites}
  for path, spec in plan.items():
    want = WeightSpec if kinds[path] == 'weight' else ActSpec
    if not isinstance(spec, want):
      raise ValueError(f'site {path} needs a {want.__name__}, got {type(spec).__name__}.')
