"""Stage ``evaluate``: score ``models/model.pkl`` on ``data/prepared/test.csv``.

Writes ``metrics.json`` (``accuracy``, ``f1_macro``, ``n_test``) and ``plots/confusion.csv``
(one ``actual,predicted`` row per test sample, class names), which ``dvc plots`` renders
with its ``confusion`` template. Run from the repository root: ``python src/evaluate.py``.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

TEST_CSV = Path("data/prepared/test.csv")
MODEL = Path("models/model.pkl")
METRICS = Path("metrics.json")
CONFUSION = Path("plots/confusion.csv")


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a CSV written by ``prepare.py`` (last column: ``target``)."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    features = np.array([[float(value) for value in row[:-1]] for row in rows])
    return features, np.array([row[-1] for row in rows])


def main() -> None:
    features, actual = read_split(TEST_CSV)
    with MODEL.open("rb") as handle:
        model = pickle.load(handle)  # noqa: S301 - our own artefact, made by train.py
    predicted = model.predict(features)
    metrics = {
        "accuracy": round(float(accuracy_score(actual, predicted)), 6),
        "f1_macro": round(float(f1_score(actual, predicted, average="macro")), 6),
        "n_test": len(actual),
    }
    METRICS.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    CONFUSION.parent.mkdir(parents=True, exist_ok=True)
    with CONFUSION.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["actual", "predicted"])
        writer.writerows(zip(actual, predicted, strict=True))
    print(f"evaluate: {json.dumps(metrics, sort_keys=True)}")


if __name__ == "__main__":
    main()
