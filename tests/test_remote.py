"""Remote archives for real: an S3 server (moto) and a plain HTTP server on loopback, with faults.

The tiny demo archive is uploaded to both; opening, preparing and training reads through ``s3://``
and ``http://`` URLs (and a catalog entry like the community's) must give the local values.
Injected failures check that transient errors are retried within a bound and that every error
names the URL.
"""

from __future__ import annotations

import functools
import itertools
import logging
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torchdata.datapipes.iter import IterableWrapper

import mlcast_pipes as mp
from mlcast_pipes.dataset import with_timeouts
from mlcast_pipes.errors import DatasetError, ParameterError, ReadError
from mlcast_pipes.indexes.plan import prepare_index
from mlcast_pipes.reader import READ_DEADLINE, FrameReader, close_readers, get_reader
from mlcast_pipes.tiling import TilingParams
from mlcast_pipes.tiling import stats as tiling

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
aiohttp = pytest.importorskip("aiohttp")

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::mlcast_pipes.dataset.MLCastSpecWarning"),
]

VAR = "rainfall_rate"
CREDENTIALS = {"key": "testing", "secret": "testing"}
TILE_KW: dict[str, Any] = {"n_time_window": 6, "tile_size": (64, 64), "max_nan_fraction": 0.5}
PARAMS = TilingParams(**TILE_KW)
HANG = 0  # a fault "status" meaning: answer nothing until released (or 20 s)


# --------------------------------------------------------------------------------------------
# servers with fault injection
# --------------------------------------------------------------------------------------------


class Faults:
    """Failures to inject by request path: the next ``times`` GETs (-1: all) answer ``status``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: dict[str, list[int]] = {}
        self.calls: Counter[str] = Counter()
        self.release = threading.Event()

    def fail(self, path: str, times: int, status: int) -> None:
        with self._lock:
            self._rules[path] = [times, status]

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self.calls.clear()

    def on_get(self, path: str) -> int | None:
        """Count a GET of ``path``; return the status to fail it with, or None to serve it."""
        with self._lock:
            self.calls[path] += 1
            rule = self._rules.get(path)
            if rule is None or rule[0] == 0:
                return None
            if rule[0] > 0:
                rule[0] -= 1
            return rule[1]


@dataclass
class Remote:
    """A served copy of the tiny archive."""

    url: str
    options: dict[str, Any]
    faults: Faults
    prefix: str  # request path of the store, e.g. "/bucket/tiny.zarr"
    endpoint: str = ""
    public_url: str = ""

    def chunk(self, t: int) -> str:
        """Request path of the chunk of frame ``t`` (zarr v2, one chunk per step)."""
        return f"{self.prefix}/{VAR}/{t}.0.0"


_S3_CODES = {403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}


def _s3_with_faults(app: Callable[..., Any], faults: Faults) -> Callable[..., Any]:
    """WSGI middleware in front of moto answering injected faults as S3 error documents."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD") == "GET":
            status = faults.on_get(str(environ.get("PATH_INFO", "")))
            if status == HANG:
                faults.release.wait(20.0)  # bounded: the fixture releases it at teardown
                return app(environ, start_response)
            if status is not None:
                code = _S3_CODES[status]
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>'
                    f"<Error><Code>{code}</Code><Message>injected fault</Message></Error>"
                ).encode()
                headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
                start_response(f"{status} {code}", headers)
                return [body]
        return app(environ, start_response)

    return wrapped


