"""The CLI's HTTP client and its printing, against mock transports (no server)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import httpx
import pytest

from service.cli import client as client_module
from service.cli.client import ApiError, Client, parse_sse
from service.cli.commands import layers, spec_from
from service.cli.console import ProgressView, describe_spec, duration, jobs_table
from service.cli.main import _parser

JOB = {
    "id": 3, "state": "running", "cancel_requested": False, "loss": 0.5, "test_accuracy": None,
    "error": None, "queue_position": None, "samples_per_second": 1000.0, "eta_seconds": 12.0,
    "created_at": "2026-01-02T03:04:05Z",
    "progress": {"epoch": 0, "epochs": 2, "step": 3, "total_steps": 8, "fraction": 0.375},
    "spec": {"model": {"implementation": "keras", "layers": [{"units": 32}, {"units": 10}]},
             "optimizer": {"name": "adam", "learning_rate": 0.001}, "epochs": 2,
             "batch_size": 100, "dataset": {"train_limit": 400}},
}


def sse(event: str, data: object, event_id: str | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id else "")
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def batch(step: int) -> bytes:
    data = {"step": step, "epoch": step // 4, "batch": step % 4, "loss": 1.0, "accuracy": 0.5,
            "time": step * 0.1}
    return sse("batch", data, str(step))


class Broken(httpx.SyncByteStream):
    """A response body that sends `chunks`, then loses the connection."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        raise httpx.ReadError("connection reset")


def test_parse_sse_skips_comments() -> None:
    text = "retry: 2000\n\n: keep-alive\n\nevent: batch\nid: 4\ndata: {\"a\": 1}\n\n" \
           "event: state\ndata: {\"b\": 2}\n\n"
    events = list(parse_sse(text.splitlines(keepends=True)))
    assert [(e.type, e.data, e.id) for e in events] == [("batch", {"a": 1}, "4"),
                                                       ("state", {"b": 2}, None)]


def test_events_resume_after_a_broken_connection_with_the_last_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module.time, "sleep", lambda _: None)
    seen_ids: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_ids.append(request.headers.get("last-event-id"))
        if len(seen_ids) == 1:
            chunks = [sse("state", JOB), batch(0), batch(1), b"event: batch\nid: 2\nda"]
            return httpx.Response(200, stream=Broken(chunks))
        final = {**JOB, "state": "succeeded", "test_accuracy": 0.9}
        return httpx.Response(200, content=sse("state", JOB) + batch(2) + sse("state", final))

    with Client("http://test", token="", transport=httpx.MockTransport(handler)) as client:
        events = list(client.events(3))
    assert seen_ids == [None, "1"]
    assert [(e.type, e.id) for e in events] == [
        ("state", None), ("batch", "0"), ("batch", "1"), ("state", None), ("batch", "2"),
        ("state", None),
    ]
    assert events[-1].data["state"] == "succeeded"


def test_the_token_goes_in_the_authorization_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAPEFIT_API_TOKEN", "s3cret-token-of-16+")
    monkeypatch.setenv("TAPEFIT_URL", "http://elsewhere:9000/")

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url == "http://elsewhere:9000/jobs/3"
        assert request.headers["authorization"] == "Bearer s3cret-token-of-16+"
        return httpx.Response(401, json={"detail": "Not authenticated"})

    with Client(transport=httpx.MockTransport(handler)) as client, \
            pytest.raises(ApiError, match="refused the token") as refused:
        client.job(3)
    assert refused.value.status == 401


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [(422, {"message": "epochs: Input should be greater than or equal to 1", "detail": []},
      "epochs: Input should be greater than or equal to 1"),
     (404, {"detail": "job 9 not found"}, "job 9 not found"),
     (400, {"error": "bad tensor"}, "bad tensor"),
     (502, "<html>bad gateway</html>", "HTTP 502 Bad Gateway"),
     (401, {"detail": "Not authenticated"}, "needs a token: set TAPEFIT_API_TOKEN")],
)
def test_refusals_are_one_line(status: int, body: object, message: str) -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    with Client("http://test", token="", transport=httpx.MockTransport(handler)) as client, \
            pytest.raises(ApiError) as refused:
        client.submit({})
    assert str(refused.value).endswith(message) and refused.value.status == status


def test_an_unreachable_server_is_named() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with Client("http://127.0.0.1:9", token="", transport=httpx.MockTransport(handler)) as client, \
            pytest.raises(ApiError, match=r"cannot reach the server at http://127.0.0.1:9") as lost:
        client.jobs()
    assert lost.value.status is None


CONVNET_FLAG = "conv:32:3,pool:2,conv:64:3,pool:2,conv:128:3,flatten,dense:10"
CONVNET = [  # the book's chapter-8 convnet, as the API reads it
    {"type": "conv2d", "filters": 32, "kernel_size": 3, "activation": "relu"},
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 64, "kernel_size": 3, "activation": "relu"},
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 128, "kernel_size": 3, "activation": "relu"},
    {"type": "flatten"},
    {"units": 10, "activation": "softmax"},
]


