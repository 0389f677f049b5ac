"""The serving benchmark runs end to end (briefly) against a real `tapefit serve`."""

from __future__ import annotations

from benchmarks.serving import bench_serving
from tests.helpers.serving import Trained


def test_the_benchmark_measures_every_figure(trained: Trained) -> None:
    figures = bench_serving(
        data_dir=trained.settings.data_dir, model="best", seconds=0.4, connections=2, runs=300
    )
    assert figures.job_id == trained.good
    assert 0 < figures.startup_s < 30
    assert 30 < figures.rss_mb <= figures.peak_rss_mb < 1_000
    assert 0 < figures.latency_p50_us <= figures.latency_p99_us
    assert set(figures.requests_per_s) == {
        "healthz", "predict", "predict_by_alias", "tfserving_predict", "v2_infer"
    }
    assert all(rate > 0 for rate in figures.requests_per_s.values())
    assert set(figures.vs_bare) == set(figures.requests_per_s) - {"healthz"}
    assert figures.predict_vs_bare == figures.vs_bare["predict"] > 0
    assert figures.predict_by_alias_vs_bare == figures.vs_bare["predict_by_alias"] > 0