@pytest.fixture(scope="module")
def s3_server(tiny_archive: Path) -> Iterator[Remote]:
    """A moto S3 server on 127.0.0.1 holding the tiny archive, private and public copies."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    faults = Faults()
    try:
        inner = server._server  # werkzeug server: put the fault middleware in front of moto
        inner.app = _s3_with_faults(inner.app, faults)
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        bucket = f"mlcast-{uuid.uuid4().hex[:10]}"
        fs = s3fs.S3FileSystem(**CREDENTIALS, endpoint_url=endpoint, skip_instance_cache=True)
        fs.mkdir(bucket)
        fs.put(str(tiny_archive), f"{bucket}/tiny.zarr", recursive=True)
        public = s3fs.S3FileSystem(
            **CREDENTIALS,
            endpoint_url=endpoint,
            skip_instance_cache=True,
            s3_additional_kwargs={"ACL": "public-read"},
        )
        public.put(str(tiny_archive), f"{bucket}/public/tiny.zarr", recursive=True)
        yield Remote(
            url=f"s3://{bucket}/tiny.zarr",
            options={"anon": False, **CREDENTIALS, "endpoint_url": endpoint},
            faults=faults,
            prefix=f"/{bucket}/tiny.zarr",
            endpoint=endpoint,
            public_url=f"s3://{bucket}/public/tiny.zarr",
        )
    finally:
        faults.release.set()
        close_readers()
        server.stop()


class _Handler(SimpleHTTPRequestHandler):
    faults: Faults

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        status = self.faults.on_get(self.path)
        if status is None:
            super().do_GET()
        elif status == HANG:
            self.faults.release.wait(20.0)  # bounded: the fixture releases it at teardown
            self.close_connection = True
        else:
            self.send_error(status)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # http.server listens with a backlog of 5 and answers HTTP/1.0 (a connection per request):
    # the reads' and fetch-ahead's bursts of connections overflowed it, and the dropped SYNs,
    # retried by the kernel after 1, 2, 4, 8, 16 s, stalled a read past its 20 s deadline
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out close their sockets; nothing to report


@pytest.fixture(scope="module")
def http_server(tiny_archive: Path) -> Iterator[Remote]:
    """python's http.server on 127.0.0.1 serving the folder of the tiny archive."""
    faults = Faults()
    handler = type("Handler", (_Handler,), {"faults": faults})
    server = _Server(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(tiny_archive.parent))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield Remote(
            url=f"http://127.0.0.1:{port}/{tiny_archive.name}",
            options={},
            faults=faults,
            prefix=f"/{tiny_archive.name}",
        )
    finally:
        faults.release.set()
        close_readers()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def s3(s3_server: Remote) -> Iterator[Remote]:
    s3_server.faults.clear()
    yield s3_server
    s3_server.faults.clear()


@pytest.fixture
def http(http_server: Remote) -> Iterator[Remote]:
    http_server.faults.clear()
    yield http_server
    http_server.faults.clear()


@pytest.fixture(autouse=True)
def _fresh_readers() -> Iterator[None]:
    """No decoded frame cached by one test may hide a fault injected by the next."""
    close_readers()
    yield
    close_readers()


# --------------------------------------------------------------------------------------------
# local references
# --------------------------------------------------------------------------------------------


def _sampled(source: str, index_dir: Path, **open_kw: Any) -> Any:
    """The training chain of the issue: open, tile, BinNorm sample, normalise, batch."""
    return (
        IterableWrapper([source])
        .open_mlcast(**open_kw)
        .tile(index_dir=index_dir, **TILE_KW)
        .binnorm_sample(n_scalar_total_bins=5, n_samples=24, seed=3)
        .normalize()
        .to_tensor(batch_size=4)
    )


def _all_tiles(source: str, index_dir: Path, **open_kw: Any) -> Any:
    """Every kept tile in time order, normalised, in batches of 16."""
    return (
        IterableWrapper([source])
        .open_mlcast(**open_kw)
        .tile(index_dir=index_dir, **TILE_KW)
        .normalize()
        .to_tensor(batch_size=16)
    )


