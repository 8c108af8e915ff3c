"""Measure two fault-report times quoted in the README (run by hand, not by pytest).

``python tests/measure_faults.py``: (1) a worker SIGKILLed between two epochs of
``make_dataloader(pipe, num_workers=2)``: seconds until the next epoch raises
``WorkerDiedError``; (2) an S3 server (moto, on 127.0.0.1) stopped with SIGSTOP after the
reader opened the archive: seconds until a read raises ``ReadError`` with default settings.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import mlcast_pipes as mp  # noqa: E402
from mlcast_pipes.demo import generate_demo  # noqa: E402
from mlcast_pipes.loader import _processes  # noqa: E402
from mlcast_pipes.reader import FrameReader  # noqa: E402


def dead_worker(archive: Path, index_dir: Path) -> float:
    pipe = (
        mp.OpenXarrayDataset(str(archive))
        .tile(n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=index_dir)
        .sample("uniform", seed=5)
        .normalize()
        .to_tensor(batch_size=4)
    )
    loader = mp.make_dataloader(pipe, num_workers=2)
    try:
        for _ in loader:
            pass
        victim = _processes(loader.dataloader.reading_service)[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=5)
        start = time.monotonic()
        try:
            for _ in loader:
                pass
        except mp.WorkerDiedError:
            return time.monotonic() - start
        raise AssertionError("no WorkerDiedError")
    finally:
        loader.shutdown()


def silent_s3(archive: Path) -> float:
    import s3fs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    options = {"key": "testing", "secret": "testing", "endpoint_url": endpoint}
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
        fs.mkdir("silent")
        fs.put(str(archive), "silent/tiny.zarr", recursive=True)
        reader = FrameReader("s3://silent/tiny.zarr", "rainfall_rate", storage_options=options)
        reader.read_frames(0, 1)
        server.send_signal(signal.SIGSTOP)
        start = time.monotonic()
        try:
            reader.read_frames(2, 3)
        except mp.ReadError as exc:
            print("   ", str(exc)[:200])
            return time.monotonic() - start
        raise AssertionError("no ReadError")
    finally:
        server.send_signal(signal.SIGCONT)
        server.kill()
        server.wait()


if __name__ == "__main__":
    folder = Path(tempfile.mkdtemp(prefix="mlcast-measure-"))
    archive = generate_demo(folder / "tiny.zarr", preset="tiny", seed=0)
    print(f"dead worker at an epoch boundary: {dead_worker(archive, folder / 'idx'):.2f} s")
    print(f"silent S3 server (SIGSTOP), default settings: {silent_s3(archive):.1f} s")
