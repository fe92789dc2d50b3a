"""SMS spam: flywheel's text_minilm against TF-IDF + logistic regression, on one split.

Both read the same 5,572 messages through ``TextCsvSource`` and meet on the same
stratified 80/20 split. The baseline is scikit-learn's TfidfVectorizer (word 1-2
grams, sublinear tf) and LogisticRegression (C=10). flywheel runs its TextCodec and
trains ``text_minilm`` (MiniLM sentence embedding → linear head) with ``fit``; with
the default ``--finetune-layers 0`` the encoder is frozen and runs once over the data.

    .venv/bin/python benchmarks/text_sms.py [--epochs 30] [--seed 0] [--finetune-layers 0]
        [--scrub]     # both arms on the messages scrubbed of personal data, as a project keeps them

Prints both results, their F1 ratio and the times, then one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.model_selection import train_test_split

from flywheel.data import Arrays
from flywheel.data.text import TextCodec, TextCsvSource
from flywheel.models import ModelSpec, create_model, default_hparams
from flywheel.models.text import MiniLMClassifier
from flywheel.training import EpochReport, TrainConfig, fit, predict_proba

DATA = Path(__file__).resolve().parents[1].parent / "shared/datasets/sms-spam/spam.csv"
POSITIVE = "spam"


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Spam as the positive class (label 1)."""
    return {
        "f1": round(float(f1_score(y_true, y_pred, pos_label=1)), 4),
        "precision": round(float(precision_score(y_true, y_pred, pos_label=1)), 4),
        "recall": round(float(recall_score(y_true, y_pred, pos_label=1)), 4),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
    }


def baseline(
    texts_train: list[str], y_train: np.ndarray, texts_test: list[str], y_test: np.ndarray
) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        LogisticRegression(C=10.0, max_iter=2000),
    )
    t0 = time.perf_counter()
    model.fit(texts_train, y_train)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = model.predict(texts_test)
    return {
        **_scores(y_test, pred),
        "fit_s": round(fit_s, 2),
        "predict_s": round(time.perf_counter() - t0, 2),
    }


