"""nasalloc: how many GPUs should each trial of an early-stopping search get?

This package is the command-line dispatcher only; the work lives in `nasalloc.sim`,
`nasalloc.execute`, `nasalloc.calibration` and `nasalloc.validate`.
"""

__version__ = "0.1.0"