@pytest.fixture(scope="module")
def local(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The local archive, its tiling index and the batches of both chains."""
    folder = tmp_path_factory.mktemp("remote-local-index")
    da = mp.open_mlcast(str(tiny_archive))
    index = prepare_index(da, PARAMS, folder)
    return {
        "da": da,
        "index": index,
        "sampled": list(_sampled(str(tiny_archive), folder)),
        "all": list(_all_tiles(str(tiny_archive), folder)),
    }


def _assert_same_batches(got: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(got) == len(ref) > 0
    for a, b in zip(got, ref, strict=True):
        assert a.shape == b.shape
        assert torch.equal(a, b)


def _read_frames(remote: Remote, t0: int, t1: int, **kw: Any) -> np.ndarray:
    kw.setdefault("retry_backoff", 0.01)
    reader = FrameReader(remote.url, VAR, storage_options=remote.options, cache_bytes=0, **kw)
    return reader.read_frames(t0, t1)


# --------------------------------------------------------------------------------------------
# S3: open, prepare, train
# --------------------------------------------------------------------------------------------


def test_s3_open_matches_local(s3: Remote, local: dict[str, Any]) -> None:
    da = mp.open_mlcast(s3.url, storage_options=s3.options)
    ref = local["da"]
    assert da.dims == ("time", "y", "x") and da.shape == ref.shape
    for name in ("time", "y", "x"):
        np.testing.assert_array_equal(da[name].values, ref[name].values)
    np.testing.assert_array_equal(da.attrs["missing_times"], ref.attrs["missing_times"])
    assert da.attrs["dataset_id"] == ref.attrs["dataset_id"]
    # same metadata, same fingerprint: an index made from a local copy fits the remote one
    assert mp.dataset.fingerprint(da) == mp.dataset.fingerprint(ref)
    spec = mp.dataset.source_spec(da)
    assert spec.url == s3.url and spec.storage_options["endpoint_url"] == s3.endpoint
    sel = {"time": [0, 64, 129]}
    np.testing.assert_array_equal(da.isel(sel).values, ref.isel(sel).values)
    got = _read_frames(s3, 60, 63)
    np.testing.assert_array_equal(got, ref.isel(time=slice(60, 63)).values)


def test_s3_prepare_index_equals_local(s3: Remote, local: dict[str, Any], tmp_path: Path) -> None:
    da = mp.open_mlcast(s3.url, storage_options=s3.options)
    index = prepare_index(da, PARAMS, tmp_path)
    ref = local["index"]
    assert index.tiling_id == ref.tiling_id
    assert index.meta["csv_sha256"] == ref.meta["csv_sha256"]  # byte-identical statistics
    pd.testing.assert_frame_equal(index.table, ref.table)


def test_s3_training_chain_equals_local(s3: Remote, local: dict[str, Any], tmp_path: Path) -> None:
    batches = list(_sampled(s3.url, tmp_path, storage_options=s3.options))
    _assert_same_batches(batches, local["sampled"])
    assert batches[0].shape == (4, 6, 64, 64)


def _write_catalog(folder: Path, entries: dict[str, Any]) -> Path:
    """A root catalog nesting ``precipitation.yml``, like the community's mlcast-datasets."""
    root = folder / "catalog.yml"
    nested = folder / "precipitation" / "catalog.yml"
    nested.parent.mkdir(parents=True)
    root.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    "precipitation": {
                        "driver": "intake.catalog.local.YAMLFileCatalog",
                        "args": {"path": "{{ CATALOG_DIR }}/precipitation/catalog.yml"},
                    }
                }
            }
        )
    )
    nested.write_text(yaml.safe_dump({"sources": entries}))
    return root


