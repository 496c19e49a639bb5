"""`nasalloc validate`: how right was the prediction? Real runs compared with their re-simulation.

Neither calibration (it measures nothing itself) nor simulation (it reads real traces), so it
sits at the end of the pipeline and depends on the rest, one way:
`validate -> calibration (refit), execute (the run's saved config), sim (engine, trace)`.
Nothing imports it but the CLI, the tests and the benchmarks.

    validate   `nasalloc validate`: read the run folders, re-simulate, report, refit the profile
    compare    the arithmetic: timings read from a trace, errors, decision agreement, Kendall tau
"""
