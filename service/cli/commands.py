"""The `tapefit` client commands: submit, jobs, status, follow, cancel, predict.

They talk HTTP to a running server (TAPEFIT_URL, default http://127.0.0.1:8000) and send
TAPEFIT_API_TOKEN as a Bearer token when it is set. Exit codes: 0 success; 1 the job failed
or was cancelled, or the server refused the request; 2 a wrong argument; 3 no server.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.cli.client import ApiError, Client
from service.cli.console import ProgressView, job_outcome, jobs_table, status_lines
from service.schemas import FINAL_STATES, Activation, Implementation, JobState, OptimizerName

COMMANDS = ("submit", "jobs", "status", "follow", "cancel", "predict")
OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3


def layers(text: str) -> list[dict[str, Any]]:
    """'512,10' or '256:tanh,10:softmax': units, and optionally an activation, per layer.
    Without one, hidden layers are relu and the last is softmax."""
    parts = [part.strip() for part in text.split(",")]
    result = []
    for i, part in enumerate(parts):
        units, _, activation = part.partition(":")
        if not units.isdecimal():
            raise argparse.ArgumentTypeError(
                f"'{text}' is not a list of layer sizes such as 512,10 (or 256:tanh,10)"
            )
        default = Activation.softmax if i == len(parts) - 1 else Activation.relu
        if activation and activation not in Activation.__members__:
            raise argparse.ArgumentTypeError(
                f"unknown activation '{activation}'; choose from {', '.join(Activation)}"
            )
        result.append({"units": int(units), "activation": activation or default.value})
    return result


def add_parsers(commands: argparse._SubParsersAction) -> None:  # noqa: SLF001 (argparse's type)
    """Add the client subcommands to the `tapefit` parser."""
    submit = commands.add_parser("submit", help="queue a training job (every flag is optional)")
    submit.add_argument("--epochs", type=int, metavar="N", help="1-100 (default 5)")
    submit.add_argument("--batch-size", type=int, metavar="N", help="default 128")
    submit.add_argument("--optimizer", choices=[o.value for o in OptimizerName])
    submit.add_argument("--lr", type=float, metavar="RATE", help="learning rate")
    submit.add_argument("--momentum", type=float, metavar="M", help="with --optimizer momentum")
    submit.add_argument(
        "--layers", type=layers, metavar="UNITS,...",
        help="units per layer, e.g. 512,10 (default) or 256:tanh,10",
    )
    submit.add_argument("--implementation", choices=[i.value for i in Implementation])
    submit.add_argument("--train-limit", type=int, metavar="N", help="train on the first N images")
    submit.add_argument(
        "--test-limit", type=int, metavar="N", help="evaluate on the first N test images"
    )
    submit.add_argument("--seed", type=int, metavar="N")
    submit.add_argument(
        "--no-shuffle", dest="shuffle", action="store_false", default=None,
        help="visit the training images in order every epoch, as the book's BatchGenerator",
    )
    submit.add_argument("--follow", action="store_true", help="then follow it, as `follow`")

    jobs = commands.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--state", choices=[s.value for s in JobState])
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--json", action="store_true", help="print the API's JSON")

    status = commands.add_parser("status", help="one job: state, progress, epochs")
    status.add_argument("job", metavar="ID")
    status.add_argument("--json", action="store_true", help="print the API's JSON")

    follow = commands.add_parser("follow", help="watch a job train, live, until it ends")
    follow.add_argument("job", metavar="ID")

    cancel = commands.add_parser("cancel", help="cancel a queued job, or stop a running one")
    cancel.add_argument("job", metavar="ID")

    predict = commands.add_parser("predict", help="read digits in PNG or JPEG images")
    predict.add_argument("model", metavar="ID|latest|best")
    predict.add_argument("images", metavar="IMAGE", nargs="+", type=Path)
    predict.add_argument("--json", action="store_true", help="print the probabilities as JSON")


def run(args: argparse.Namespace) -> int:
    """Run one client command; print one line and return non-zero on any error."""
    try:
        with Client() as client:
            return _COMMANDS[args.command](client, args)
    except ApiError as exc:
        print(f"tapefit: {exc}", file=sys.stderr)
        return UNREACHABLE if exc.status is None else FAILED
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def spec_from(args: argparse.Namespace) -> dict[str, Any]:
    """The job spec the `submit` flags give; the server fills in the rest with its defaults."""
    parts: dict[str, Any] = {
        "model": {"implementation": args.implementation, "layers": args.layers},
        "optimizer": {"name": args.optimizer, "learning_rate": args.lr, "momentum": args.momentum},
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "dataset": {"train_limit": args.train_limit, "test_limit": args.test_limit},
        "seed": args.seed,
        "shuffle": args.shuffle,
    }
    spec = {}
    for key, value in parts.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None} or None
        if value is not None:
            spec[key] = value
    return spec


def submit(client: Client, args: argparse.Namespace) -> int:
    """`tapefit submit`: queue a job, and follow it with --follow."""
    job = client.submit(spec_from(args))
    if not args.follow:
        position = job.get("queue_position")
        where = f" (position {position})" if position else ""
        print(f"job {job['id']} queued{where}; watch it with: tapefit follow {job['id']}")
        return OK
    return _follow(client, job["id"])


def list_jobs(client: Client, args: argparse.Namespace) -> int:
    """`tapefit jobs`: a table of jobs, newest first."""
    page = client.jobs(state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps(page, indent=2))
    elif not page["items"]:
        print("no jobs" + (f" {args.state}" if args.state else " yet"))
    else:
        print("\n".join(jobs_table(page["items"])))
        if page["total"] > len(page["items"]):
            print(f"({len(page['items'])} of {page['total']}; --limit for more)")
    return OK


def status(client: Client, args: argparse.Namespace) -> int:
    """`tapefit status ID`: the job, its spec and its finished epochs."""
    job = client.job(args.job)
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        print("\n".join(status_lines(job, client.epochs(args.job))))
    return OK


def follow(client: Client, args: argparse.Namespace) -> int:
    """`tapefit follow ID`: the live progress until the job ends; 0 when it succeeded."""
    return _follow(client, args.job)


def _follow(client: Client, job_id: int | str) -> int:
    """Show the job's events until it ends; 0 only when it succeeded."""
    view = ProgressView()
    final: dict[str, Any] | None = None
    try:
        for event in client.events(job_id):
            view.event(event.type, event.data)
            if event.type == "state" and event.data["state"] in FINAL_STATES:
                final = event.data
    except KeyboardInterrupt:
        view.close()
        print(f"stopped following job {job_id}; it goes on (tapefit cancel {job_id} stops it)",
              file=sys.stderr)
        return 130
    assert final is not None  # events() returns only after a final state
    if final["state"] == "succeeded":
        print(job_outcome(final))
        return OK
    print(f"tapefit: {job_outcome(final)}", file=sys.stderr)
    return FAILED


def cancel(client: Client, args: argparse.Namespace) -> int:
    """`tapefit cancel ID`."""
    job = client.cancel(args.job)
    if job["state"] == "cancelled":
        print(f"job {job['id']} cancelled")
    else:
        print(f"job {job['id']}: cancel requested; it stops within a second")
    return OK


def predict(client: Client, args: argparse.Namespace) -> int:
    """`tapefit predict ID|latest|best IMAGE...`: the digit in each image, with its
    probability (or all ten with --json)."""
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:
        print(f"tapefit: no such file: {', '.join(missing)}", file=sys.stderr)
        return USAGE
    results = {}
    for path in args.images:
        prediction = client.predict_image(args.model, path)
        results[str(path)] = prediction
        if not args.json:
            p = prediction["probabilities"][prediction["digit"]]
            print(f"{path}: {prediction['digit']}  ({p * 100:.1f}%)")
    if args.json:
        print(json.dumps(results, indent=2))
    return OK


_COMMANDS = {
    "submit": submit,
    "jobs": list_jobs,
    "status": status,
    "follow": follow,
    "cancel": cancel,
    "predict": predict,
}
