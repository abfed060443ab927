"""Stages: the command-line modes. Each owns its workdir layout, resume, logging and reports,
turns its config section into a typed spec at the door and calls the library.

MODES maps a mode to 'module:function'; each function takes (config, workdir). Modules are
imported on use, so the light spec modules here (eval_spec, runs) load without JAX.
"""
MODES = {
    'train': 'ouromamba_jax.stages.train:run',
    'evaluate': 'ouromamba_jax.stages.evaluate:run',
    'convert': 'ouromamba_jax.stages.convert:run',
    'generate': 'ouromamba_jax.stages.generate:run',
    'quantize': 'ouromamba_jax.stages.quantize:run',
    'pipeline': 'ouromamba_jax.stages.pipeline:run',
}
