"""The CLI end to end on a tiny project: init, train, evaluate, models, promote, rollback, keys."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flywheel import Project
from flywheel.cli import app, main
from flywheel.errors import AuthError
from tests.factories import make_project, write_class_folders

runner = CliRunner()


def run(*args: str) -> dict | list:
    r = runner.invoke(app, list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_init_train_models_evaluate_promote_rollback(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    rng = np.random.default_rng(0)
    folders = write_class_folders(
        tmp_path / "data",
        {
            "dark": [rng.integers(0, 90, (12, 12, 3), dtype=np.uint8) for _ in range(12)],
            "light": [rng.integers(160, 256, (12, 12, 3), dtype=np.uint8) for _ in range(12)],
        },
    )
    (folders / "dark" / "broken.png").write_bytes(b"not a png")
    out = run("init", str(root), "--data", str(folders), "--json")
    assert out["dataset"]["labels"] == ["dark", "light"]
    assert out["dataset"]["n_train"] + out["dataset"]["n_holdout"] == 24
    assert out["dataset"]["skipped"] == [
        {"path": "dark/broken.png", "reason": out["dataset"]["skipped"][0]["reason"]}
    ]
    assert out["dataset"]["skipped"][0]["reason"].startswith("the file is not a readable image")

    t1 = run("train", "--project", str(root), "--epochs", "2", "--json")
    assert (t1["model_version"], t1["promoted"]) == (1, True)
    t2 = run("train", "--project", str(root), "--epochs", "2", "--seed", "3", "--json")
    assert t2["model_version"] == 2
    assert t2["champion_version"] == 1

    models = run("models", "--project", str(root), "--json")
    assert [m["version"] for m in models] == [1, 2]
    assert models[1]["parent"] == 1
    assert models[1]["training_config"]["seed"] == 3

    report = run("evaluate", "1", "--project", str(root), "--json")
    assert report["model_version"] == 1
    assert report["labels"] == ["dark", "light"]
    assert np.array(report["confusion_matrix"]).sum() == report["n"]

    r = runner.invoke(app, ["promote", "2", "--project", str(root)])
    assert r.exit_code == 0, r.output
    assert "production → v2" in r.stdout
    r = runner.invoke(app, ["rollback", "--project", str(root)])
    assert r.exit_code == 0, r.output
    assert Project.open(root).production_version() == 1


def test_keys_create_shows_the_key_once_and_stores_its_hash(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", train=False)
    root = str(project.settings.project_dir)
    out = run(
        "keys", "create", "--scope", "predict", "--scope", "feedback", "--project", root, "--json"
    )
    assert out["scopes"] == ["feedback", "predict"]
    assert out["key"].startswith(f"fw_{out['prefix']}_")
    listed = run("keys", "list", "--project", root, "--json")
    assert [k["prefix"] for k in listed] == [out["prefix"]]
    assert out["key"] not in json.dumps(listed)
    project.authenticate(out["key"], "feedback")
    # One that expires, and revoking by prefix: refused from then on.
    temp = run("keys", "create", "--scope", "admin", "--expires-days", "7", "-p", root, "--json")
    assert temp["expires_at"] is not None and temp["status"] == "live"
    gone = run("keys", "revoke", out["prefix"], "--project", root, "--json")
    assert gone["status"] == "revoked"
    with pytest.raises(AuthError, match="revoked"):
        project.authenticate(out["key"], "feedback")
    listed = run("keys", "list", "--project", root, "--json")
    assert [k["status"] for k in listed] == ["revoked", "live"]


WRONG_INPUTS = [
    # (what a newcomer typed, what the one line must say, the environment, flywheel.toml)
    (["train", "--project", "{missing}"], "no flywheel project in", {}, ""),
    (["init", "{tmp}/x", "--data", "{tmp}/nowhere"], "does not exist (expected", {}, ""),
    (["init", "{tmp}/y"], "--data is required: the built-in 'digits' or 'diabetes'", {}, ""),
    (["trian"], "No such command 'trian'. Did you mean 'train'", {}, ""),
    (["train", "--epoch", "3", "-p", "{proj}"], "No such option '--epoch'", {}, ""),
    (["train", "--epochs", "abc", "-p", "{proj}"], "'abc' is not a valid integer", {}, ""),
    (["train", "--arch", "cnn23", "-p", "{proj}"], "did you mean 'cnn32'?", {}, ""),
    (["train", "--arch", "foo", "-p", "{proj}"], "unknown architecture 'foo'", {}, ""),
    (
        ["train", "-p", "{proj}"],
        "from the environment variable FLYWHEEL_EPOCHS",
        {"FLYWHEEL_EPOCHS": "x"},
        "",
    ),
    (["train", "-p", "{proj}"], "unknown setting 'epochz' in", {}, "epochz = 3\n"),
    (["train", "-p", "{proj}"], "gate_margin = 1.5 (in ", {}, "gate_margin = 1.5\n"),
    (["serve", "-p", "{proj}", "--port", "{busy}"], "the port is in use", {}, ""),
    (["keys", "create", "--scope", "root", "--project", "{proj}"], "scopes must be among", {}, ""),
    (["promote", "42", "--project", "{proj}"], "model version 42 not found", {}, ""),
    (["rollback", "--project", "{proj}"], "no production model to roll back", {}, ""),
    (["keys", "revoke", "nobody", "--project", "{proj}"], "API key 'nobody' not found", {}, ""),
]


@pytest.mark.parametrize(("args", "message", "env", "toml"), WRONG_INPUTS)
def test_errors_are_one_clear_line_and_exit_1(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
    env: dict[str, str],
    toml: str,
) -> None:
    proj = make_project(tmp_path / "proj", train=False)
    if toml:
        with (proj.settings.project_dir / "flywheel.toml").open("a") as f:
            f.write(toml)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        fill = {
            "missing": str(tmp_path / "missing"),
            "tmp": str(tmp_path),
            "proj": str(proj.settings.project_dir),
            "busy": str(busy.getsockname()[1]),
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr("sys.argv", ["flywheel", *(a.format(**fill) for a in args)])
        with pytest.raises(SystemExit) as exc:
            main()
    assert exc.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # serve says where it is starting before it fails: the error is the one line after
    errors = [line for line in lines if not line.startswith("starting ")]
    assert len(errors) == 1, lines
    assert errors[0].startswith("error: ") and message in errors[0], errors[0]


def test_failed_init_leaves_nothing_behind(tmp_path: Path) -> None:
    folders = write_class_folders(
        tmp_path / "data",
        {"a": [np.zeros((8, 8), np.uint8)], "b": [np.full((8, 8), 255, np.uint8)]},
    )
    for f in folders.rglob("*.png"):
        f.write_bytes(b"corrupt")
    r = runner.invoke(app, ["init", str(tmp_path / "p"), "--data", str(folders)])
    assert r.exit_code != 0
    assert not (tmp_path / "p").exists()


def test_data_report_and_evaluate_on_outside_data(tmp_path: Path) -> None:
    from flywheel.data import digits_arrays

    images, labels = digits_arrays()
    by_class = {str(d): [images[i] for i in range(600) if labels[i] == d][:12] for d in range(3)}
    by_class["0"].append(by_class["0"][0])  # an exact duplicate
    folders = write_class_folders(tmp_path / "data", by_class)
    (folders / "1" / "clash.png").write_bytes((folders / "2" / "0.png").read_bytes())
    root = str(tmp_path / "p")
    out = run("init", root, "--data", str(folders), "--json")
    cleaning = out["dataset"]["cleaning"]
    assert cleaning["exact_duplicates"]["count"] == 1
    assert cleaning["conflicting_labels"]["count"] == 1
    assert sorted(cleaning["conflicting_labels"]["items"][0]["paths"]) == [
        "1/clash.png",
        "2/0.png",
    ]
    # 38 files: 36 distinct digits, a copy of one (kept once), and a copy of a class-2 digit
    # filed under class 1 (both copies dropped): 35 kept.
    assert cleaning["kept"] == 35
    assert cleaning["total"] == 38

    report = run("data", "report", "--project", root, "--json")
    assert report["cleaning"] == cleaning
    r = runner.invoke(app, ["data", "report", "--project", root])
    assert r.exit_code == 0
    assert "conflicting labels" in r.stdout

    run("train", "--project", root, "--epochs", "2", "--image-size", "8", "--json")
    outside = write_class_folders(
        tmp_path / "outside",
        {str(d): [images[i] for i in range(1000, 1300) if labels[i] == d][:5] for d in range(3)},
    )
    ev = run("evaluate", "--project", root, "--data", str(outside), "--json")
    assert ev["n"] == 15
    assert ev["data"] == str(outside.resolve())
    assert ev["labels"] == ["0", "1", "2"]


def test_private_training_ledger_forget_and_key_rotation_from_the_cli(tmp_path: Path) -> None:
    pytest.importorskip("opacus")
    from flywheel.data import digits_arrays
    from tests.factories import digit_png

    project = make_project(tmp_path / "p", settings={"max_user_share": 1.0})
    root = str(project.settings.project_dir)
    labels = digits_arrays()[1]
    for user, span in (("theo", range(300, 312)), ("ann", range(312, 320))):
        for i in span:
            p = project.predict(digit_png(i), user_id=user)
            project.record_feedback(p.prediction_id, label=str(labels[i]), user_id=user)
    project.curate()
    t = run("train", "-p", root, "--dp-epsilon", "2", "--dp-delta", "1e-6", "--json")
    priv = t["metrics"]["privacy"]
    assert priv["epsilon"] == pytest.approx(2.0, abs=0.05) and priv["delta"] == 1e-6
    assert priv["users_charged"] == 2
    ledger = run("privacy", "ledger", "theo", "-p", root, "--json")
    assert ledger["user_id"] == project.pseudonym("theo")
    assert ledger["epsilon"] == pytest.approx(priv["epsilon"])
    table = runner.invoke(app, ["privacy", "ledger", "-p", root])
    assert table.exit_code == 0 and "privacy ledger" in table.stdout

    refused = runner.invoke(app, ["forget", "theo", "-p", root], input="n\n")
    assert refused.exit_code == 1  # asked, and nothing was done
    assert run("privacy", "ledger", "theo", "-p", root, "--json")["epsilon"] > 0
    gone = run("forget", "theo", "--yes", "--no-retrain", "-p", root, "--json")
    assert gone["erased"]["predictions"] == 12
    assert t["model_version"] in gone["versions_affected"]
    audit = run("privacy", "audit", "-p", root, "--json")
    assert [a["action"] for a in audit] == ["forget"]

    before = Project.open(root).pseudonym("ann")
    rotated = run("privacy", "rotate-key", "-p", root, "--json")
    assert rotated["users"] == 1 and rotated["keys"] == 2
    assert Project.open(root).pseudonym("ann") != before
    kept = run("privacy", "retention", "--days", "0", "-p", root, "--json")
    assert kept["predictions"] == 8 and kept["kept_for_training"] == 8


def test_retrain_takes_the_training_options_train_takes(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    root = str(project.settings.project_dir)
    from flywheel.data import digits_arrays, encode_png

    images, labels = digits_arrays()
    for i in range(1000, 1030):
        r = project.predict(encode_png(images[i]))
        project.record_feedback(r.prediction_id, label=str(labels[i]), user_id="ann")
    project.close()
    out = run("retrain", "-p", root, "--epochs", "2", "--cold-start", "--no-refit", "--json")
    assert out["skipped"] is False and out["feedback_used"] > 0
    config = Project.open(root).version_info(out["model_version"]).training_config
    assert (config["epochs"], config["warm_start"], config["refit"]) == (2, False, False)
    # every training option of train is one of retrain's, with its help
    helps = {
        c: runner.invoke(app, [c, "--help"], env={"COLUMNS": "200"}).stdout
        for c in ("train", "retrain")
    }
    for option in ("--epochs", "--lr", "--patience", "--refit", "--dp-epsilon", "--federated"):
        assert option in helps["train"] and option in helps["retrain"]
    assert "[default: 30; setting epochs]" in helps["retrain"]


def test_tables_at_80_columns_never_cut_a_version_alias_or_class_name(tmp_path: Path) -> None:
    """CliRunner's console is 80 columns wide, a newcomer's default terminal."""
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
             "ship", "truck"]  # fmt: skip
    folders = write_class_folders(
        tmp_path / "data",
        {n: [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(5)] for n in names},
    )
    root = str(tmp_path / "p")
    run("init", root, "--data", str(folders), "--json")
    run("train", "-p", root, "--epochs", "1", "--no-refit", "--json")
    r = runner.invoke(app, ["models", "-p", root])
    assert r.exit_code == 0, r.output
    assert "production" in r.stdout and "candidate" in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    r = runner.invoke(app, ["evaluate", "-p", root])
    assert r.exit_code == 0, r.output
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    words = set(r.stdout.replace("│", " ").split())
    assert set(names) <= words, set(names) - words  # each name whole, on one line
    assert "by row number" in " ".join(
        r.stdout.split()
    )  # ten long names do not fit as column heads


def test_cli_train_and_retrain_are_jobs_listed_with_their_epochs(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", train=False)
    root = str(project.settings.project_dir)
    project.close()
    run("train", "-p", root, "--epochs", "2", "--json")
    r = runner.invoke(app, ["train", "-p", root, "--arch", "nope"])
    assert r.exit_code == 1
    jobs = run("jobs", "-p", root, "--json")["jobs"]
    failed, done = jobs[0], jobs[1]  # newest first
    assert (done["kind"], done["trigger"], done["status"]) == ("train", "manual", "succeeded")
    assert done["params"] == {"epochs": 2, "resume": False}
    steps = [line for line in done["log"] if line.startswith(("epoch ", "refit "))]
    assert steps[0].startswith("epoch 1/2: loss ") and steps[1].startswith("epoch 2/2: loss ")
    assert any(line.startswith("refit 1/") for line in steps)
    assert "the gate: scoring challenger and champion on the same rows" in done["log"]
    assert done["result"]["model_version"] == 1
    assert failed["status"] == "failed" and "unknown architecture 'nope'" in failed["error"]


def test_every_option_of_every_command_has_help() -> None:
    import click
    import typer.main

    def commands(c: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        if isinstance(c, click.Group):
            for name, sub in c.commands.items():
                yield from commands(sub, f"{path} {name}")
        else:
            yield path, c

    bare = [
        f"{path} {p.opts[0]}"
        for path, c in commands(typer.main.get_command(app), "flywheel")
        for p in c.params
        if isinstance(p, click.Option) and not p.help and p.name != "help"
    ]
    assert bare == []
