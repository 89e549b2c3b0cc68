#!/usr/bin/env python3
"""digits (8x8, tools/data/digits.csv) upsampled bilinearly to 28x28: a 28x28 image task for the
large CNN of the benchmarks (`cnn:1x28x28-c16k5-m2-c32k5-m2-f64-10`).

Usage: digits28.py OUT.csv
"""
import os
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DIGITS = os.path.join(ROOT, "tools", "data", "digits.csv")


def write(path, source=DIGITS):
    data = np.loadtxt(source, delimiter=",", skiprows=1, dtype=np.float32)
    x, y = data[:, :-1], data[:, -1].astype(int)
    grid = np.linspace(0, 7, 28)
    i0 = np.floor(grid).astype(int)
    i1 = np.minimum(i0 + 1, 7)
    t = (grid - i0).astype(np.float32)
    img = x.reshape(-1, 8, 8)
    rows = img[:, i0, :] * (1 - t)[None, :, None] + img[:, i1, :] * t[None, :, None]
    up = rows[:, :, i0] * (1 - t)[None, None, :] + rows[:, :, i1] * t[None, None, :]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(",".join(f"p{i}" for i in range(784)) + ",label\n")
        for r, label in zip(up.reshape(len(x), -1), y):
            f.write(",".join(f"{v:.3f}" for v in r) + f",{label}\n")
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    write(sys.argv[1])
