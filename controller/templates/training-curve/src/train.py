"""Stage ``train``: an incremental learner whose learning curve DVCLive records.

scikit-learn's ``SGDClassifier`` (logistic loss) is fitted with ``partial_fit``, one pass
over the shuffled training split per epoch, on scikit-learn's bundled digits data (nothing
is downloaded). After each epoch the log loss and accuracy on the training and test splits
are logged with DVCLive: one row per epoch in ``dvclive/plots/metrics/{train,test}/*.tsv``
(appended as training goes, so a live chart can follow them), the final values in
``dvclive/metrics.json``; the model goes to ``models/model.pkl``.

DVCLive is kept to writing files: ``save_dvc_exp=False`` (the service commits and pushes
the run itself; inside ``dvc repro`` DVCLive would not save an experiment anyway) and
``dvcyaml=None`` (the plots are declared in this project's ``dvc.yaml``, which DVCLive
must not rewrite). Reads ``train.*`` from ``params.yaml``. Run from the repository root:
``python src/train.py``.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import yaml
from dvclive import Live
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

MODEL = Path("models/model.pkl")


def main() -> None:
    with open("params.yaml") as handle:
        params = yaml.safe_load(handle)["train"]
    seed = int(params["seed"])
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data,
        digits.target,
        test_size=float(params["test_size"]),
        random_state=seed,
        stratify=digits.target,
    )
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    classes = np.unique(digits.target)
    model = SGDClassifier(
        loss="log_loss",
        alpha=float(params["alpha"]),
        learning_rate="constant",
        eta0=float(params["learning_rate"]),
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    with Live(dir="dvclive", save_dvc_exp=False, dvcyaml=None) as live:
        for epoch in range(int(params["epochs"])):
            # One pass of SGD over the training split, in a new order each epoch.
            order = rng.permutation(len(y_train))
            model.partial_fit(x_train[order], y_train[order], classes=classes)
            for split, features, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
                probabilities = model.predict_proba(features)
                loss = log_loss(labels, probabilities, labels=classes)
                accuracy = accuracy_score(labels, classes[probabilities.argmax(axis=1)])
                live.log_metric(f"{split}/loss", round(float(loss), 6))
                live.log_metric(f"{split}/accuracy", round(float(accuracy), 6))
            print(f"epoch {epoch + 1}: test accuracy {accuracy:.4f}, test loss {loss:.4f}")
            live.next_step()
            # A pause, so that a live chart has a curve to draw while the run runs.
            time.sleep(float(params["epoch_pause_seconds"]))
    MODEL.parent.mkdir(parents=True, exist_ok=True)
    with MODEL.open("wb") as handle:
        pickle.dump({"scaler": scaler, "classifier": model}, handle)


if __name__ == "__main__":
    main()
