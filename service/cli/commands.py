"""The `tapefit` client commands: submit, jobs, status, follow, cancel, predict, datasets.

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

from service.cli import controls, studies
from service.cli.client import ApiError, Client
from service.cli.console import (
    ProgressView,
    datasets_table,
    describe_dataset,
    job_outcome,
    jobs_table,
    status_lines,
)
from service.schemas import FINAL_STATES, Activation, Implementation, JobState, OptimizerName

COMMANDS = (
    "submit", "jobs", "status", "follow", "cancel", "delete", "predict", "datasets", "study",
)
OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3


# --layers: one comma-separated item per layer; each takes its own ':'-separated numbers.
_SYNTAX = {
    "dense": "UNITS[:ACTIVATION]", "conv2d": "conv:FILTERS:KERNEL[:STRIDES][:same][:ACTIVATION]",
    "max_pool2d": "pool[:SIZE[:STRIDES]]", "avg_pool2d": "avgpool[:SIZE[:STRIDES]]",
    "global_avg_pool2d": "gap", "flatten": "flatten", "dropout": "dropout:RATE",
    "batch_norm": "batchnorm",
}
LAYER_SYNTAX = ", ".join(_SYNTAX.values())
LAYER_EXAMPLE = "conv:32:3,pool:2,conv:64:3,pool:2,conv:128:3,flatten,10"
_LAYER_NAMES = {
    "dense": "dense", "conv": "conv2d", "conv2d": "conv2d", "pool": "max_pool2d",
    "maxpool": "max_pool2d", "max_pool2d": "max_pool2d", "avgpool": "avg_pool2d",
    "avg_pool2d": "avg_pool2d", "gap": "global_avg_pool2d",
    "global_avg_pool2d": "global_avg_pool2d", "flatten": "flatten", "dropout": "dropout",
    "batchnorm": "batch_norm", "batch_norm": "batch_norm", "bn": "batch_norm",
}


def layers(text: str) -> list[dict[str, Any]]:
    """'512,10', '256:tanh,10:softmax' (units, and optionally an activation, per dense layer)
    or typed layers: 'conv:32:3,pool:2,conv:64:3,pool:2,conv:128:3,flatten,10'. Without an
    activation, convs and hidden dense layers are relu and the last layer is softmax."""
    parts = [part.strip() for part in text.split(",")]
    return [_layer(part, last=i == len(parts) - 1) for i, part in enumerate(parts)]


def _layer(part: str, *, last: bool) -> dict[str, Any]:
    name, *args = [token.strip() for token in part.split(":")]
    if name.isdecimal():  # 512 or 256:tanh, the dense layers' own syntax
        name, args = "dense", [name, *args]
    kind = _LAYER_NAMES.get(name)
    if kind is None:
        raise argparse.ArgumentTypeError(
            f"'{part}' is not a layer; each is one of {LAYER_SYNTAX} (e.g. 512,10 or "
            f"{LAYER_EXAMPLE})"
        )
    numbers = [arg for arg in args if _is_number(arg)]
    words = [arg for arg in args if not _is_number(arg)]
    activation = [word for word in words if word not in ("same", "valid")]
    for word in activation:
        if word not in Activation.__members__:
            raise argparse.ArgumentTypeError(
                f"unknown activation '{word}' in '{part}'; choose from {', '.join(Activation)}"
            )
    wanted = {"dense": (1, 1), "conv2d": (2, 3), "max_pool2d": (0, 2), "avg_pool2d": (0, 2),
              "dropout": (1, 1)}.get(kind, (0, 0))
    takes_words = kind in ("dense", "conv2d")
    if not wanted[0] <= len(numbers) <= wanted[1] or (words and not takes_words) or (
        len(activation) > 1 or (kind == "dense" and len(words) > len(activation))
    ):
        raise argparse.ArgumentTypeError(f"'{part}': a {kind} layer is written {_SYNTAX[kind]}")
    layer: dict[str, Any] = {} if kind == "dense" else {"type": kind}
    if kind == "dense":
        layer["units"] = _whole(numbers[0], part)
    elif kind == "conv2d":
        layer["filters"], layer["kernel_size"] = (_whole(n, part) for n in numbers[:2])
        if len(numbers) == 3:
            layer["strides"] = _whole(numbers[2], part)
        if "same" in words or "valid" in words:
            layer["padding"] = "same" if "same" in words else "valid"
    elif kind in ("max_pool2d", "avg_pool2d"):
        layer["pool_size"] = _whole(numbers[0], part) if numbers else 2
        if len(numbers) == 2:
            layer["strides"] = _whole(numbers[1], part)
    elif kind == "dropout":
        layer["rate"] = float(numbers[0])
    if takes_words:
        default = Activation.softmax if last and kind == "dense" else Activation.relu
        layer["activation"] = activation[0] if activation else default.value
    return layer


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _whole(token: str, part: str) -> int:
    if not token.isdecimal():
        raise argparse.ArgumentTypeError(f"'{token}' in '{part}' is not a whole number")
    return int(token)


def add_parsers(commands: argparse._SubParsersAction) -> None:  # noqa: SLF001 (argparse's type)
    """Add the client subcommands to the `tapefit` parser."""
    submit = commands.add_parser("submit", help="queue a training job (every flag is optional)")
    submit.add_argument("--epochs", type=int, metavar="N", help="1-100 (default 5)")
    submit.add_argument("--batch-size", type=int, metavar="N", help="default 128")
    submit.add_argument("--optimizer", choices=[o.value for o in OptimizerName])
    submit.add_argument("--lr", type=float, metavar="RATE", help="learning rate")
    submit.add_argument("--momentum", type=float, metavar="M", help="with --optimizer momentum")
    submit.add_argument(
        "--layers", type=layers, metavar="LAYER,...",
        help=f"units per dense layer, e.g. 512,10 (default) or 256:tanh,10; or typed layers, "
        f"e.g. {LAYER_EXAMPLE} (each: {LAYER_SYNTAX})",
    )
    submit.add_argument("--implementation", choices=[i.value for i in Implementation])
    submit.add_argument("--train-limit", type=int, metavar="N", help="train on the first N images")
    submit.add_argument(
        "--test-limit", type=int, metavar="N", help="evaluate on the first N test images"
    )
    submit.add_argument("--seed", type=int, metavar="N")
    submit.add_argument(
        "--priority", type=int, metavar="N",
        help="-1000 to 1000: higher starts first among this key's queued jobs (default 0)",
    )
    submit.add_argument(
        "--no-shuffle", dest="shuffle", action="store_false", default=None,
        help="visit the training images in order every epoch, as the book's BatchGenerator",
    )
    submit.add_argument(
        "--dataset", type=dataset_ref, metavar="ID",
        help="train on an uploaded dataset (tapefit datasets lists them); default mnist",
    )
    controls.add_flags(submit)
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

    delete = commands.add_parser(
        "delete", help="delete a finished job with its loss rows, epochs and model"
    )
    delete.add_argument("job", metavar="ID")

    predict = commands.add_parser(
        "predict", help="read digits (or an image dataset's labels) in PNG or JPEG images"
    )
    predict.add_argument("model", metavar="ID|latest|best")
    predict.add_argument("images", metavar="IMAGE", nargs="+", type=Path)
    predict.add_argument("--json", action="store_true", help="print the probabilities as JSON")

    datasets = commands.add_parser(
        "datasets", help="list the datasets; upload one (tapefit datasets upload FILE)"
    )
    datasets.add_argument("--json", action="store_true", help="print the API's JSON")
    actions = datasets.add_subparsers(dest="action", metavar="ACTION")
    upload = actions.add_parser(
        "upload", help="upload an .npz, a .csv or a .zip of image folders (one per class)"
    )
    upload.add_argument("file", type=Path, metavar="FILE")
    upload.add_argument("--name", help="default: the file's name")
    upload.add_argument("--label-column", metavar="C", help="CSV: the label column (label)")
    upload.add_argument("--test-fraction", type=float, metavar="F",
                        help="held out for testing when the file has no test split (0.2)")
    upload.add_argument("--image-size", metavar="HxW",
                        help="image folders: resize to this (default: the most common size)")
    upload.add_argument("--color", choices=["grayscale", "rgb"],
                        help="image folders (default: grayscale unless an image has colour)")
    upload.add_argument("--json", action="store_true", help="print the API's JSON")
    delete = actions.add_parser("delete", help="delete an uploaded dataset")
    delete.add_argument("dataset", metavar="ID")
    studies.add_parsers(commands)


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
        "dataset": {**(args.dataset or {}), "train_limit": args.train_limit,
                    "test_limit": args.test_limit},
        "seed": args.seed,
        "priority": args.priority,
        "shuffle": args.shuffle,
    }
    spec = {}
    for key, value in parts.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None} or None
        if value is not None:
            spec[key] = value
    return controls.apply(spec, args)


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


def delete(client: Client, args: argparse.Namespace) -> int:
    """`tapefit delete ID`: a finished job and all it owns (a queued or running job is
    refused: cancel it first)."""
    client.delete(args.job)
    print(f"job {args.job} deleted")
    return OK


def predict(client: Client, args: argparse.Namespace) -> int:
    """`tapefit predict ID|latest|best IMAGE...`: what the model reads in each image (the
    digit, or its dataset's label), with its probability (or all of them with --json)."""
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:
        print(f"tapefit: no such file: {', '.join(missing)}", file=sys.stderr)
        return USAGE
    results = {}
    for path in args.images:
        prediction = client.predict_image(args.model, path)
        results[str(path)] = prediction
        if not args.json:
            p = prediction["probabilities"][prediction["class"]]
            print(f"{path}: {prediction['label']}  ({p * 100:.1f}%)")
    if args.json:
        print(json.dumps(results, indent=2))
    return OK


def dataset_ref(text: str) -> dict[str, Any]:
    """`--dataset`: an uploaded dataset's id, or mnist."""
    if text == "mnist":
        return {"name": "mnist"}
    if not text.isdecimal() or not text.isascii():
        raise argparse.ArgumentTypeError(f"'{text}' is not a dataset id (or mnist)")
    return {"id": int(text)}


def datasets(client: Client, args: argparse.Namespace) -> int:
    """`tapefit datasets [upload FILE | delete ID]`."""
    if args.action == "upload":
        return upload_dataset(client, args)
    if args.action == "delete":
        client.delete_dataset(args.dataset)
        print(f"dataset {args.dataset} deleted")
        return OK
    page = client.datasets()
    if args.json:
        print(json.dumps(page, indent=2))
    else:
        print("\n".join(datasets_table(page["items"])))
    return OK


def upload_dataset(client: Client, args: argparse.Namespace) -> int:
    """`tapefit datasets upload FILE`: the stored dataset, and how to train on it."""
    if not args.file.is_file():
        print(f"tapefit: no such file: {args.file}", file=sys.stderr)
        return USAGE
    fields = {"name": args.name, "label_column": args.label_column,
              "test_fraction": args.test_fraction, "image_size": args.image_size,
              "color": args.color}
    dataset = client.upload_dataset(
        args.file, {key: str(value) for key, value in fields.items() if value is not None}
    )
    if args.json:
        print(json.dumps(dataset, indent=2))
        return OK
    print(f"dataset {dataset['id']} '{dataset['name']}' ({dataset['format']}): "
          f"{describe_dataset(dataset)}")
    print(f"train on it: tapefit submit --dataset {dataset['id']} --layers "
          f"64,{len(dataset['classes'])}")
    return OK


_COMMANDS = {
    "submit": submit,
    "jobs": list_jobs,
    "status": status,
    "follow": follow,
    "cancel": cancel,
    "delete": delete,
    "predict": predict,
    "datasets": datasets,
    "study": studies.run,
}
