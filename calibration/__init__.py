"""Profiling runs of the user's training and fitting of the speedup model -> profile.yaml.

One job per module:
    calibrate     `nasalloc calibrate`: settings (`load`), then profile or import, fit, report
    profiling     real DDP runs at each k on the executor's warm-worker Launcher -> Measurements
    probe         the training-function wrapper those runs execute (GPU sync, eval/checkpoint
                  timing, gradient bytes)
    concurrent    m groups at once on the launcher's backend (the sharing slow-down)
    import_csv    Measurements from a timings CSV the user already has
    measurements  the raw-sample record both producers fill
    fit           the step-time model's fit (pinning, priors, bounds), baselines, bootstrap
    analysis      everything fitted from one Measurements
    report        profile.yaml (through sim.profile.dump_profile), speedup.png, the table
"""
