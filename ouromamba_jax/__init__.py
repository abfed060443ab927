"""ouromamba_jax: data-free post-training quantization of Vision Mamba (OuroMamba) in JAX.

The public API (imported lazily: `import ouromamba_jax` is cheap):

  model = build_model('vim_t_cifar10')
  params = load_checkpoint('bundled', model)                 # or an official .pth / .safetensors
  images = generate(model, params, GenSpec(...), seed=0).images
  qparams, report = quantize(model, params, images, 'w4a4')  # QuantSpec or preset name
  save_quantized('ckpt', qparams, model, report); qparams, _ = load_quantized('ckpt', model)
  evaluate(model, qparams, test_images, test_labels)         # {'top1', 'top5', 'images'}
  fast = prepared_for_inference(model, qparams, batch=1)     # a tree for jitted apply at batch 1

The command-line modes (workdirs, resume, reports) are `ouromamba_jax.stages`.
"""
import importlib

_EXPORTS = {
    'build_model': 'ouromamba_jax.models.registry',
    'load_checkpoint': 'ouromamba_jax.checkpoints',
    'save_checkpoint': 'ouromamba_jax.checkpoints',
    'GenSpec': 'ouromamba_jax.gen.spec',
    'generate': 'ouromamba_jax.gen.generator',
    'QuantSpec': 'ouromamba_jax.quant.config',
    'QuantRunSpec': 'ouromamba_jax.quant.run_spec',
    'PRESETS': 'ouromamba_jax.quant.presets',
    'preset': 'ouromamba_jax.quant.presets',
    'quantize': 'ouromamba_jax.quant.api',
    'to_integer': 'ouromamba_jax.quant.api',
    'fold_parameter_sites': 'ouromamba_jax.quant.fold',
    'save_quantized': 'ouromamba_jax.quantized_checkpoints',
    'load_quantized': 'ouromamba_jax.quantized_checkpoints',
    'evaluate': 'ouromamba_jax.evaluation',
    'prepared_for_inference': 'ouromamba_jax.inference',
    'normalize': 'ouromamba_jax.data.normalization',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module = importlib.import_module(_EXPORTS[name])
  return getattr(module, name)
