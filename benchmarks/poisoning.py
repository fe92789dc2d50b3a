"""Feedback poisoning on digits: trust curation against naive curation, through the real server.

    .venv/bin/python benchmarks/poisoning.py [--levels 0,0.05,0.1,0.2,0.3]
        [--attacks flip,targeted,sybil] [--epochs 15] [--seeds 0,1,2] [--no-gate] [--quick]

Every arm is built like the demo: a fixed held-out split (20%), a labelled slice (10% of
the rest) as dataset version 1, v1 trained and promoted; then ONE feedback cycle over
loopback HTTP: 20 honest users plus k adversaries (k so that adversaries are `level` of
the users) each `POST /v1/predict` an unlabelled image and `POST /v1/feedback` an answer.
Each image is answered by 2-4 users picked at random (3 on average), so votes can be
compared. Honest users give the true label (5% honest mistakes). Adversaries:

- flip:     a random wrong label;
- targeted: class 3 answered as 8, otherwise honest;
- sybil:    the flip answers (same slots, same labels) spread over a burst of fresh ids
            that answer 3 images each (below quarantine_min_answers).

Then `POST /v1/retrain` (polled through `GET /v1/jobs/{id}`); the challenger's held-out
accuracy and class-3 recall come from the job result. Both curations see the same traffic
and seeds; level 0 (no adversaries) is each curation's clean arm. In this curation sweep
the gate's per-class check and trusted reference are off, so that the figures are the
curation's. A second sweep runs naive curation through the default gate (per-class check,
and the trusted reference that naive curation turns on): does the gate refuse the poisoned
challengers naive curation made, and pass the clean one?
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from flywheel.data import HOLDOUT, TRAIN, ListSource, RawExample, digits_arrays, encode_png
from flywheel.project import Project
from flywheel.serving import BackgroundServer

HONEST_USERS = 20
HONEST_ERROR = 0.05
TARGET, DECOY = 3, 8
SYBIL_ANSWERS = 3
TARGET_ACC_LOSS = 1.0  # points, trust curation at 20% adversaries
TARGET_CLASS_LOSS = 3.0  # points of class-3 recall, trust curation, targeted at 20%
JOB_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Answer:
    user: str
    label: int
    adversarial: bool


@dataclass(frozen=True)
class Traffic:
    """One feedback cycle: per image (pool index), its answers in the order they are sent."""

    attack: str
    level: float
    adversaries: int  # distinct adversarial ids
    users: int  # distinct ids in all
    items: list[tuple[int, list[Answer]]]

    @property
    def answers(self) -> int:
        return sum(len(a) for _, a in self.items)

    @property
    def adversarial_answers(self) -> int:
        return sum(x.adversarial for _, a in self.items for x in a)


def split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out split (20%), labelled slice (10% of the rest), unlabelled pool."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    rest, holdout = train_test_split(idx, test_size=0.2, random_state=seed, stratify=labels)
    pool, labelled = train_test_split(rest, test_size=0.1, random_state=seed, stratify=labels[rest])
    return np.sort(holdout), np.sort(labelled), pool


def adversaries_for(level: float) -> int:
    """k adversaries so that k / (20 + k) is closest to ``level``."""
    if level <= 0:
        return 0
    return max(1, round(HONEST_USERS * level / (1.0 - level)))


def plan_traffic(
    attack: str, level: float, items: np.ndarray, labels: np.ndarray, seed: int
) -> Traffic:
    """Who answers which image with what. Honest behaviour is drawn once per seed, so it is
    the same in every arm; who answers depends only on k (shared by the three attacks)."""
    base = np.random.default_rng([seed, 1])
    n_answerers = base.integers(2, 5, size=len(items))  # 2..4, mean 3
    slip = base.random((len(items), 4)) < HONEST_ERROR  # honest mistakes per slot
    slip_label = (labels[items][:, None] + base.integers(1, 10, size=(len(items), 4))) % 10
    wrong = (labels[items][:, None] + base.integers(1, 10, size=(len(items), 4))) % 10

    k = adversaries_for(level)
    who_rng = np.random.default_rng([seed, 2, k])
    plan: list[tuple[int, list[Answer]]] = []
    for i, item in enumerate(items):
        truth = int(labels[item])
        chosen = who_rng.choice(HONEST_USERS + k, size=int(n_answerers[i]), replace=False)
        answers = []
        for j, u in enumerate(chosen):
            honest = int(slip_label[i, j]) if slip[i, j] else truth
            if u < HONEST_USERS:
                answers.append(Answer(f"user-{u:02d}", honest, False))
            elif attack == "targeted":
                said = DECOY if truth == TARGET else honest
                answers.append(Answer(f"adv-{u - HONEST_USERS:02d}", said, True))
            else:  # flip; sybil gets the same answers, re-labelled to fresh ids below
                answers.append(Answer(f"adv-{u - HONEST_USERS:02d}", int(wrong[i, j]), True))
        plan.append((int(item), answers))

    adversaries = k
    if attack == "sybil" and k:
        # The same adversarial slots, taken slot position by slot position so one id's
        # answers land on different images, each id answering SYBIL_ANSWERS of them.
        slots = sorted(
            ((j, i) for i, (_, a) in enumerate(plan) for j, x in enumerate(a) if x.adversarial),
        )
        serial, used, seen = -1, SYBIL_ANSWERS, set[int]()
        for j, i in slots:
            if used == SYBIL_ANSWERS or i in seen:
                serial, used, seen = serial + 1, 0, set()
            old = plan[i][1][j]
            plan[i][1][j] = Answer(f"sybil-{serial:03d}", old.label, True)
            used += 1
            seen.add(i)
        adversaries = serial + 1
    return Traffic(attack, level, adversaries, HONEST_USERS + adversaries, plan)


def wait_for_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["status"] in ("succeeded", "failed"):
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"retrain job {job_id} did not finish within {JOB_TIMEOUT_S} s")
        time.sleep(0.1)


def run_arm(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    holdout: np.ndarray,
    labelled: np.ndarray,
    traffic: Traffic,
    *,
    curation: str,
    default_gate: bool,
    epochs: int,
    seed: int,
) -> dict[str, Any]:
    """One project: v1 on the labelled slice, one feedback cycle over HTTP, one retrain."""
    started = time.perf_counter()
    base = [RawExample(encode_png(images[i]), str(labels[i]), split=HOLDOUT) for i in holdout]
    base += [RawExample(encode_png(images[i]), str(labels[i]), split=TRAIN) for i in labelled]
    settings: dict[str, Any] = {
        "epochs": epochs,
        "seed": seed,
        "image_size": 8,
        "curation": curation,
    }
    if not default_gate:
        # The curation's own effect: no per-class check, no trusted reference.
        settings |= {"gate_class_margin": 1.0, "gate_reference": "off"}
    project = Project.init(
        root, ListSource("digits (poisoning benchmark)", base), settings=settings
    )
    first = project.train()
    admin_key, _ = project.create_key(["admin"], name="bench-admin")
    pngs = {item: encode_png(images[item]) for item, _ in traffic.items}

    with BackgroundServer(project) as server:
        headers = {"Authorization": f"Bearer {admin_key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:

            def answer_item(entry: tuple[int, list[Answer]]) -> int:
                # One image's answers in a fixed order (curation breaks ties by recency).
                item, answers = entry
                for a in answers:
                    user = {"X-User-Id": a.user}
                    files = {"file": (f"digit-{item}.png", pngs[item], "image/png")}
                    pred = client.post("/v1/predict", files=files, headers=user)
                    pred.raise_for_status()
                    body = {"prediction_id": pred.json()["prediction_id"], "label": str(a.label)}
                    client.post("/v1/feedback", json=body, headers=user).raise_for_status()
                return len(answers)

            with ThreadPoolExecutor(4) as pool:
                sent = sum(pool.map(answer_item, traffic.items))
            job_id = client.post("/v1/retrain", json={}).raise_for_status().json()["job_id"]
            job = wait_for_job(client, job_id)
            if job["status"] != "succeeded":
                raise RuntimeError(f"retrain failed: {job.get('error')}")
            r: dict[str, Any] = job["result"]
            if r["skipped"]:
                raise RuntimeError(f"retrain skipped: {r['reason']}")
            users = client.get("/v1/users").raise_for_status().json()
            models = client.get("/v1/models").raise_for_status().json()
    project.close()

    gate = next(m["gate"] for m in models if m["version"] == r["model_version"])
    quarantined = [u for u in users if u["quarantined"]]
    refusing = sorted(
        name for name, c in gate.get("checks", {}).items() if not c["passed"] and c["refuse"]
    )
    reference = gate.get("checks", {}).get("trusted_reference", {})
    return {
        "accuracy": float(r["accuracy"]),
        "recall_3": float(r["metrics"]["per_class"][str(TARGET)]["recall"]),
        "v1_accuracy": float(first.decision.challenger_score),
        "champion_accuracy": r["champion_accuracy"],
        "promoted": bool(r["promoted"]),
        "reason": r["reason"],
        "answers_sent": sent,
        "rows_used": int(r["feedback_used"]),
        "held_back": int(r["curation"].get("quarantined", 0)),
        "capped": int(sum(r["curation"].get("capped", {}).values())),
        "quarantined_adv": sum(not u["user_id"].startswith("user-") for u in quarantined),
        "quarantined_honest": sum(u["user_id"].startswith("user-") for u in quarantined),
        "refusing_checks": refusing,
        "reference_accuracy": reference.get("reference_accuracy"),
        "reference_recall_3_drop": reference.get("recall_drop", {}).get(str(TARGET)),
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_seed(
    args: argparse.Namespace, seed: int, attacks: list[str], levels: list[float], tmp: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The curation sweep (both curations, gate checks off) and the gate sweep (naive
    curation, every gate check at its default) for one seed."""
    images, labels = digits_arrays()
    holdout, labelled, pool = split(labels, seed)
    items = np.random.default_rng([seed, 0]).permutation(pool)[: args.items]
    print(
        f"seed {seed}: {len(holdout)} held-out / {len(labelled)} labelled (v1) / {len(pool)} "
        f"pool; {len(items)} pool images answered per arm "
        f"({int((labels[items] == TARGET).sum())} of class {TARGET}); {args.epochs} epochs",
        flush=True,
    )
    t0 = time.perf_counter()
    plans = [("clean", 0.0)] + [(a, lv) for a in attacks for lv in levels if lv > 0]
    sweeps: dict[str, list[dict[str, Any]]] = {"curation": [], "gate": []}
    n = 0
    for attack, level in plans:
        traffic = plan_traffic("flip" if attack == "clean" else attack, level, items, labels, seed)
        arms = [("curation", c, False) for c in ("naive", "trust")]
        if not args.no_gate:
            arms.append(("gate", "naive", True))
        for sweep, curation, default_gate in arms:
            n += 1
            arm = run_arm(
                tmp / f"s{seed}-arm{n}",
                images,
                labels,
                holdout,
                labelled,
                traffic,
                curation=curation,
                default_gate=default_gate,
                epochs=args.epochs,
                seed=seed,
            )
            row = {
                "seed": seed,
                "attack": attack,
                "level": level,
                "curation": curation,
                "adversaries": traffic.adversaries,
                "user_share": round(traffic.adversaries / traffic.users, 4),
                "answer_share": round(traffic.adversarial_answers / traffic.answers, 4),
            } | arm
            sweeps[sweep].append(row)
            print(
                f"  [{time.perf_counter() - t0:6.0f} s] {attack:<8} {level:>4.2f} {curation:<5}"
                f"{' default gate' if default_gate else ''} acc {arm['accuracy']:.4f} "
                f"promoted {arm['promoted']} ({arm['seconds']} s)",
                flush=True,
            )
    for rows in sweeps.values():
        clean = {r["curation"]: r for r in rows if r["attack"] == "clean"}
        for r in rows:
            c = clean[r["curation"]]
            r["acc_loss_pts"] = round(100 * (c["accuracy"] - r["accuracy"]), 2)
            r["recall_3_loss_pts"] = round(100 * (c["recall_3"] - r["recall_3"]), 2)
    return sweeps["curation"], sweeps["gate"]


