"""Stage ``train``: fit a scaled logistic regression on ``data/prepared/train.csv``.

Reads ``train.C`` and ``train.max_iter`` from ``params.yaml``; writes the fitted
scikit-learn pipeline (standard scaling, then logistic regression) to ``models/model.pkl``.
Run from the repository root: ``python src/train.py``.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

TRAIN_CSV = Path("data/prepared/train.csv")
MODEL = Path("models/model.pkl")


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a CSV written by ``prepare.py`` (last column: ``target``)."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    features = np.array([[float(value) for value in row[:-1]] for row in rows])
    return features, np.array([row[-1] for row in rows])


def main() -> None:
    with open("params.yaml") as handle:
        params = yaml.safe_load(handle)["train"]
    features, labels = read_split(TRAIN_CSV)
    classifier = LogisticRegression(C=float(params["C"]), max_iter=int(params["max_iter"]))
    model = Pipeline([("scale", StandardScaler()), ("classify", classifier)])
    model.fit(features, labels)
    MODEL.parent.mkdir(parents=True, exist_ok=True)
    with MODEL.open("wb") as handle:
        pickle.dump(model, handle)
    print(f"train: fitted on {len(labels)} rows, C={params['C']}")


if __name__ == "__main__":
    main()
