"""What the `tapefit` client commands print: job lines, tables, and the live progress bar."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, TextIO

from service.schemas import FINAL_STATES


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def duration(seconds: float | None) -> str:
    """0:42, 12:05, 1:02:03."""
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe_layer(layer: dict[str, Any]) -> str:
    """One layer in a few characters: '512', 'conv32x3', 'conv64x3/2', 'maxpool2', 'bn'."""
    kind = layer.get("type", "dense")  # no type: dense, as the specs before typed layers
    if kind == "dense":
        return str(layer["units"])
    if kind == "conv2d":
        strides = layer.get("strides", 1)
        return f"conv{layer['filters']}x{layer['kernel_size']}" + (
            f"/{strides}" if strides != 1 else "")
    if kind in ("max_pool2d", "avg_pool2d"):
        return f"{kind[:3]}pool{layer['pool_size']}"
    if kind == "dropout":
        return f"dropout{layer['rate']:g}"
    return {"global_avg_pool2d": "gap", "batch_norm": "bn"}.get(kind, kind)


def describe_spec(spec: dict[str, Any]) -> str:
    """'keras 512-10 · rmsprop lr 0.001 · 5 epochs of batch 128 · 60,000 images'; a convnet
    is 'keras conv32x3-maxpool2-conv64x3-maxpool2-conv128x3-flatten-10 · ...'."""
    model, optimizer, dataset = spec["model"], spec["optimizer"], spec["dataset"]
    layers = "-".join(describe_layer(layer) for layer in model["layers"])
    images = f"{dataset['train_limit']:,} images" if dataset.get("train_limit") else "all images"
    if dataset.get("id") is not None:  # an uploaded dataset's samples, not MNIST's images
        limit = f"{dataset['train_limit']:,}" if dataset.get("train_limit") else "all"
        images = f"dataset {dataset['id']} ({limit} samples)"
    epochs = f"{spec['epochs']} epoch{'s' if spec['epochs'] != 1 else ''}"
    return (
        f"{model['implementation']} {layers} · {optimizer['name']} lr "
        f"{optimizer['learning_rate']:g} · {epochs} of batch {spec['batch_size']} · {images}"
    )


def job_outcome(job: dict[str, Any]) -> str:
    """One line on how a job ended (or where it is)."""
    state, name = job["state"], f"job {job['id']}"
    if state == "succeeded":
        early = job.get("stopped_early_at_epoch")
        stopped = f" (stopped early after epoch {early})" if early else ""
        return f"{name} succeeded{stopped}: test accuracy {percent(job['test_accuracy'])}"
    if state == "pruned":
        return (f"{name} was pruned by its study after epoch {job['progress']['epoch']}: test "
                f"accuracy {percent(job['test_accuracy'])}")
    if state == "failed":
        return f"{name} failed: {job['error'] or 'no reason given'}"
    if state == "cancelled":
        return f"{name} was cancelled"
    if state == "queued":
        position = job.get("queue_position")
        return f"{name} is queued" + (f" (position {position})" if position else "")
    progress = job["progress"]
    return (
        f"{name} is running: epoch {min(progress['epoch'] + 1, progress['epochs'])}/"
        f"{progress['epochs']}, {progress['fraction'] * 100:.0f}% done"
    )


def status_lines(job: dict[str, Any], epochs: list[dict[str, Any]]) -> list[str]:
    """`tapefit status`: the job, its spec, its epochs."""
    progress = job["progress"]
    steps = f"{progress['step']:,}/{progress['total_steps']:,}" if progress["total_steps"] else "—"
    lines = [
        job_outcome(job),
        f"  spec       {describe_spec(job['spec'])}",
        f"  progress   {progress['fraction'] * 100:.1f}% (step {steps})",
        f"  loss       {number(job['loss'])}",
    ]
    if job["state"] == "running":
        speed = job["samples_per_second"]
        lines.append(
            f"  speed      {'—' if speed is None else f'{speed:,.0f} samples/s'}"
            f", ETA {duration(job['eta_seconds'])}"
        )
    lines.append(f"  created    {job['created_at'][:19].replace('T', ' ')} UTC")
    lines += ["  " + epoch_line(epoch, progress["epochs"]) for epoch in epochs]
    return lines


def epoch_line(epoch: dict[str, Any], epochs: int) -> str:
    validation = (
        f"  val loss {number(epoch['val_loss'])}  val acc {percent(epoch['val_accuracy'])}"
        if epoch.get("val_loss") is not None or epoch.get("val_accuracy") is not None else ""
    )
    return (
        f"epoch {epoch['epoch'] + 1}/{epochs}  loss {number(epoch['train_loss'])}"
        f"  acc {percent(epoch['train_accuracy'])}{validation}"
        f"  test loss {number(epoch['test_loss'])}"
        f"  test acc {percent(epoch['test_accuracy'])}  {epoch['seconds']:.1f} s"
    )


def jobs_table(items: list[dict[str, Any]]) -> list[str]:
    """`tapefit jobs`: one row per job."""
    rows = [("ID", "STATE", "PROGRESS", "LOSS", "TEST ACC", "SPEC")]
    for job in items:
        rows.append((
            str(job["id"]),
            job["state"] + (" (stopping)" if job["cancel_requested"] else ""),
            f"{job['progress']['fraction'] * 100:.0f}%",
            number(job["loss"]),
            percent(job["test_accuracy"]),
            describe_spec(job["spec"]),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
            for row in rows]


class ProgressView:
    """Follows a job's events. On a terminal, one carriage-return bar (epoch, batch, loss,
    throughput, ETA) redrawn at most 10 times a second; elsewhere one line per epoch."""

    BAR = 24

    def __init__(self, out: TextIO = sys.stdout, *, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.epochs = 0
        self.per_epoch: int | None = None
        self.speed: float | None = None
        self.eta: float | None = None
        self.batch: dict[str, Any] | None = None
        self.drawn_at = 0.0
        self.bar_shown = False
        self.state: str | None = None
        unicode = (getattr(out, "encoding", "") or "").lower().replace("-", "") == "utf8"
        self.fill, self.empty = ("█", "░") if unicode else ("#", "-")

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "state":
            self._state(data)
        elif kind == "progress":
            self.epochs = data["epochs"]
            if data["total_steps"]:
                self.per_epoch = data["total_steps"] // data["epochs"]
            self.speed, self.eta = data["samples_per_second"], data["eta_seconds"]
            self._draw()
        elif kind == "batch":
            self.batch = data
            self._draw()
        elif kind == "epoch":
            self._print(epoch_line(data, self.epochs))

    def _state(self, job: dict[str, Any]) -> None:
        self.epochs = job["progress"]["epochs"]
        total = job["progress"]["total_steps"]
        if total:
            self.per_epoch = total // self.epochs
        if job["state"] == self.state:  # only the cancel flag changed
            if job["cancel_requested"]:
                self._print(f"job {job['id']}: cancel requested; it stops after this batch")
            return
        self.state = job["state"]
        if job["state"] in FINAL_STATES:
            self._clear()
            return  # the caller prints the outcome
        line = job_outcome(job)
        if job["state"] == "running" and not self.bar_shown:
            line = f"job {job['id']} is running: {describe_spec(job['spec'])}"
        self._print(line)

    def _draw(self) -> None:
        if not self.tty or self.batch is None:
            return
        now = time.monotonic()
        if now - self.drawn_at < 0.1:
            return
        self.drawn_at = now
        batch = self.batch
        done = ((batch["batch"] + 1) / self.per_epoch) if self.per_epoch else 0.0
        filled = int(done * self.BAR)
        bar = self.fill * filled + self.empty * (self.BAR - filled)
        of = f"/{self.per_epoch}" if self.per_epoch else ""
        speed = f"{self.speed:,.0f} samples/s" if self.speed else "— samples/s"
        text = (
            f"epoch {batch['epoch'] + 1}/{self.epochs} {bar} batch {batch['batch'] + 1}{of}"
            f"  loss {number(batch['loss'])}  {speed}  ETA {duration(self.eta)}"
        )
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.out.write("\r" + text[:width].ljust(width))
        self.out.flush()
        self.bar_shown = True

    def close(self) -> None:
        """Take the bar off the screen."""
        self._clear()

    def _clear(self) -> None:
        if self.tty and self.bar_shown:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.out.write("\r" + " " * width + "\r")
            self.out.flush()
            self.bar_shown = False

    def _print(self, line: str) -> None:
        self._clear()  # the next batch draws the bar again, below the line
        self.out.write(line + "\n")
        self.out.flush()


def describe_dataset(dataset: dict[str, Any]) -> str:
    """'tabular [4] · 3 classes (setosa, versicolor, virginica) · 120 train / 30 test'."""
    classes = dataset["classes"]
    names = ", ".join(classes[:5]) + (", …" if len(classes) > 5 else "")
    counts = "—" if dataset["train_count"] is None else \
        f"{dataset['train_count']:,} train / {dataset['test_count']:,} test"
    shape = "×".join(str(side) for side in dataset["input_shape"])
    return f"{dataset['kind']} {shape} · {len(classes)} classes ({names}) · {counts}"


def datasets_table(items: list[dict[str, Any]]) -> list[str]:
    """`tapefit datasets`: one row per dataset, the built-in first."""
    rows = [("ID", "NAME", "FORMAT", "SIZE", "DATASET")]
    for dataset in items:
        size = dataset["bytes"]
        rows.append((
            "mnist" if dataset["builtin"] else str(dataset["id"]),
            dataset["name"],
            dataset["format"] or "built in",
            "—" if size is None else f"{size / 1e6:,.1f} MB",
            describe_dataset(dataset),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
            for row in rows]
