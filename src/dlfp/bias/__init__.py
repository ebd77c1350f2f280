"""Bias library: where the skin is (mask), skin tone from pixels (skin), FFHQ labels (labels), one face's
tone and shift (faces), per-group statistics (stats), the per-group analysis and its documents (analysis), and
the JPEG strips of the page (gallery).

See ../shared/docs/bias-method.md. The `bias` stage (dlfp.stages.bias) wires these modules; import names from
the modules themselves. Nothing here imports dlfp.stages.
"""
