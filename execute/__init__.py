"""Real runs: device pool, DDP trial launcher, training API, checkpoints, journal."""