def _zarr_entry(urlpath: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    return {
        "driver": "zarr",
        "description": "the tiny demo archive on a loopback S3 server",
        "args": {"urlpath": urlpath, "consolidated": True, "storage_options": storage_options},
        "metadata": {"variable": VAR},
    }


def test_catalog_entry_for_s3_archives(s3: Remote, local: dict[str, Any], tmp_path: Path) -> None:
    root = _write_catalog(
        tmp_path,
        {
            "private_tiny": _zarr_entry(s3.url, s3.options),
            # exactly the community form: anonymous access and an endpoint
            "public_tiny": _zarr_entry(s3.public_url, {"anon": True, "endpoint_url": s3.endpoint}),
        },
    )
    ref = local["da"]
    for full_id, short in (
        ("precipitation.private_tiny", "private_tiny"),
        ("precipitation.public_tiny", "public_tiny"),
    ):
        for name in (full_id, short):
            da = mp.open_mlcast(name, catalog=root)
            # the archive's own id, as for its local copy: one index whichever way it is named
            assert da.attrs["dataset_id"] == ref.attrs["dataset_id"]
            np.testing.assert_array_equal(da.isel(time=7).values, ref.isel(time=7).values)
    # the training chain, from the catalog id to batches; same values as the local archive
    index_dir = tmp_path / "index"
    got = list(itertools.islice(_all_tiles("public_tiny", index_dir, catalog=str(root)), 3))
    _assert_same_batches(got, local["all"][:3])
    assert sorted(p.name for p in index_dir.glob(f"{ref.attrs['dataset_id']}.*.samples.csv"))


def test_private_bucket_refuses_anonymous_access(s3: Remote) -> None:
    with pytest.raises(DatasetError) as info:
        mp.open_mlcast(s3.url, storage_options={"anon": True, "endpoint_url": s3.endpoint})
    msg = str(info.value)
    assert s3.url in msg and "not public" in msg and "credentials" in msg


def test_s3_store_that_does_not_exist(s3: Remote) -> None:
    missing = s3.url.replace("tiny.zarr", "nothing-here.zarr")
    with pytest.raises(DatasetError, match="no zarr store found") as info:
        mp.open_mlcast(missing, storage_options=s3.options)
    assert missing in str(info.value)


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def test_http_open_prepare_and_train(http: Remote, local: dict[str, Any], tmp_path: Path) -> None:
    da = mp.open_mlcast(http.url)
    ref = local["da"]
    np.testing.assert_array_equal(da["time"].values, ref["time"].values)
    np.testing.assert_array_equal(da.isel(time=[3, 90]).values, ref.isel(time=[3, 90]).values)
    index = prepare_index(da, PARAMS, tmp_path)
    assert index.meta["csv_sha256"] == local["index"].meta["csv_sha256"]
    _assert_same_batches(list(_sampled(http.url, tmp_path)), local["sampled"])


def test_http_store_that_does_not_exist(http: Remote) -> None:
    missing = http.url.replace("tiny.zarr", "nothing-here.zarr")
    with pytest.raises(DatasetError, match="no zarr store found") as info:
        mp.open_mlcast(missing)
    assert missing in str(info.value)


# --------------------------------------------------------------------------------------------
# transient faults: retried within a bound
# --------------------------------------------------------------------------------------------


def test_http_transient_errors_are_retried(http: Remote, local: dict[str, Any]) -> None:
    http.faults.fail(http.chunk(3), 2, 503)
    got = _read_frames(http, 0, 6, retries=3)
    np.testing.assert_array_equal(got, local["da"].isel(time=slice(0, 6)).values)
    assert http.faults.calls[http.chunk(3)] == 3


@pytest.mark.parametrize("status", [500, 503])
def test_s3_transient_errors_are_retried(s3: Remote, local: dict[str, Any], status: int) -> None:
    s3.faults.fail(s3.chunk(3), 2, status)
    got = _read_frames(s3, 2, 5, retries=3)
    np.testing.assert_array_equal(got, local["da"].isel(time=slice(2, 5)).values)
    assert s3.faults.calls[s3.chunk(3)] == 3


def test_http_always_failing_chunk_gives_up_in_bounded_time(http: Remote) -> None:
    http.faults.fail(http.chunk(4), -1, 503)
    start = time.monotonic()
    with pytest.raises(ReadError) as info:
        _read_frames(http, 0, 6, retries=2)
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert "frame 4" in msg and http.url in msg and "3 times" in msg
    assert http.faults.calls[http.chunk(4)] == 3  # first try + 2 retries, nothing more


def test_s3_always_failing_chunk_costs_retries_plus_one_requests(s3: Remote) -> None:
    # botocore's own retries (5 by default) would multiply the reader's: 20 requests, ~35 s
    s3.faults.fail(s3.chunk(4), -1, 500)
    start = time.monotonic()
    with pytest.raises(ReadError) as info:
        _read_frames(s3, 3, 6, retries=3)
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert "frame 4" in msg and s3.url in msg and "4 times" in msg
    assert s3.faults.calls[s3.chunk(4)] == 4


def test_s3_throttling_is_bounded_too(s3: Remote) -> None:
    # s3fs retries "SlowDown" five times by itself (~2 s); the reader adds nothing when retries=0
    s3.faults.fail(s3.chunk(5), -1, 503)
    start = time.monotonic()
    with pytest.raises(ReadError, match="frame 5"):
        _read_frames(s3, 5, 6, retries=0)
    assert time.monotonic() - start < 15
    assert 1 <= s3.faults.calls[s3.chunk(5)] <= 5  # s3fs's own tries only


def test_silent_server_times_out_and_names_the_url(http: Remote) -> None:
    http.faults.fail(http.chunk(2), -1, HANG)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=0.5)
    reader = FrameReader(
        http.url,
        VAR,
        storage_options={"client_kwargs": {"timeout": timeout}},
        retries=1,
        retry_backoff=0.01,
    )
    start = time.monotonic()
    with pytest.raises(ReadError) as info:
        reader.read_frames(2, 3)
    assert time.monotonic() - start < 10
    assert "frame 2" in str(info.value) and http.url in str(info.value)
    assert http.faults.calls[http.chunk(2)] == 2


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_silent_server_is_reported_within_the_read_deadline(
    kind: str, request: pytest.FixtureRequest
) -> None:
    # default read timeouts (30 s): the deadline over all retries decides
    remote: Remote = request.getfixturevalue(kind)
    reader = FrameReader(remote.url, VAR, storage_options=remote.options, read_deadline=2)
    reader.read_frames(0, 1)  # opened while the server answered
    remote.faults.fail(remote.chunk(2), -1, HANG)
    start = time.monotonic()
    with pytest.raises(ReadError) as info:
        reader.read_frames(2, 3)
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert "frame 2" in msg and remote.url in msg and "read deadline (2 s" in msg


def test_read_deadline_default_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    assert FrameReader("x.zarr", VAR).read_deadline == READ_DEADLINE < 60
    monkeypatch.setenv("MLCAST_PIPES_READ_DEADLINE", "5")
    assert FrameReader("x.zarr", VAR).read_deadline == 5
    monkeypatch.setenv("MLCAST_PIPES_READ_DEADLINE", "none")
    assert FrameReader("x.zarr", VAR).read_deadline is None
    with pytest.raises(ParameterError, match="read_deadline"):
        FrameReader("x.zarr", VAR, read_deadline=-1)


