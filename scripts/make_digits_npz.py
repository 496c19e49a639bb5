"""Generate `execute/data/digits.npz` from scikit-learn's bundled digits data set, once.

The executor's built-in `digits` workload reads this file so that runs need no scikit-learn.
Data: the UCI "Optical Recognition of Handwritten Digits" test set as shipped by
scikit-learn (BSD-3-Clause licence; copyright the scikit-learn developers): 1797 images of
8x8 pixels with values 0..16, labels 0..9. Stored as uint8 to keep the file small.

    .venv/bin/python scripts/make_digits_npz.py
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main() -> None:
    data = load_digits()
    out = Path(__file__).resolve().parents[1] / "execute" / "data" / "digits.npz"
    np.savez_compressed(out, images=data.images.astype(np.uint8), labels=data.target.astype(np.uint8))
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(data.target)} samples)")


if __name__ == "__main__":
    main()
