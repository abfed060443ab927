"""Reports written into the workdir, one job per module.

- `layer_error`: per-layer SQNR and cosine of every quantized Linear (quantized vs FP outputs).
- `outliers`:    outlier rate per time step and block of the dynamic-outlier quantizers.
- `heatmap`:     a small PNG heatmap renderer (pillow only).
- `curves`:      loss curves as a PNG, one panel per curve (pillow only).
- `accuracy`:    the accuracy table (Markdown + JSON).
- `capture`:     the inputs and outputs of every Linear, piece by piece of the forward (for
                 `layer_error` and `outliers`).
"""
