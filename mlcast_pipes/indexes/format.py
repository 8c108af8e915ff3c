"""Index file format: ids, column names and dtypes, paths, sidecars and atomic writes.

Every file the pipeline writes goes through here; a CSV is complete only once its sidecar exists.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlcast_pipes.errors import IndexFileError, MLCastPipesError, ParameterError

__all__ = [
    "CSV_SUFFIX",
    "FORMAT_VERSION",
    "INDEX_DIR_ENV",
    "SIDECAR_SUFFIX",
    "STEPS_SUFFIX",
    "TILING_BASE_COLUMNS",
    "TILING_POSITION_COLUMNS",
    "AtomicTextFile",
    "VerifyMode",
    "atomic_write",
    "cleanup_stale_temps",
    "default_index_dir",
    "ensure_writable_dir",
    "file_sha256",
    "format_number",
    "importance_column",
    "index_paths",
    "package_version",
    "quantile_column",
    "read_sidecar",
    "sanitize_id",
    "short_hash",
    "sidecar_path",
    "tiling_columns",
    "tiling_dtypes",
    "utc_now_iso",
    "write_sidecar",
]


#: Version of the on-disk layout of index CSVs and sidecars; a change makes older indexes stale.
FORMAT_VERSION = 1


#: Suffix of an index CSV: ``{index_id}.samples.csv``.
CSV_SUFFIX = ".samples.csv"


#: Suffix of the metadata sidecar: ``{index_id}.meta.json``.
SIDECAR_SUFFIX = ".meta.json"


#: Suffix of a tiling index's per-step statistics: ``{tiling_id}.steps.bin`` (raw records whose
#: dtype and shape the sidecar's ``steps`` entry gives).
STEPS_SUFFIX = ".steps.bin"


#: Columns that place a tile in the archive (every tiling index starts with them).
TILING_POSITION_COLUMNS: tuple[str, ...] = (
    "tile_id",
    "time_start",
    "t_start",
    "y_start",
    "x_start",
    "n_time_window",
    "y_tile",
    "x_tile",
)

#: Columns of a tiling index that do not depend on the parameters (quantile and importance follow).
TILING_BASE_COLUMNS: tuple[str, ...] = (
    *TILING_POSITION_COLUMNS,
    "nan_count",
    "nan_fraction",
    "sum",
    "mean",
    "max",
    "frac_wet",
    "clip_count",
)


_TMP_PREFIX = "."


_TMP_SUFFIX = ".tmp"


#: errno values of a full disk or quota (a write reports them as IndexFileError)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


_TMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")


_STALE_TMP_AGE_S = 24 * 3600.0


_ID_BAD_CHARS = re.compile(r"(?:[^A-Za-z0-9_.\-]|\.{2,})+")
_MAX_ID_LEN = 120


VerifyMode = Literal["size", "sha256"]


def sanitize_id(text: str, *, fallback: str | None = "dataset") -> str:
    """Make an id filename-safe: only ``[A-Za-z0-9_.-]``, no ``..``, no leading dot.

    Other characters and ``..`` become ``_``, ends are stripped of ``._-``, ids over 120 characters
    get a hash suffix. ``fallback`` is returned when nothing is left (None: raise ParameterError).

    Examples
    --------
    >>> sanitize_id("../../etc/passwd"), sanitize_id("precipitation/it dpc:5min")
    ('etc_passwd', 'precipitation_it_dpc_5min')

    """
    raw = str(text)
    out = _ID_BAD_CHARS.sub("_", raw.strip()).strip("._-")
    if not out:
        if fallback is None:
            raise ParameterError(
                f"identifier {text!r} gives no usable file name; fix: use an id with letters "
                "or digits"
            )
        return fallback
    if len(out) > _MAX_ID_LEN:
        suffix = hashlib.sha256(raw.encode()).hexdigest()[:16]
        out = out[: _MAX_ID_LEN - 17].rstrip("._-") + "-" + suffix
    return out


def format_number(value: float) -> str:
    """Format a number for an id: the shortest text that reads back to the same float (``0.1``).

    Examples
    --------
    >>> format_number(0.1), format_number(5.0), format_number(1e-7)
    ('0.1', '5', '1e-07')

    """
    f = float(value)
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    return repr(f)


def short_hash(obj: Any, n: int = 8) -> str:
    """First ``n`` hex digits of the sha256 of ``obj``'s canonical JSON (tuples read as lists).

    Examples
    --------
    >>> short_hash((0.5, np.float64(0.99))) == short_hash([0.5, 0.99]) == '50d98b4a'
    True

    """
    text = json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def quantile_column(q: float) -> str:
    """Name of the column of quantile ``q``: 0.5 -> ``p50``, 0.99 -> ``p99``, 0.999 -> ``p999``.

    Examples
    --------
    >>> [quantile_column(q) for q in (0.5, 0.99, 0.999)]
    ['p50', 'p99', 'p999']

    """
    pct = round(float(q) * 100.0, 10)
    return "p" + format(pct, "g").replace(".", "").replace("-", "m").replace("+", "")


def importance_column(scale: float) -> str:
    """Name of the DGMR importance column for scale ``s``: 1 -> ``imp_s1``, 0.5 -> ``imp_s0_5``.

    Examples
    --------
    >>> importance_column(1.0), importance_column(0.5)
    ('imp_s1', 'imp_s0_5')

    """
    text = format(round(float(scale), 10), "g").replace(".", "_").replace("+", "")
    return f"imp_s{text}"


def tiling_columns(quantiles: Sequence[float], importance_scales: Sequence[float]) -> list[str]:
    """Columns of a tiling index CSV: :data:`TILING_BASE_COLUMNS`, quantiles, importance columns.

    Examples
    --------
    >>> tiling_columns((0.5, 0.99), (1.0,))[-3:]
    ['p50', 'p99', 'imp_s1']

    """
    return [
        *TILING_BASE_COLUMNS,
        *(quantile_column(q) for q in quantiles),
        *(importance_column(s) for s in importance_scales),
    ]


def tiling_dtypes(columns: Sequence[str], *, nan_count_wide: bool = False) -> dict[str, str]:
    """Compact dtypes to read a tiling index with (int32 positions, float32 statistics).

    ``nan_count_wide`` makes the count columns int64 (tiles with more than 2**31 pixels).

    Examples
    --------
    >>> tiling_dtypes(["tile_id", "time_start", "nan_count", "mean"])
    {'tile_id': 'int32', 'time_start': 'datetime64[ns]', 'nan_count': 'int32', 'mean': 'float32'}

    """
    ints = {"tile_id", "t_start", "y_start", "x_start", "n_time_window", "y_tile", "x_tile"}
    out: dict[str, str] = {}
    for c in columns:
        if c == "time_start":
            out[c] = "datetime64[ns]"
        elif c in ints:
            out[c] = "int32"
        elif c in ("nan_count", "clip_count"):
            out[c] = "int64" if nan_count_wide else "int32"
        else:
            out[c] = "float32"
    return out


def index_paths(index_dir: str | os.PathLike[str], index_id: str) -> tuple[Path, Path]:
    """``(csv_path, sidecar_path)`` of index ``index_id`` in folder ``index_dir``.

    Examples
    --------
    >>> [p.as_posix() for p in index_paths("idx", "radar.64x64.4")]
    ['idx/radar.64x64.4.samples.csv', 'idx/radar.64x64.4.meta.json']

    """
    folder = Path(index_dir)
    return folder / f"{index_id}{CSV_SUFFIX}", folder / f"{index_id}{SIDECAR_SUFFIX}"


def sidecar_path(csv_path: str | os.PathLike[str]) -> Path:
    """The sidecar of an index CSV: ``x.samples.csv`` (or ``x.csv``) -> ``x.meta.json``.

    Examples
    --------
    >>> sidecar_path("idx/radar.samples.csv").as_posix()
    'idx/radar.meta.json'

    """
    p = Path(csv_path)
    name = p.name
    for suffix in (CSV_SUFFIX, ".csv"):
        if name.endswith(suffix):
            return p.with_name(name[: -len(suffix)] + SIDECAR_SUFFIX)
    return p.with_name(name + SIDECAR_SUFFIX)


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 with a ``Z`` suffix, to the second.

    Examples
    --------
    >>> utc_now_iso()  # doctest: +ELLIPSIS
    '20...T...Z'

    """
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AtomicTextFile(io.TextIOBase):
    """Text handle of :func:`atomic_write`; ``nbytes`` and ``sha256`` describe the committed bytes.

    Examples
    --------
    >>> with atomic_write("hello.txt") as fh:
    ...     _ = fh.write("héllo")
    >>> fh.nbytes, fh.sha256 == file_sha256("hello.txt")  # 5 characters, 6 UTF-8 bytes
    (6, True)

    """

    def __init__(self, raw: io.BufferedWriter, encoding: str = "utf-8") -> None:
        super().__init__()
        self._raw = raw
        self._encoding = encoding
        self._hash = hashlib.sha256()
        self.nbytes = 0

    def writable(self) -> bool:
        """Return True: the handle is write-only."""
        return True

    def readable(self) -> bool:
        """Return False: the handle is write-only."""
        return False

    def write(self, s: str) -> int:
        """Write text ``s``; returns the number of characters written."""
        data = s.encode(self._encoding)
        self._raw.write(data)
        self._hash.update(data)
        self.nbytes += len(data)
        return len(s)

    def write_bytes(self, data: bytes) -> int:
        """Write raw bytes (binary index files); returns their number."""
        self._raw.write(data)
        self._hash.update(data)
        self.nbytes += len(data)
        return len(data)

    def flush(self) -> None:
        """Flush the underlying buffered file."""
        if not self._raw.closed:
            self._raw.flush()

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything written so far."""
        return self._hash.hexdigest()

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]  # pandas checks __iter__
        raise io.UnsupportedOperation("AtomicTextFile is write-only")


def _tmp_name(target: Path) -> Path:
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
    rand = secrets.token_hex(4)
    return target.with_name(f"{_TMP_PREFIX}{target.name}.{host}.{os.getpid()}.{rand}{_TMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_writable_dir(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and check that files can be created in it.

    Raises IndexFileError naming the folder and the fix if it cannot be created or written.

    Examples
    --------
    >>> ensure_writable_dir("indexes/radar").is_dir()
    True

    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise IndexFileError(
            f"index folder {str(path)!r} exists but is not a folder; fix: pass a folder as "
            "index_dir"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexFileError(
            f"index folder {str(path)!r} cannot be created ({exc.strerror or exc}); fix: pass an "
            "index_dir you can write to (an existing folder or one whose parent is writable)"
        ) from exc
    if not path.is_dir():
        raise IndexFileError(
            f"index folder {str(path)!r} exists but is not a folder; fix: pass a folder as "
            "index_dir"
        )
    probe = _tmp_name(path / "write-probe")
    try:
        with open(probe, "wb"):
            pass
    except OSError as exc:
        raise IndexFileError(
            f"index folder {str(path)!r} is not writable ({exc.strerror or exc}); fix: pass an "
            "index_dir you can write to, or change the folder's permissions"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return path


def cleanup_stale_temps(
    folder: str | os.PathLike[str], *, max_age_s: float = _STALE_TMP_AGE_S
) -> list[Path]:
    """Remove temp files of interrupted writes in ``folder``; return the removed files.

    A temp file is stale when its writer (same host) is gone or it is older than ``max_age_s``.

    Examples
    --------
    >>> folder = ensure_writable_dir("stale")
    >>> old = folder / ".a.samples.csv.otherhost.123.ab12.tmp"
    >>> old.touch()
    >>> os.utime(old, (0, 0))  # last modified in 1970
    >>> [p.name for p in cleanup_stale_temps(folder)]
    ['.a.samples.csv.otherhost.123.ab12.tmp']

    """
    removed: list[Path] = []
    path = Path(folder)
    if not path.is_dir():
        return removed
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
    now = time.time()
    for entry in path.iterdir():
        match = _TMP_RE.match(entry.name)
        if match is None:
            continue
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        dead = False
        if match["host"] == host:
            pid = int(match["pid"])
            if pid != os.getpid():
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    dead = True
                except OSError:
                    dead = False
        if dead or age > max_age_s:
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    *,
    encoding: str = "utf-8",
    before_commit: Callable[[], None] | None = None,
) -> Iterator[AtomicTextFile]:
    """Write a text file atomically: readers see the old file or the complete new one.

    Yields an :class:`AtomicTextFile` over a hidden temp file, renamed over ``path`` on a clean
    exit (``before_commit`` runs just before); IndexFileError if the folder is not writable.

    Examples
    --------
    >>> with atomic_write("notes.txt") as fh:
    ...     _ = fh.write("first version")
    >>> try:
    ...     with atomic_write("notes.txt") as fh:
    ...         _ = fh.write("half-written second ver")
    ...         raise RuntimeError("interrupted")
    ... except RuntimeError:
    ...     pass
    >>> Path("notes.txt").read_text(), list(Path(".").glob(".notes.txt.*"))
    ('first version', [])

    """
    target = Path(path)
    with contextlib.suppress(OSError):
        cleanup_stale_temps(target.parent)  # left by killed writers
    tmp = _tmp_name(target)
    try:
        raw = open(tmp, "wb")  # noqa: SIM115 - closed below in every path
    except OSError as exc:
        raise IndexFileError(
            f"cannot write {str(target)!r} ({exc.strerror or exc}); fix: make the folder "
            f"{str(target.parent)!r} writable or choose another index folder"
        ) from exc
    handle = AtomicTextFile(raw, encoding=encoding)
    committed = False
    try:
        yield handle
        raw.flush()
        os.fsync(raw.fileno())
        raw.close()
        if before_commit is not None:
            before_commit()
        os.replace(tmp, target)
        committed = True
        _fsync_dir(target.parent)
    except OSError as exc:
        if isinstance(exc, MLCastPipesError) or exc.errno not in _DISK_FULL:
            raise
        raise IndexFileError(
            f"cannot write {str(target)!r}: {exc.strerror or exc}; nothing was written. Fix: "
            f"free space on the disk of {str(target.parent)!r}, or choose another index folder "
            "(index_dir, $MLCAST_PIPES_INDEX_DIR)"
        ) from exc
    finally:
        if not raw.closed:
            raw.close()
        if not committed:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (np.datetime64,)):
        return str(np.datetime_as_string(obj, unit="s"))
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_sidecar(path: str | os.PathLike[str], meta: Mapping[str, Any]) -> None:
    """Write a JSON metadata sidecar atomically (numpy scalars, tuples and arrays converted).

    Examples
    --------
    >>> write_sidecar("demo.meta.json", {"shape": (3, 4), "n": np.int64(7)})
    >>> read_sidecar("demo.meta.json")
    {'shape': [3, 4], 'n': 7}

    """
    text = json.dumps(_jsonable(meta), indent=1, sort_keys=False) + "\n"
    with atomic_write(path) as fh:
        fh.write(text)


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a metadata sidecar; IndexFileError if it is missing or not valid JSON.

    Examples
    --------
    >>> try:
    ...     read_sidecar("absent.meta.json")
    ... except IndexFileError as exc:
    ...     print(exc)
    metadata sidecar 'absent.meta.json' not found; fix: rerun prepare to rebuild the index

    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise IndexFileError(
            f"metadata sidecar {str(p)!r} not found; fix: rerun prepare to rebuild the index"
        ) from exc
    except OSError as exc:
        raise IndexFileError(
            f"metadata sidecar {str(p)!r} cannot be read ({exc.strerror or exc}); fix: check the "
            "file's permissions or rerun prepare"
        ) from exc
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IndexFileError(
            f"metadata sidecar {str(p)!r} is not valid JSON ({exc.msg} at line {exc.lineno}); "
            "fix: rerun prepare (with recompute=True) to rebuild the index"
        ) from exc
    if not isinstance(meta, dict):
        raise IndexFileError(
            f"metadata sidecar {str(p)!r} does not hold a JSON object; fix: rerun prepare"
        )
    return meta


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes.

    Examples
    --------
    >>> _ = Path("abc.txt").write_text("abc")
    >>> file_sha256("abc.txt")[:16]
    'ba7816bf8f01cfea'

    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


#: Environment variable naming the default folder of index files.
INDEX_DIR_ENV = "MLCAST_PIPES_INDEX_DIR"


def package_version() -> str:
    """The installed mlcast-pipes version, recorded in every sidecar.

    Examples
    --------
    >>> package_version().count(".") >= 1
    True

    """
    try:
        return version("mlcast-pipes")
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "0.0.0"


def default_index_dir() -> Path:
    """The default folder of index files: ``$MLCAST_PIPES_INDEX_DIR``, else the cache.

    Examples
    --------
    >>> isinstance(default_index_dir(), Path)
    True

    """
    env = os.environ.get(INDEX_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from mlcast_pipes.catalog import demo_cache_dir

    return demo_cache_dir() / "index"