def test_layers_flag() -> None:
    # Dense layers mean what they always meant.
    assert layers("512,10") == [{"units": 512, "activation": "relu"},
                                {"units": 10, "activation": "softmax"}]
    assert layers("256:tanh, 10:linear") == [{"units": 256, "activation": "tanh"},
                                             {"units": 10, "activation": "linear"}]
    assert layers(CONVNET_FLAG) == CONVNET
    assert layers(CONVNET_FLAG.replace("dense:10", "10")) == CONVNET
    assert layers("conv:16:5:2:same:tanh, bn, avgpool:3:1, gap, dropout:0.25, pool, 10:linear") == [
        {"type": "conv2d", "filters": 16, "kernel_size": 5, "strides": 2, "padding": "same",
         "activation": "tanh"},
        {"type": "batch_norm"},
        {"type": "avg_pool2d", "pool_size": 3, "strides": 1},
        {"type": "global_avg_pool2d"},
        {"type": "dropout", "rate": 0.25},
        {"type": "max_pool2d", "pool_size": 2},
        {"units": 10, "activation": "linear"},
    ]
    for bad, says in [("", "'' is not a layer"), ("a,10", "'a' is not a layer"),
                      ("1.5,10", "'1.5' is not a layer"),
                      ("256:swish,10", "unknown activation 'swish'"),
                      ("conv:32,10", "'conv:32': a conv2d layer is written conv:FILTERS:KERNEL"),
                      ("dropout,10", "a dropout layer is written dropout:RATE"),
                      ("pool:2:same,10", "a max_pool2d layer is written pool[:SIZE[:STRIDES]]"),
                      ("flatten:2,10", "a flatten layer is written flatten"),
                      ("conv:32:2.5,10", "'2.5' in 'conv:32:2.5' is not a whole number")]:
        with pytest.raises(Exception, match=re.escape(says)):
            layers(bad)


def test_the_summary_line_names_the_architecture() -> None:
    spec = {**JOB["spec"], "model": {"implementation": "keras", "layers": CONVNET}}
    assert describe_spec(spec).startswith(
        "keras conv32x3-maxpool2-conv64x3-maxpool2-conv128x3-flatten-10 · adam lr 0.001"
    )
    other = [{"type": "conv2d", "filters": 8, "kernel_size": 5, "strides": 2},
             {"type": "batch_norm"}, {"type": "avg_pool2d", "pool_size": 2},
             {"type": "global_avg_pool2d"}, {"type": "dropout", "rate": 0.5},
             {"type": "dense", "units": 10}]
    assert describe_spec({**spec, "model": {"implementation": "keras", "layers": other}}) \
        .startswith("keras conv8x5/2-bn-avgpool2-gap-dropout0.5-10 · ")
    assert describe_spec(JOB["spec"]).startswith("keras 32-10 · ")  # no type: dense


def test_submit_flags_make_a_spec_with_only_what_was_given() -> None:
    assert spec_from(_parser().parse_args(["submit"])) == {}
    args = _parser().parse_args(["submit", "--epochs", "3", "--batch-size", "32", "--optimizer",
                                 "manual_sgd", "--lr", "0.1", "--layers", "128,10",
                                 "--implementation", "naive", "--train-limit", "10000",
                                 "--no-shuffle"])
    assert spec_from(args) == {
        "model": {"implementation": "naive",
                  "layers": [{"units": 128, "activation": "relu"},
                             {"units": 10, "activation": "softmax"}]},
        "optimizer": {"name": "manual_sgd", "learning_rate": 0.1},
        "epochs": 3,
        "batch_size": 32,
        "dataset": {"train_limit": 10000},
        "shuffle": False,
    }


def test_progress_without_a_terminal_prints_one_line_per_epoch() -> None:
    out = io.StringIO()
    view = ProgressView(out, tty=False)
    view.event("state", JOB)
    view.event("batch", json.loads(batch(3).decode().split("data: ")[1]))
    view.event("epoch", {"epoch": 0, "train_loss": 0.5, "train_accuracy": 0.8, "test_loss": 0.4,
                         "test_accuracy": 0.85, "seconds": 1.25})
    view.event("state", {**JOB, "state": "succeeded"})
    assert out.getvalue().splitlines() == [
        "job 3 is running: keras 32-10 · adam lr 0.001 · 2 epochs of batch 100 · 400 images",
        "epoch 1/2  loss 0.5000  acc 80.00%  test loss 0.4000  test acc 85.00%  1.2 s",
    ]


def test_progress_on_a_terminal_draws_a_bar() -> None:
    out = io.StringIO()
    view = ProgressView(out, tty=True)
    view.event("state", JOB)
    view.event("progress", {**JOB["progress"], "loss": 0.5, "samples_per_second": 1234.0,
                            "eta_seconds": 75.0})
    view.event("batch", json.loads(batch(1).decode().split("data: ")[1]))
    bar = out.getvalue().split("\n")[-1]
    assert bar.startswith("\repoch 1/2 ")
    assert "batch 2/4  loss 1.0000  1,234 samples/s  ETA 1:15" in bar
    view.close()
    assert out.getvalue().endswith("\r")


def test_formats() -> None:
    assert [duration(s) for s in (None, 5, 75, 3725)] == ["—", "0:05", "1:15", "1:02:05"]
    table = jobs_table([JOB])
    assert table[0].split() == ["ID", "STATE", "PROGRESS", "LOSS", "TEST", "ACC", "SPEC"]
    assert table[1].split()[:5] == ["3", "running", "38%", "0.5000", "—"]
