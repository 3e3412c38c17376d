"""Stage ``prepare``: split scikit-learn's bundled wine data into train and test CSV files.

Reads ``prepare.test_size`` and ``prepare.seed`` from ``params.yaml``; writes
``data/prepared/train.csv`` and ``data/prepared/test.csv`` with the 13 feature columns and
``target`` (the class name). The data set ships inside scikit-learn: nothing is downloaded.
Run from the repository root: ``python src/prepare.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split

OUT_DIR = Path("data/prepared")


def write_split(path: Path, header: list[str], features: np.ndarray, labels: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*header, "target"])
        for row, label in zip(features, labels, strict=True):
            writer.writerow([*(repr(float(value)) for value in row), label])


def main() -> None:
    with open("params.yaml") as handle:
        params = yaml.safe_load(handle)["prepare"]
    wine = load_wine()
    names = [str(wine.target_names[index]) for index in wine.target]
    x_train, x_test, y_train, y_test = train_test_split(
        wine.data,
        names,
        test_size=float(params["test_size"]),
        random_state=int(params["seed"]),
        stratify=names,
    )
    write_split(OUT_DIR / "train.csv", list(wine.feature_names), x_train, y_train)
    write_split(OUT_DIR / "test.csv", list(wine.feature_names), x_test, y_test)
    print(f"prepare: {len(y_train)} train rows, {len(y_test)} test rows")


if __name__ == "__main__":
    main()
