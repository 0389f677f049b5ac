"""`tapefit study create|show|cancel`: hyperparameter searches, as a client of the API.

    tapefit study create --space 'optimizer.learning_rate=1e-4..0.3:log' \\
        --space 'model.layers.0.units=16,32,64' --trials 12 --parallel 2 --follow
    tapefit study show 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from service.cli.client import Client

OK, FAILED = 0, 1
POLL_S = 1.0


def _scalar(text: str) -> Any:
    """A value as JSON reads it (16, 0.1, 1e-4, true, null), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def dimension(text: str) -> tuple[str, dict[str, Any]]:
    """'PATH=LOW..HIGH[:log|:step=S]' (a range) or 'PATH=A,B,C' (choices)."""
    path, sep, values = text.partition("=")
    if not sep or not path or not values:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not PATH=LOW..HIGH[:log|:step=S] or PATH=A,B,C")
    if ".." in values:
        bounds, *options = values.split(":")
        low, _, high = bounds.partition("..")
        spec: dict[str, Any] = {"low": _scalar(low), "high": _scalar(high)}
        for option in options:
            if option == "log":
                spec["log"] = True
            elif option.startswith("step="):
                spec["step"] = _scalar(option.removeprefix("step="))
            else:
                raise argparse.ArgumentTypeError(
                    f"'{option}' in '{text}': a range takes :log or :step=S")
        if not all(isinstance(spec[k], int | float) for k in ("low", "high")):
            raise argparse.ArgumentTypeError(f"'{values}' in '{text}' is not LOW..HIGH")
        return path, spec
    return path, {"choices": [_scalar(value) for value in values.split(",")]}


def base_spec(text: str) -> dict[str, Any]:
    """--base: a job spec as JSON, or @FILE holding one."""
    try:
        if text.startswith("@"):
            with open(text[1:], encoding="utf-8") as file:
                text = file.read()
        spec = json.loads(text)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--base: {exc}") from None
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError("--base must be a JSON object (a job spec)")
    return spec


def add_parsers(commands: argparse._SubParsersAction) -> None:  # noqa: SLF001 (argparse's type)
    """Add `tapefit study` and its actions."""
    study = commands.add_parser("study", help="hyperparameter searches: create, show, cancel")
    actions = study.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="start a study whose trials are jobs")
    create.add_argument("--space", type=dimension, action="append", required=True,
                        metavar="PATH=LOW..HIGH[:log]|PATH=A,B,C",
                        help="a dotted path into the job spec and its range or choices "
                        "(repeat for each)")
    create.add_argument("--base", type=base_spec, metavar="JSON|@FILE",
                        help="the trials' job spec (default: the server's defaults)")
    create.add_argument("--epochs", type=int, metavar="N", help="in the base spec")
    create.add_argument("--train-limit", type=int, metavar="N", help="in the base spec")
    create.add_argument("--validation-split", type=float, metavar="F",
                        help="in the base spec (default 0.1: the objective is on validation)")
    create.add_argument("--metric", default="val_accuracy",
                        choices=["val_accuracy", "val_loss", "train_accuracy", "train_loss"])
    create.add_argument("--direction", choices=["maximize", "minimize"])
    create.add_argument("--sampler", choices=["tpe", "random", "grid"])
    create.add_argument("--pruner", choices=["asha", "median", "none"])
    create.add_argument("--trials", type=int, metavar="N", default=10)
    create.add_argument("--parallel", type=int, metavar="P", default=1)
    create.add_argument("--seed", type=int, metavar="N")
    create.add_argument("--name")
    create.add_argument("--follow", action="store_true", help="then watch it until it ends")
    create.add_argument("--json", action="store_true", help="print the API's JSON")
    show = actions.add_parser("show", help="a study's trials and its best")
    show.add_argument("study", metavar="ID")
    show.add_argument("--json", action="store_true", help="print the API's JSON")
    cancel = actions.add_parser("cancel", help="stop a study and its unfinished trials")
    cancel.add_argument("study", metavar="ID")