def flywheel_minilm(
    contents_train: list[bytes],
    y_train: np.ndarray,
    contents_test: list[bytes],
    y_test: np.ndarray,
    *,
    epochs: int,
    seed: int,
    finetune_layers: int,
    learning_rate: float,
) -> dict[str, Any]:
    labels = ["ham", "spam"]
    codec = TextCodec()

    t0 = time.perf_counter()
    params = codec.infer([codec.probe(c) for c in contents_train])
    x_train = codec.decode_batch(contents_train, params)
    x_test = codec.decode_batch(contents_test, params)
    tokenize_s = time.perf_counter() - t0

    shape = (2, int(params["max_length"]))
    hparams = {**default_hparams("text_minilm", shape), "finetune_layers": finetune_layers}
    spec = ModelSpec("text_minilm", "text-classification", shape, tuple(labels), hparams, params)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = create_model(spec)
    build_s = time.perf_counter() - t0
    assert isinstance(model, MiniLMClassifier)

    # Time spent in the encoder (forward passes through MiniLM and the pooling).
    encoder_s = [0.0]
    started: list[float] = []
    model.embedder.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))

    def _stop(*_: object) -> None:
        encoder_s[0] += time.perf_counter() - started.pop()

    model.embedder.register_forward_hook(_stop)

    config = TrainConfig(
        epochs=epochs,
        batch_size=32,
        learning_rate=learning_rate,
        patience=5,
        seed=seed,
        finetune_layers=finetune_layers,
    )

    def on_epoch(r: EpochReport) -> None:
        print(
            f"  epoch {r.epoch:>2}/{r.epochs}  train loss {r.train_loss:.4f}  "
            f"val loss {r.val_loss:.4f}  val acc {r.val_metric:.4f}",
            flush=True,
        )

    t0 = time.perf_counter()
    result = fit(model, Arrays(x=x_train, y=y_train, labels=labels), config, on_epoch=on_epoch)
    fit_s = time.perf_counter() - t0
    encode_train_s = encoder_s[0]

    t0 = time.perf_counter()
    pred = predict_proba(model, x_test).argmax(1)
    predict_s = time.perf_counter() - t0
    weights = sum(v.numel() for v in model.state_dict().values())
    return {
        **_scores(y_test, pred),
        "max_length": shape[1],
        "finetune_layers": finetune_layers,
        "learning_rate": learning_rate,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "tokenize_s": round(tokenize_s, 2),
        "build_s": round(build_s, 2),
        "encode_train_s": round(encode_train_s, 2),
        "train_s": round(fit_s - encode_train_s, 2),
        "fit_s": round(fit_s, 2),
        "predict_s": round(predict_s, 2),
        "saved_parameters": weights,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-layers", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--scrub",
        action="store_true",
        help="scrub personal data from every message first (what a project does at the door)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    source = TextCsvSource(args.data, text_column="masseges", encoding="latin-1")
    examples = list(source)
    contents = [e.content for e in examples]
    if args.scrub:
        from flywheel.privacy import PiiScrubber

        scrubber = PiiScrubber()
        started = time.perf_counter()
        scrubbed = [scrubber.scrub(c.decode("utf-8")) for c in contents]
        contents = [r.text.encode("utf-8") for r in scrubbed]
        found: dict[str, int] = {}
        for r in scrubbed:
            for k, v in r.counts.items():
                found[k] = found.get(k, 0) + v
        print(
            f"scrubbed in {time.perf_counter() - started:.1f}s: "
            f"{sum(1 for r in scrubbed if r.found)} messages changed; {found}"
        )
    y = np.array([int(e.label == POSITIVE) for e in examples], dtype=np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=0.2, stratify=y, random_state=args.seed
    )
    print(
        f"{len(y)} messages ({int(y.sum())} spam); train {len(idx_train)}, test {len(idx_test)} "
        f"({int(y[idx_test].sum())} spam); {len(source.rejoined)} texts rejoined from "
        "unnamed columns"
    )

    texts = [c.decode("utf-8") for c in contents]
    base = baseline(
        [texts[i] for i in idx_train], y[idx_train], [texts[i] for i in idx_test], y[idx_test]
    )
    print(
        f"baseline  tfidf+logreg  spam F1 {base['f1']:.4f}  precision {base['precision']:.4f}  "
        f"recall {base['recall']:.4f}  accuracy {base['accuracy']:.4f}  fit {base['fit_s']:.2f}s"
    )

    print(f"flywheel  text_minilm (finetune_layers={args.finetune_layers}) ...", flush=True)
    fw = flywheel_minilm(
        [contents[i] for i in idx_train],
        y[idx_train],
        [contents[i] for i in idx_test],
        y[idx_test],
        epochs=args.epochs,
        seed=args.seed,
        finetune_layers=args.finetune_layers,
        learning_rate=args.learning_rate,
    )
    ratio = fw["f1"] / base["f1"] if base["f1"] else float("nan")
    print(
        f"flywheel  text_minilm   spam F1 {fw['f1']:.4f}  precision {fw['precision']:.4f}  "
        f"recall {fw['recall']:.4f}  accuracy {fw['accuracy']:.4f}\n"
        f"          tokenize {fw['tokenize_s']:.2f}s  encoder forward (in fit) "
        f"{fw['encode_train_s']:.1f}s  train {fw['train_s']:.1f}s  predict test "
        f"{fw['predict_s']:.1f}s  ({fw['epochs_run']} epochs, best {fw['best_epoch']}; "
        f"{fw['saved_parameters']:,} saved parameters)"
    )
    print(f"ratio     flywheel F1 / baseline F1 = {ratio:.3f}")
    print(
        json.dumps(
            {
                "benchmark": "text_sms",
                "seed": args.seed,
                "scrubbed": args.scrub,
                "n_train": len(idx_train),
                "n_test": len(idx_test),
                "baseline": base,
                "flywheel": fw,
                "f1_ratio": round(ratio, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
