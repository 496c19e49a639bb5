"""The model of a search: schedulers, workload curves, speedup model, cluster, simpy engine, trace.

Nothing in here imports `nasalloc.execute`, `nasalloc.calibration` or `nasalloc.validate`: the real
executor, the calibration and the validation build on these pieces, never the other way round
(`tests/test_packaging.py` checks every import).
"""
