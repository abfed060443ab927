"""Vision Mamba (Vim, VMamba, MambaVision) models and the variant registry."""
from ouromamba_jax.models.registry import build_model
