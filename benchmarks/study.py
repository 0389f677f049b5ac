"""The study figures: a 12-trial search over the learning rate and the width on 10,000 images,
through the real server and two workers, with ASHA and without pruning: the epochs pruning
saved, the best value, the wall time.

    python -m benchmarks.study [--mnist PATH] [--trials 12] [--parallel 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.server import start_serve, wait_for_workers

SPACE = {"optimizer.learning_rate": {"low": 1e-4, "high": 0.3, "log": True},
         "model.layers.0.units": {"choices": [16, 32, 64, 128]}}
BASE = {"epochs": 4, "validation_split": 0.1, "dataset": {"train_limit": 10_000},
        "model": {"layers": [{"units": 64}, {"units": 10, "activation": "softmax"}]}}


@dataclass
class StudyRun:
    pruner: str
    trials: int
    wall_s: float
    epochs_run: int
    epochs_planned: int
    pruned: int
    best_value: float
    best_params: dict


@dataclass
class StudyFigures:
    asha: StudyRun
    none: StudyRun

    @property
    def epochs_saved(self) -> float:
        """The share of epochs ASHA did not run, against the same study without pruning."""
        return 1 - self.asha.epochs_run / self.none.epochs_run


def run_study(client: httpx.Client, *, pruner: str, trials: int, parallel: int,
              timeout: float = 1800) -> StudyRun:
    """One study through the API, from POST to its end."""
    body = {"name": f"bench-{pruner}", "base": BASE, "space": SPACE, "sampler": "tpe",
            "pruner": pruner, "trials": trials, "parallel": parallel, "seed": 0,
            "objective": {"metric": "val_accuracy"}}
    started = time.perf_counter()
    response = client.post("/studies", json=body)
    response.raise_for_status()
    study_id = response.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        study = client.get(f"/studies/{study_id}").json()
        if study["state"] != "running":
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"study {study_id} did not end within {timeout} s")
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if study["best"] is None:
        raise RuntimeError(f"study {study_id} ended {study['state']} without a best trial")
    return StudyRun(
        pruner=pruner, trials=trials, wall_s=wall, epochs_run=study["epochs_run"],
        epochs_planned=trials * BASE["epochs"],
        pruned=sum(t["state"] == "pruned" for t in study["trials"]),
        best_value=study["best"]["value"], best_params=study["best"]["params"],
    )


def bench_study(mnist_path: Path, data_dir: Path, *, trials: int = 12, parallel: int = 2,
                workers: int = 2) -> StudyFigures:
    """The same study with ASHA and without pruning, each on a fresh `tapefit serve --workers
    N`: a worker keeps its traced steps between jobs of one network (worker/kits.py), so the
    study run second on the same workers would start warm."""
    runs = {pruner: _study_on_fresh_server(mnist_path, data_dir / pruner, pruner=pruner,
                                           trials=trials, parallel=parallel, workers=workers)
            for pruner in ("asha", "none")}
    return StudyFigures(asha=runs["asha"], none=runs["none"])


def _study_on_fresh_server(mnist_path: Path, data_dir: Path, *, pruner: str, trials: int,
                           parallel: int, workers: int) -> StudyRun:
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(data_dir.resolve()),
           "TAPEFIT_MNIST_PATH": str(Path(mnist_path).resolve()),
           "TAPEFIT_STUDY_INTERVAL": "0.5"}
    env.pop("TAPEFIT_DATABASE_URL", None)
    data_dir.mkdir(parents=True, exist_ok=True)
    process, url = start_serve("--workers", str(workers), env=env,
                               log_path=data_dir / "bench-study.log")
    client = httpx.Client(base_url=url, timeout=30)
    try:
        wait_for_workers(client, workers)
        return run_study(client, pruner=pruner, trials=trials, parallel=parallel)
    finally:
        client.close()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def rows(figures: StudyFigures, row) -> list[str]:  # noqa: ANN001 (the table's row maker)
    """The bench table's study rows."""
    a, n = figures.asha, figures.none
    return [
        row(f"study, {a.trials} trials × {BASE['epochs']} epochs on 10,000 images, 2 workers: "
            "epochs run with ASHA / without pruning",
            f"{a.epochs_run} / {n.epochs_run} ({figures.epochs_saved:.0%} saved, "
            f"{a.pruned} trials pruned)", "", None),
        row("study: best val_accuracy with ASHA / without",
            f"{a.best_value:.4f} / {n.best_value:.4f}", "", None),
        row("study: wall time with ASHA / without", f"{a.wall_s:.1f} s / {n.wall_s:.1f} s",
            "", None),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.study", description=__doc__)
    parser.add_argument("--mnist", type=Path, default=os.environ.get("TAPEFIT_MNIST_PATH"))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args(argv)
    if args.mnist is None:
        print("set TAPEFIT_MNIST_PATH or pass --mnist", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        figures = bench_study(args.mnist, Path(folder), trials=args.trials,
                              parallel=args.parallel)
    for run in (figures.asha, figures.none):
        print(f"{run.pruner}: {run.epochs_run}/{run.epochs_planned} epochs, {run.pruned} "
              f"pruned, best {run.best_value:.4f} {run.best_params}, {run.wall_s:.1f} s")
    print(f"epochs saved by ASHA: {figures.epochs_saved:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
