"""Named quantization presets (Vim, VMamba, MambaVision): functions returning site-set specs.

  spec = preset('w4a4')                              # a QuantSpec (rules + default CalibSpec)
  sites = w4a4()                                     # VimSites: one spec per site group
  spec = QuantSpec('mine', dataclasses.replace(sites, a=None).rules())

A config changes a preset through `run_spec.QuantRunSpec` (k, n_refresh, delta_bits, ...),
which edits these site groups field by field.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from ouromamba_jax.quant.config import ActSpec, QuantRule, QuantSpec, WeightSpec

LINEARS = r'(in_proj|out_proj|x_proj(_b)?|dt_proj(_b)?)'
# Vim's mixers, VMamba's SS2D ops and MambaVision's mixers (one pattern for all models, so each
# rule decides sites of whichever model it meets and none is reported unused).
BLOCK = r'(layers_\d+/(mixer|blocks_\d+/op)|levels_\d+/blocks_\d+/mixer)'
VSS = r'layers_\d+/blocks_\d+'
# MambaVision's hybrid blocks: the mixer's 4 Linears or the attention's qkv/proj, and the MLP.
# Attention inputs get the same quantizer as every Linear input: static per-token (window
# position) inlier scales with per-token dynamic outliers (DEVIATIONS.md). Its conv stages
# (patch embed, ConvBlocks, downsamples), the conv1d's, norms and the head stay float.
HYBRID = (r'levels_\d+/blocks_\d+/(mixer/(in_proj|x_proj|dt_proj|out_proj|qkv|proj)'
          r'|mlp/fc[12])')
# Every Linear of a block: Vim's six mixer Linears; VMamba's in/out_proj, MLP fc1/fc2 and the
# stacked per-direction x_proj/dt_projs (`layers.stacked_linear`). Patch embeds, VMamba's
# downsample convs, the depthwise convs, norms and the head stay float, as the official Vim
# quantizer leaves them (DEVIATIONS.md).
LINEAR_MODULES = (fr'(layers_\d+/mixer/{LINEARS}|{VSS}/(op/(in_proj|out_proj)|mlp/fc[12])'
                  fr'|{HYBRID})')
STACKED = fr'{VSS}/op/(x_proj|dt_projs)'


@dataclasses.dataclass(frozen=True)
class VimSites:
  """The official site set: the 6 mixer Linears (weights + inputs) and Δ, A, B/C/D per
  direction (VMamba: every block Linear, Δ/B/C per direction, A/D). None keeps that group in
  float."""
  weights: WeightSpec
  inputs: ActSpec
  delta: Optional[ActSpec]
  a: Optional[ActSpec]
  ssm: Optional[ActSpec]        # B, C, D

  def map(self, fn: Callable) -> 'VimSites':
    """`fn` applied to every quantized group (e.g. a field replaced at every site)."""
    return VimSites(*(spec and fn(spec) for spec in (self.weights, self.inputs, self.delta,
                                                     self.a, self.ssm)))

  def rules(self) -> tuple[QuantRule, ...]:
    return (
        QuantRule(fr'{LINEAR_MODULES}/kernel|{STACKED}_weight', self.weights),
        QuantRule(fr'{LINEAR_MODULES}/input_quantizer|{STACKED}_input_quantizer', self.inputs),
        QuantRule(fr'{BLOCK}/delta(_b)?_quantizer', self.delta),
        QuantRule(fr'{BLOCK}/A(_b)?_quantizer', self.a),
        QuantRule(fr'{BLOCK}/(B|C|D)(_b)?_quantizer', self.ssm),
    )


def _sites(w_bits: int, a_bits: int, outliers: str) -> VimSites:
  """Every activation at a_bits with `outliers`; Δ on an unsigned grid with k = 4 (official)."""
  act = ActSpec(bits=a_bits, outliers=outliers)
  delta = dataclasses.replace(act, symmetric=False, k=4.0)
  return VimSites(WeightSpec(bits=w_bits), act, delta, act, act)


def w8a8() -> VimSites:
  """Everything on 8-bit integers: inliers, outliers and weights."""
  return _sites(8, 8, 'int')


def w4a8() -> VimSites:
  """The paper's W4/A8: outliers kept in float (official W4A8O16)."""
  return _sites(4, 8, 'float')


def w4a4() -> VimSites:
  """The paper's W4/A4: 8-bit dynamic outliers (official W4A4O8)."""
  return _sites(4, 4, 'int')


def w4a4_no_outliers() -> VimSites:
  """Ablation: W4A4 with static inlier scales only (no outlier channels)."""
  return _sites(4, 4, 'none')


def w4a4_float_ssm() -> VimSites:
  """Ablation: W4A4 on the Linears only; Δ, B, C, A, D stay in float (PTQ4VM's site set)."""
  return dataclasses.replace(w4a4(), delta=None, a=None, ssm=None)


def w4a4_ssm8() -> VimSites:
  """W4A4 on the Linears, 8-bit Δ, B, C, A, D (where the W4A4 accuracy goes; RESULTS.md)."""
  sites = w4a4()
  ssm8 = dataclasses.replace(sites.ssm, bits=8)
  return dataclasses.replace(sites, delta=dataclasses.replace(sites.delta, bits=8), a=ssm8,
                             ssm=ssm8)


def w4a4_alog() -> VimSites:
  """W4A4 with A on a 4-bit log-domain grid (every activation still 4-bit): recovers the
  testbed's W4A4 accuracy (RESULTS.md)."""
  sites = w4a4()
  return dataclasses.replace(sites, a=dataclasses.replace(sites.a, domain='log', symmetric=False))


PRESETS: dict[str, Callable[[], VimSites]] = {
    fn.__name__: fn for fn in (w8a8, w4a8, w4a4, w4a4_no_outliers, w4a4_float_ssm, w4a4_ssm8,
                               w4a4_alog)}


def preset_sites(name: str) -> VimSites:
  """A preset's site groups by name (case-insensitive)."""
  key = name.lower()
  if key not in PRESETS:
    raise ValueError(f'unknown quantization preset {name!r}; choose one of {sorted(PRESETS)}.')
  return PRESETS[key]()


def preset(name: str) -> QuantSpec:
  """A preset by name as a QuantSpec with the default calibration settings."""
  return QuantSpec(name.lower(), preset_sites(name).rules())
