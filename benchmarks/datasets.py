"""Dataset uploads through a real `tapefit serve --workers 0`: the full MNIST as an .npz, the
same images as a zip of PNG folders, and a large CSV; for each, the time from the first byte
sent to the 201 (streamed to disk, parsed, checked, split, stored in chunks), the stored
size, and the API process's peak memory (VmHWM) after it; then a worker's copy of the largest
back out of the database, checked against its sha256.

    python -m benchmarks.datasets --mnist PATH [--images 20000] [--csv-rows 400000]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.server import start_serve
from benchmarks.serving import _memory_mb


@dataclass(frozen=True)
class UploadFigure:
    what: str
    upload_mb: float
    seconds: float
    stored_mb: float
    peak_mb: float  # the API's VmHWM after this upload


def _png_zip(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, (image, label) in enumerate(zip(x, y, strict=True)):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            archive.writestr(f"digits/{label}/{index}.png", buffer.getvalue())


def _csv(rows: int, path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 10)) * np.logspace(-1, 3, 10)
    labels = np.array(["low", "mid", "high"])[np.digitize(x[:, 0], [-0.05, 0.05])]
    with path.open("w") as file:
        file.write(",".join([f"f{i}" for i in range(10)] + ["label"]) + "\n")
        for row, label in zip(x, labels, strict=True):
            file.write(",".join(f"{v:.6g}" for v in row) + f",{label}\n")


def bench_datasets(
    mnist: Path, *, images: int, csv_rows: int
) -> tuple[list[UploadFigure], float, float]:
    """The upload figures, the API's peak memory before the first, and the seconds a worker
    takes to copy the largest dataset back."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with np.load(mnist) as archive:
            x, y = archive["x_train"][:images], archive["y_train"][:images]
        _png_zip(x, y, folder / "digits.zip")
        _csv(csv_rows, folder / "table.csv")
        files = [("MNIST, the .npz (70,000 images)", mnist),
                 (f"{images:,} PNGs in class folders (.zip)", folder / "digits.zip"),
                 (f"a CSV of {csv_rows:,} rows x 10 features", folder / "table.csv")]
        env = {**os.environ, "TAPEFIT_DATA_DIR": str(folder / "data")}
        env.pop("TAPEFIT_DATABASE_URL", None)
        process, url = start_serve("--workers", "0", env=env, log_path=folder / "serve.log")
        figures, stored = [], []
        try:
            with httpx.Client(base_url=url, timeout=600) as client:
                client.get("/datasets").raise_for_status()  # the routes' modules loaded
                start_mb = _memory_mb(process.pid)[1]
                for what, path in files:
                    started = time.perf_counter()
                    with path.open("rb") as file:
                        response = client.post("/datasets", files={"file": (path.name, file)})
                    seconds = time.perf_counter() - started
                    response.raise_for_status()
                    body = response.json()
                    stored.append((body["bytes"], body["id"]))
                    figures.append(UploadFigure(
                        what, path.stat().st_size / 1e6, seconds, body["bytes"] / 1e6,
                        _memory_mb(process.pid)[1]))
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
        copy_seconds = _copy_back(folder / "data", max(stored)[1])
    return figures, start_mb, copy_seconds


def _copy_back(data_dir: Path, dataset_id: int) -> float:
    from service.datasets import storage
    from service.db import Database

    database = Database(f"sqlite:///{data_dir / 'tapefit.db'}")
    started = time.perf_counter()
    storage.fetch(database=database, dataset_id=dataset_id, cache_dir=data_dir / "worker",
                  scratch=data_dir / "tmp")
    seconds = time.perf_counter() - started
    database.dispose()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, required=True)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--csv-rows", type=int, default=400_000)
    args = parser.parse_args()
    figures, start_mb, copy_seconds = bench_datasets(args.mnist, images=args.images,
                                                     csv_rows=args.csv_rows)
    print("| upload | size | to the 201 | stored | API peak memory after |")
    print("|---|---|---|---|---|")
    for f in figures:
        print(f"| {f.what} | {f.upload_mb:.1f} MB | {f.seconds:.1f} s | {f.stored_mb:.1f} MB "
              f"| {f.peak_mb:.0f} MB |")
    print(f"\nThe API's peak memory before the first upload: {start_mb:.0f} MB. A worker's "
          f"copy of the largest dataset out of the database, checked: {copy_seconds:.2f} s")


if __name__ == "__main__":
    main()
