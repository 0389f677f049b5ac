"""`tapefit study`'s parsing and printing, and the epoch lines' validation figures (no server:
the commands against a live one run in tests/e2e/test_studies.py)."""

from __future__ import annotations

import argparse

import pytest

from service.cli import commands
from service.cli.console import epoch_line, job_outcome
from service.cli.studies import dimension, study_lines, study_spec


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(list(argv))


def test_space_flags_are_ranges_or_choices() -> None:
    assert dimension("optimizer.learning_rate=1e-4..0.3:log") == (
        "optimizer.learning_rate", {"low": 1e-4, "high": 0.3, "log": True})
    assert dimension("epochs=1..9:step=2") == ("epochs", {"low": 1, "high": 9, "step": 2})
    assert dimension("model.layers.0.units=16,32,64") == (
        "model.layers.0.units", {"choices": [16, 32, 64]})
    assert dimension("optimizer.name=sgd,adam") == ("optimizer.name", {"choices": ["sgd", "adam"]})
    for bad in ("nopath", "x=1..", "x=1..2:cubic", "=1,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            dimension(bad)


def test_create_builds_the_study_body() -> None:
    args = parse("study", "create", "--space", "optimizer.learning_rate=1e-4..0.3:log",
                 "--space", "model.layers.0.units=16,32", "--trials", "12", "--parallel", "2",
                 "--epochs", "4", "--train-limit", "10000", "--pruner", "median")
    assert study_spec(args) == {
        "base": {"epochs": 4, "dataset": {"train_limit": 10000}, "validation_split": 0.1},
        "space": {"optimizer.learning_rate": {"low": 1e-4, "high": 0.3, "log": True},
                  "model.layers.0.units": {"choices": [16, 32]}},
        "objective": {"metric": "val_accuracy"}, "trials": 12, "parallel": 2,
        "pruner": "median",
    }


def test_show_prints_a_row_per_trial_and_the_best() -> None:
    study = {
        "id": 3, "name": "s", "state": "succeeded", "epochs_run": 5,
        "spec": {"trials": 2, "objective": {"metric": "val_accuracy", "direction": "maximize"}},
        "trials": [
            {"number": 0, "job_id": 7, "state": "succeeded", "epochs_run": 4, "value": 0.91,
             "params": {"optimizer.learning_rate": 0.01}, "error": None},
            {"number": 1, "job_id": 8, "state": "pruned", "epochs_run": 1, "value": 0.2,
             "params": {"optimizer.learning_rate": 0.3}, "error": None},
        ],
        "best": {"number": 0, "job_id": 7, "params": {"optimizer.learning_rate": 0.01},
                 "value": 0.91},
    }
    lines = study_lines(study)
    assert lines[0].startswith("study 3 's' succeeded: 2/2 trials, 5 epochs run")
    assert "pruned" in lines[3] and "0.2000" in lines[3]
    assert lines[-1].startswith("best: trial 0 (job 7) val_accuracy 0.9100")
    assert lines[-1].endswith("its model is study-3")


def test_epoch_lines_show_validation_when_there_is_some() -> None:
    epoch = {"epoch": 0, "train_loss": 0.5, "train_accuracy": 0.8, "test_loss": 0.4,
             "test_accuracy": 0.85, "seconds": 1.25, "val_loss": 0.45, "val_accuracy": 0.83}
    assert epoch_line(epoch, 2) == ("epoch 1/2  loss 0.5000  acc 80.00%  val loss 0.4500  "
                                    "val acc 83.00%  test loss 0.4000  test acc 85.00%  1.2 s")
    assert "val" not in epoch_line({**epoch, "val_loss": None, "val_accuracy": None}, 2)
    job = {"id": 4, "state": "pruned", "test_accuracy": 0.5, "progress": {"epoch": 1}}
    assert job_outcome(job) == "job 4 was pruned by its study after epoch 1: test accuracy 50.00%"
    done = {"id": 5, "state": "succeeded", "test_accuracy": 0.9, "stopped_early_at_epoch": 3}
    assert job_outcome(done) == ("job 5 succeeded (stopped early after epoch 3): test accuracy "
                                 "90.00%")


def test_submit_takes_the_training_controls() -> None:
    args = parse("submit", "--validation-split", "0.1", "--early-stopping", "val_loss:3:0.001",
                 "--restore-best", "--schedule", "step:100,200:0.1,0.05,0.01", "--clipnorm",
                 "1.5", "--optimizer", "adam")
    spec = commands.spec_from(args)
    assert spec["validation_split"] == 0.1
    assert spec["early_stopping"] == {"monitor": "val_loss", "patience": 3, "min_delta": 0.001,
                                      "restore_best_weights": True}
    assert spec["optimizer"] == {"name": "adam", "clipnorm": 1.5, "schedule": {
        "type": "step", "boundaries": [100, 200], "values": [0.1, 0.05, 0.01]}}
    assert parse("submit", "--schedule", "cosine:1000").schedule == {
        "type": "cosine", "decay_steps": 1000}
    for flag, bad in (("--schedule", "linear:5"), ("--schedule", "exponential:x:0.5"),
                      ("--early-stopping", "test_accuracy:3")):
        with pytest.raises(SystemExit):
            parse("submit", flag, bad)