def _read_options(url: str, options: dict | None) -> dict:
    return with_timeouts(url, options, s3_attempts=1)


def test_reader_bounds_remote_reads_by_default() -> None:
    http_opts = _read_options("https://example.org/a.zarr", None)
    timeout = http_opts["client_kwargs"]["timeout"]
    assert timeout.sock_connect == 10 and timeout.sock_read == 30
    s3_opts = _read_options("s3://bucket/a.zarr", {"anon": True})
    assert s3_opts["anon"] is True
    assert s3_opts["config_kwargs"]["retries"]["total_max_attempts"] == 1
    # what the user gives wins
    mine = {"config_kwargs": {"retries": {"max_attempts": 7}}}
    assert _read_options("s3://b/a.zarr", mine)["config_kwargs"]["retries"] == {"max_attempts": 7}
    assert _read_options("/local/a.zarr", None) == {}


def test_unreachable_endpoint_is_retried_then_named() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {**CREDENTIALS, "endpoint_url": f"http://127.0.0.1:{port}"}
    reader = FrameReader(
        "s3://bucket/tiny.zarr", VAR, storage_options=options, retries=1, retry_backoff=0.01
    )
    start = time.monotonic()
    with pytest.raises(ReadError, match="after 2 attempts") as info:
        reader.read_frames(0, 1)
    assert time.monotonic() - start < 20
    assert "s3://bucket/tiny.zarr" in str(info.value)


def test_chain_survives_transient_faults(
    http: Remote, local: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flaky chunks while preparing (dask pass) and while training (reader): same batches."""
    monkeypatch.setattr(tiling, "COMPUTE_RETRY_BACKOFF_S", 0.01)
    starts = np.unique(local["index"].table["t_start"].to_numpy())
    flaky = [http.chunk(int(t) + 1) for t in (starts[0], starts[len(starts) // 2], starts[-1])]
    for path in flaky:
        http.faults.fail(path, 2, 503)
    da = mp.open_mlcast(http.url)
    index = prepare_index(da, PARAMS, tmp_path)  # each flaky block is read again
    assert index.meta["csv_sha256"] == local["index"].meta["csv_sha256"]
    before = {p: http.faults.calls[p] for p in flaky}
    assert all(n >= 3 for n in before.values())
    for path in flaky:
        http.faults.fail(path, 2, 503)
    get_reader(http.url, VAR, {}, retry_backoff=0.01)  # the chain's reader, quick retries
    _assert_same_batches(list(_all_tiles(http.url, tmp_path)), local["all"])
    assert all(http.faults.calls[p] == before[p] + 3 for p in flaky)  # 2 failures, 1 read


def test_prepare_gives_up_on_a_chunk_that_keeps_failing(
    http: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiling, "COMPUTE_RETRY_BACKOFF_S", 0.01)
    http.faults.fail(http.chunk(1), -1, 503)
    da = mp.open_mlcast(http.url)
    with pytest.raises(ReadError) as info:
        prepare_index(da, PARAMS, tmp_path)
    msg = str(info.value)
    assert http.url in msg and "after 4 attempts" in msg and "503" in msg
    assert not list(tmp_path.glob("*.samples.csv"))  # no index that looks complete
    assert not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------------------------
# permanent faults: at once, naming the URL
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["s3", "http"])
def test_denied_chunk_fails_at_once_naming_the_url(
    kind: str, request: pytest.FixtureRequest, local: dict[str, Any], tmp_path: Path
) -> None:
    remote: Remote = request.getfixturevalue(kind)
    remote.faults.fail(remote.chunk(3), -1, 403)
    start = time.monotonic()
    with pytest.raises(ReadError) as info:
        _read_frames(remote, 2, 5, retries=3)
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert "frame 3" in msg and remote.url in msg and "denied" in msg
    assert "corrupted" not in msg
    assert remote.faults.calls[remote.chunk(3)] == 1  # not retried


def test_permanent_error_through_the_chain_names_frame_and_url(
    s3: Remote, local: dict[str, Any]
) -> None:
    # the tiling index exists already (made from the local copy: same id and fingerprint)
    folder = local["index"].path.parent
    t = int(local["index"].table["t_start"].iloc[0])
    s3.faults.fail(s3.chunk(t), -1, 403)
    with pytest.raises(ReadError) as info:
        list(_all_tiles(s3.url, folder, storage_options=s3.options))
    msg = str(info.value)
    assert f"frame {t}" in msg and s3.url in msg
