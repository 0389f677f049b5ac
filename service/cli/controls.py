"""`tapefit submit`'s training controls: a validation split, early stopping, a learning-rate
schedule and gradient clipping (the job spec's `validation_split`, `early_stopping`,
`optimizer.schedule` and `optimizer.clipnorm`)."""

from __future__ import annotations

import argparse
from typing import Any

MONITORS = ("val_loss", "val_accuracy", "train_loss")


def _numbers(text: str, kind: type, what: str) -> list[Any]:
    try:
        return [kind(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' in {what} is not a list of numbers") from None


def schedule(text: str) -> dict[str, Any]:
    """--schedule: exponential:STEPS:RATE, cosine:STEPS[:ALPHA] or step:B1,B2:V1,V2,V3."""
    kind, *parts = text.split(":")
    try:
        if kind == "exponential" and len(parts) == 2:
            return {"type": kind, "decay_steps": int(parts[0]), "decay_rate": float(parts[1])}
        if kind == "cosine" and len(parts) in (1, 2):
            spec: dict[str, Any] = {"type": kind, "decay_steps": int(parts[0])}
            if len(parts) == 2:
                spec["alpha"] = float(parts[1])
            return spec
        if kind == "step" and len(parts) == 2:
            return {"type": kind, "boundaries": _numbers(parts[0], int, text),
                    "values": _numbers(parts[1], float, text)}
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"'{text}' is not a schedule: exponential:STEPS:RATE, cosine:STEPS[:ALPHA] or "
        "step:B1,B2:V1,V2,V3")


def early_stopping(text: str) -> dict[str, Any]:
    """--early-stopping: MONITOR[:PATIENCE[:MIN_DELTA]], e.g. val_loss:3."""
    monitor, *rest = text.split(":")
    if monitor not in MONITORS or len(rest) > 2:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not MONITOR[:PATIENCE[:MIN_DELTA]] with a monitor of "
            f"{', '.join(MONITORS)}")
    spec: dict[str, Any] = {"monitor": monitor}
    try:
        if rest:
            spec["patience"] = int(rest[0])
        if len(rest) == 2:
            spec["min_delta"] = float(rest[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': patience is a whole number, min_delta a "
                                         "number") from None
    return spec


def add_flags(submit: argparse.ArgumentParser) -> None:
    """The control flags of `tapefit submit`."""
    submit.add_argument("--validation-split", type=float, metavar="F",
                        help="hold out this share (0-0.5) of the training set for val_loss "
                        "and val_accuracy each epoch")
    submit.add_argument("--early-stopping", type=early_stopping,
                        metavar="MONITOR[:PATIENCE[:MIN_DELTA]]",
                        help=f"stop when MONITOR ({', '.join(MONITORS)}) stops improving")
    submit.add_argument("--restore-best", action="store_true",
                        help="with --early-stopping: end with the best epoch's weights")
    submit.add_argument("--schedule", type=schedule, metavar="KIND:...",
                        help="exponential:STEPS:RATE, cosine:STEPS[:ALPHA] or "
                        "step:B1,B2:V1,V2,V3 (Keras' schedules, by the step)")
    submit.add_argument("--clipnorm", type=float, metavar="N",
                        help="clip each gradient to this L2 norm")


def apply(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """`spec` with the control flags given set in it."""
    if args.validation_split is not None:
        spec["validation_split"] = args.validation_split
    if args.early_stopping is not None:
        spec["early_stopping"] = {**args.early_stopping,
                                  **({"restore_best_weights": True} if args.restore_best else {})}
    optimizer = {"schedule": args.schedule, "clipnorm": args.clipnorm}
    optimizer = {key: value for key, value in optimizer.items() if value is not None}
    if optimizer:
        spec["optimizer"] = {**spec.get("optimizer", {}), **optimizer}
    return spec
