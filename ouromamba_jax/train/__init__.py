"""Training (or fine-tuning) Vision Mamba on labelled images: the testbed recipe."""
