"""Built-in training functions (for `train.entrypoint`), shared with calibration.

- `digits`: a small CNN on scikit-learn's 8x8 digits (shipped as execute/data/digits.npz).
- `mnist1d`: an MLP on MNIST-1D-style sequences generated deterministically in code.
- `synthetic`: a compute-heavy MLP on random tensors, for timing (GPU or tiny on CPU).
- `toy`: no learning, a closed-form curve plus fault knobs (crash, hang, silence) for tests
  and for measuring the executor's own overhead.
"""
