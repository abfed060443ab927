"""OuroMamba-Gen: data-free synthetic calibration images for Vision Mamba.

Pixels start as Gaussian noise and are optimised with Adam against
  L = w_C·L_C (patch contrastive loss on Δ-weighted neighbourhood-aggregated SSM states)
    + w_PSE·L_PSE (PSAQ-ViT patch-similarity entropy, ablation)
    + λ·L_O (output loss towards a balanced random target class).

Modules: spec (GenSpec: every setting), patched_state (h_p and patch features), losses,
objective (the model hook and the per-image loss), ss2d and windows (the state losses on
VMamba's SS2D and on MambaVision's windowed mixers), block_choice (which of their blocks feed
them), optimize (targets, noise, Adam, the jitted sharded step), generator (the group loop;
resumable through a GroupStore), quality (FP agreement check). Mode `generate` (files,
workdir, resume) is `ouromamba_jax.stages.generate`.
"""