def study_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /studies body the flags give."""
    base = dict(args.base or {})
    if args.epochs is not None:
        base["epochs"] = args.epochs
    if args.train_limit is not None:
        base["dataset"] = {**base.get("dataset", {}), "train_limit": args.train_limit}
    if args.validation_split is not None:
        base["validation_split"] = args.validation_split
    elif args.metric.startswith("val_"):
        base.setdefault("validation_split", 0.1)
    body: dict[str, Any] = {"base": base, "space": dict(args.space),
                            "objective": {"metric": args.metric}, "trials": args.trials,
                            "parallel": args.parallel}
    if args.direction:
        body["objective"]["direction"] = args.direction
    for key in ("sampler", "pruner", "seed", "name"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    return body


def run(client: Client, args: argparse.Namespace) -> int:
    """Run `tapefit study ACTION`."""
    if args.action == "create":
        study = client.create_study(study_spec(args))
        if args.json and not args.follow:
            print(json.dumps(study, indent=2))
            return OK
        print(f"study {study['id']} '{study['name']}': {study['spec']['trials']} trials, "
              f"{study['spec']['parallel']} at a time; watch it with: tapefit study show "
              f"{study['id']}")
        return follow(client, study) if args.follow else OK
    if args.action == "cancel":
        study = client.cancel_study(args.study)
        print(f"study {study['id']} cancelled")
        return OK
    study = client.study(args.study)
    if args.json:
        print(json.dumps(study, indent=2))
    else:
        print("\n".join(study_lines(study)))
    return OK


def _params(params: dict[str, Any]) -> str:
    return "  ".join(f"{path.rsplit('.', 1)[-1] if path.count('.') < 2 else path}="
                     f"{value:.4g}" if isinstance(value, float) else f"{path}={value}"
                     for path, value in params.items())


def _value(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def study_lines(study: dict[str, Any]) -> list[str]:
    """`tapefit study show`: the study, a row per trial, its best."""
    metric = study["spec"]["objective"]["metric"]
    lines = [f"study {study['id']} '{study['name']}' {study['state']}: "
             f"{len(study['trials'])}/{study['spec']['trials']} trials, "
             f"{study['epochs_run']} epochs run, {metric} "
             f"({study['spec']['objective']['direction']})",
             f"{'TRIAL':>5}  {'JOB':>5}  {'STATE':<10} {'EPOCHS':>6}  {'VALUE':>8}  PARAMS"]
    for trial in study["trials"]:
        lines.append(f"{trial['number']:>5}  {trial['job_id'] or '—':>5}  {trial['state']:<10} "
                     f"{trial['epochs_run']:>6}  {_value(trial['value']):>8}  "
                     f"{_params(trial['params'])}")
    best = study["best"]
    if best:
        lines.append(f"best: trial {best['number']} (job {best['job_id']}) {metric} "
                     f"{best['value']:.4f}: {_params(best['params'])}; its model is "
                     f"study-{study['id']}")
    return lines


def follow(client: Client, study: dict[str, Any]) -> int:
    """Print each trial's start, epochs and end until the study ends; 0 when it found a best."""
    metric = study["spec"]["objective"]["metric"]
    seen: dict[int, tuple[str, int]] = {}
    best = None
    try:
        while True:
            for trial in study["trials"]:
                before = seen.get(trial["number"])
                now = (trial["state"], trial["epochs_run"])
                if before != now:
                    print(_trial_line(trial, metric, started=before is None))
                    seen[trial["number"]] = now
            if study["best"] != best and study["best"] is not None:
                best = study["best"]
                print(f"  best so far: trial {best['number']} {metric} {best['value']:.4f}")
            if study["state"] != "running":
                break
            time.sleep(POLL_S)
            study = client.study(study["id"])
    except KeyboardInterrupt:
        print(f"stopped following study {study['id']}; it goes on (tapefit study cancel "
              f"{study['id']} stops it)", file=sys.stderr)
        return 130
    print("\n".join(study_lines(study)))
    return OK if study["state"] == "succeeded" and study["best"] else FAILED


def _trial_line(trial: dict[str, Any], metric: str, *, started: bool) -> str:
    head = f"trial {trial['number']} (job {trial['job_id'] or '—'})"
    if started and trial["state"] in ("queued", "running"):
        return f"{head} {trial['state']}: {_params(trial['params'])}"
    if trial["state"] in ("queued", "running"):
        return f"{head} epoch {trial['epochs_run']} done"
    return (f"{head} {trial['state']} after {trial['epochs_run']} epochs: {metric} "
            f"{_value(trial['value'])}" + (f" ({trial['error']})" if trial["error"] else ""))