def print_curation(results: list[dict[str, Any]]) -> None:
    head = (
        f"{'attack':<9}{'level':>6}{'adv u/ans':>11}{'curation':>9}{'acc':>8}{'loss':>7}"
        f"{'rec3':>7}{'loss3':>7}{'rows':>6}{'held':>6}{'quar a/h':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        shares = f"{r['user_share']:.2f}/{r['answer_share']:.2f}"
        print(
            f"{r['attack']:<9}{r['level']:>6.2f}{shares:>11}{r['curation']:>9}"
            f"{r['accuracy']:>8.4f}{r['acc_loss_pts']:>7.2f}{r['recall_3']:>7.3f}"
            f"{r['recall_3_loss_pts']:>7.2f}{r['rows_used']:>6}{r['held_back']:>6}"
            f"{r['quarantined_adv']:>5}/{r['quarantined_honest']:<4}"
        )
    print(
        "loss: points of held-out accuracy below the same curation's clean arm; loss3: the "
        f"same for class-{TARGET} recall; held: answers held back from quarantined users; "
        "quar a/h: adversarial/honest users quarantined"
    )


def print_gate(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'attack':<9}{'level':>6}{'acc':>8}{'loss':>7}{'rec3':>7}{'ref acc':>9}"
        f"{'promoted':>10}  refused by"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ref = "-" if r["reference_accuracy"] is None else f"{r['reference_accuracy']:.4f}"
        print(
            f"{r['attack']:<9}{r['level']:>6.2f}{r['accuracy']:>8.4f}{r['acc_loss_pts']:>7.2f}"
            f"{r['recall_3']:>7.3f}{ref:>9}{'yes' if r['promoted'] else 'NO':>10}  "
            f"{', '.join(r['refusing_checks']) or '-'}"
        )
    print(
        "naive curation, every gate check at its default (per-class margin 0.1, trusted "
        "reference margin 0.05); ref acc: the trust-weighted reference the gate trained"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--levels", default="0,0.05,0.1,0.2,0.3", help="adversarial user shares")
    ap.add_argument("--attacks", default="flip,targeted,sybil")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", default="0", help="comma-separated; every arm runs per seed")
    ap.add_argument("--items", type=int, default=200, help="pool images answered per arm")
    ap.add_argument("--no-gate", action="store_true", help="skip the default-gate sweep")
    ap.add_argument("--quick", action="store_true", help="smoke run: levels 0 and 0.2")
    args = ap.parse_args()
    torch.set_num_threads(1)

    levels = [0.0, 0.2] if args.quick else [float(x) for x in args.levels.split(",")]
    levels = sorted(set(levels) | {0.0})
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    for a in attacks:
        if a not in ("flip", "targeted", "sybil"):
            ap.error(f"unknown attack {a!r}")
    seeds = [int(x) for x in args.seeds.split(",")]
    print(
        f"targets: at 20% adversarial users, trust curation loses <= {TARGET_ACC_LOSS:g} point "
        f"of held-out accuracy against clean feedback, and class {TARGET} (targeted) "
        f"<= {TARGET_CLASS_LOSS:g} points of recall; naive's loss reported beside it; the "
        "default gate refuses the poisoned naive challengers and passes the clean one"
    )
    t0 = time.perf_counter()
    curation_rows: list[dict[str, Any]] = []
    gate_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flywheel-poison-") as tmp:
        for seed in seeds:
            c, g = run_seed(args, seed, attacks, levels, Path(tmp))
            curation_rows += c
            gate_rows += g
            print(f"\nseed {seed}: curation sweep (gate checks off)")
            print_curation(c)
            if g:
                print(f"\nseed {seed}: naive curation through the default gate")
                print_gate(g)
    total_s = time.perf_counter() - t0

    verdicts: list[dict[str, Any]] = []
    print()
    print(
        f"targets at 20% adversarial users, mean (min..max) over seeds {seeds} "
        "(trust must meet them; naive beside it):"
    )
    for attack in attacks:
        at20 = [r for r in curation_rows if r["attack"] == attack and r["level"] == 0.2]
        checks = [("accuracy", "acc_loss_pts", TARGET_ACC_LOSS)]
        if attack == "targeted":
            checks.append((f"class-{TARGET} recall", "recall_3_loss_pts", TARGET_CLASS_LOSS))
        for name, key, limit in checks:
            t = np.array([r[key] for r in at20 if r["curation"] == "trust"])
            nv = np.array([r[key] for r in at20 if r["curation"] == "naive"])
            if not len(t):
                continue
            met = bool(t.mean() <= limit)
            verdicts.append(
                {
                    "attack": attack,
                    "figure": name,
                    "trust_loss_mean": round(float(t.mean()), 2),
                    "trust_loss": t.tolist(),
                    "naive_loss_mean": round(float(nv.mean()), 2),
                    "naive_loss": nv.tolist(),
                    "limit": limit,
                    "met": met,
                }
            )
            print(
                f"  {attack:<9}{name:<16} trust loses {t.mean():6.2f} pts "
                f"({t.min():.2f}..{t.max():.2f}; <= {limit:g}: {'MET' if met else 'NOT MET'}); "
                f"naive loses {nv.mean():6.2f} pts ({nv.min():.2f}..{nv.max():.2f})"
            )
    if gate_rows:
        poisoned = [r for r in gate_rows if r["attack"] != "clean" and r["level"] >= 0.2]
        clean = [r for r in gate_rows if r["attack"] == "clean"]
        refused = sum(not r["promoted"] for r in poisoned)
        false_refusals = sum(not r["promoted"] for r in clean)
        print(
            f"  default gate: refused {refused}/{len(poisoned)} naive challengers trained with "
            f">= 20% adversarial users; refused {false_refusals}/{len(clean)} clean ones"
        )
    print(f"total {total_s:.0f} s")
    print(
        json.dumps(
            {
                "benchmark": "poisoning",
                "seeds": seeds,
                "epochs": args.epochs,
                "items_per_arm": args.items,
                "curation_sweep": curation_rows,
                "gate_sweep": gate_rows,
                "targets": verdicts,
                "all_targets_met": bool(verdicts) and all(v["met"] for v in verdicts),
                "seconds": round(total_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
