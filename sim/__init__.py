"""The model of a search: schedulers, workload curves, speedup model, cluster, simpy engine, trace.

Nothing in here imports `nasalloc.execute` or `nasalloc.calibration`: the real executor and the
calibration build on these pieces, never the other way round.
"""
