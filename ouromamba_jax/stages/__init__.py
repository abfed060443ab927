"""Stages: the command-line modes. Each owns its workdir layout, resume, logging and reports,
turns its config section into a typed spec at the door and calls the library.

MODES maps a mode to 'module:function'; each function takes (config, workdir). MODE_DOCS says
what a mode does and MODE_SECTIONS which config sections it reads (`main.py --help` prints
both). Modules are imported on use, so the light spec modules here (eval_spec, runs) load
without JAX.
"""
MODES = {
    'train': 'ouromamba_jax.stages.train:run',
    'evaluate': 'ouromamba_jax.stages.evaluate:run',
    'convert': 'ouromamba_jax.stages.convert:run',
    'generate': 'ouromamba_jax.stages.generate:run',
    'quantize': 'ouromamba_jax.stages.quantize:run',
    'pipeline': 'ouromamba_jax.stages.pipeline:run',
    'study': 'ouromamba_jax.stages.study:run',
}
MODE_DOCS = {
    'pipeline': 'generate -> quantize (pipeline.runs) -> evaluate FP and quantized -> report',
    'generate': 'OuroMamba-Gen synthetic calibration images -> WORKDIR/gen/',
    'quantize': 'one quantization run (quant.method/preset/calib_source) -> WORKDIR/quant/<run>/',
    'evaluate': 'top-1/top-5 of the FP model or of eval.quantized_checkpoint -> WORKDIR/eval.json',
    'train': 'train or fine-tune a testbed (Vim, VMamba, MambaVision; the bundled recipe)',
    'convert': 'an official .pth -> .safetensors under the official names',
    'study': "one of the paper's ablations (study.name) as pipeline runs x study.seeds seeds "
             '-> WORKDIR/study/<name>/study.{json,md,png}',
}
MODE_SECTIONS = {
    'pipeline': ('model', 'data', 'gen', 'quant', 'pipeline', 'distributed'),
    'generate': ('model', 'data', 'gen', 'distributed'),
    'quantize': ('model', 'data', 'quant'),
    'evaluate': ('model', 'data', 'eval', 'distributed'),
    'train': ('model', 'data', 'train'),
    'convert': ('model', 'convert'),
    'study': ('model', 'data', 'gen', 'quant', 'pipeline', 'study'),
}
# Modes that quantize pretrained weights: random ones are refused at the door.
NEEDS_WEIGHTS = ('pipeline', 'generate', 'quantize', 'study')
