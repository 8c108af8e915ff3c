"""The ``mlcast-pipes`` command: ``demo``, ``prepare``, ``inspect`` and ``bench``.

Each subcommand is a thin layer: argument parsing, a call into the library, a printed summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mlcast_pipes.errors import IndexFileError, MLCastPipesError, ParameterError

__all__ = [
    "build_parser",
    "main",
]


def _key_values(items: Sequence[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are read as YAML scalars (numbers, booleans, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParameterError(f"expected key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _tile_size(values: Sequence[int]) -> tuple[int, int]:
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return (values[0], values[1])
    raise ParameterError(f"--tile-size takes one or two numbers (y x), got {list(values)}")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; a help text that says what None means keeps its own."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or "(None:" in text or action.default is argparse.SUPPRESS:
            return text
        if action.option_strings and not isinstance(action.const, bool):
            return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
        return text


class _LazyChoices(Sequence[str]):
    """Choices listed on first use, so that building the parser imports no heavy module."""

    def __init__(self, load: Callable[[], list[str]]) -> None:
        self._load = load
        self._items: list[str] | None = None

    def _list(self) -> list[str]:
        if self._items is None:
            self._items = list(self._load())
        return self._items

    def __getitem__(self, i: Any) -> Any:
        return self._list()[i]

    def __len__(self) -> int:
        return len(self._list())

    def __iter__(self) -> Iterator[str]:
        return iter(self._list())

    def __contains__(self, item: object) -> bool:
        return item in self._list()


def _add_choice(
    p: argparse.ArgumentParser, flag: str, load: Callable[[], list[str]], **kwargs: Any
) -> None:
    """An option whose choices are listed only when parsed or shown in a help text."""
    # add_argument formats the metavar once (which would list the choices): give it one, then
    # remove it so that the help text shows the choices
    action = p.add_argument(flag, choices=_LazyChoices(load), metavar="NAME", **kwargs)
    action.metavar = None


#: The built-in samplers, listed without importing the sampling package (and pandas) for
#: ``--help``; tests/test_cli.py checks them against the registry.
_BUILTIN_SAMPLERS = ("binnorm", "community", "dgmr", "importance", "ldcast", "uniform")


def _sampler_choices() -> list[str]:
    sampling = sys.modules.get("mlcast_pipes.sampling")
    if sampling is None:  # nothing registered beyond the built-ins in this process
        return list(_BUILTIN_SAMPLERS)
    names: list[str] = sampling.available_samplers()
    return names


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset", help="catalog id (e.g. demo, precipitation.dmi_10_minutes), path or URL"
    )
    p.add_argument("--var-name", default=None, help="data variable (None: by CF standard_name)")
    p.add_argument(
        "--catalog",
        default=None,
        help="your own intake catalog YAML file (None: the bundled catalog, or that of the "
        "installed mlcast-datasets package)",
    )
    p.add_argument(
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        help="fsspec option for URLs, repeatable (e.g. anon=true endpoint_url=https://...; "
        "None: the catalog's)",
    )


def _add_tiling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-time-window", type=int, default=12, help="steps per tile")
    p.add_argument("--tile-size", type=int, nargs="+", default=[128], help="tile size: N or Y X")
    p.add_argument(
        "--stride",
        type=int,
        nargs=3,
        default=None,
        metavar=("T", "Y", "X"),
        help="steps between tiles (None: n_time_window x tile size, non-overlapping)",
    )
    p.add_argument(
        "--max-nan-fraction", type=float, default=0.05, help="drop tiles with more NaN than this"
    )
    p.add_argument(
        "--index-dir",
        default=None,
        help="folder of index files (None: $MLCAST_PIPES_INDEX_DIR, else "
        "~/.cache/mlcast-pipes/index)",
    )
    p.add_argument("--recompute", action="store_true", help="recompute a stale index")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mlcast-pipes`` command.

    Examples
    --------
    >>> args = build_parser().parse_args(["prepare", "demo", "--tile-size", "64"])
    >>> args.command, args.tile_size, args.n_time_window
    ('prepare', [64], 12)

    """
    parser = argparse.ArgumentParser(
        prog="mlcast-pipes",
        description="Radar precipitation archives (MLCast zarr) to training batches.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fmt: dict[str, Any] = {"formatter_class": _HelpFormatter}

    demo = sub.add_parser(
        "demo", help="generate the demo archive and run the whole pipeline on it", **fmt
    )
    _add_choice(demo, "--preset", _demo_presets, default="small", help="demo archive size")
    demo.add_argument("--seed", type=int, default=0, help="seed of the demo archive")
    demo.add_argument("--workers", type=int, default=2, help="DataLoader2 worker processes")
    demo.add_argument("--batches", type=int, default=4, help="batches to draw")
    demo.add_argument("--batch-size", type=int, default=8, help="samples per batch")
    demo.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="tile size in pixels (None: 128, or 64 for archives smaller than 512 pixels)",
    )
    demo.add_argument("--out", default="mlcast_out", help="folder for the sample figure")
    demo.add_argument(
        "--config", default=None, help="a pipeline YAML file to run (None: the built-in chain)"
    )
    demo.add_argument(
        "--index-dir", default=None, help="folder of index files (None: the default folder)"
    )
    demo.add_argument("--summary-only", action="store_true", help="only describe the archive")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    prep = sub.add_parser(
        "prepare", help="compute the tiling (and sampling) index ahead of training", **fmt
    )
    _add_dataset_args(prep)
    _add_tiling_args(prep)
    prep.add_argument(
        "--scheduler",
        default=None,
        help="address of a running dask.distributed scheduler to run the pass on",
    )
    prep.add_argument(
        "--n-workers",
        type=int,
        default=None,
        help="start a local dask.distributed cluster of this many worker processes (None: "
        "dask's threads in this process)",
    )
    _add_choice(
        prep, "--sampler", _sampler_choices, default=None, help="also build this sampler's index"
    )
    prep.add_argument(
        "--n-time-sample",
        type=int,
        default=None,
        help="steps per sample (None: the tile's n_time_window)",
    )
    prep.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    prep.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="sampler parameter, repeatable (e.g. n_scalar_total_bins=10; community: "
        "csv=cubes.csv; None: the sampler's defaults)",
    )
    prep.add_argument(
        "--materialize",
        action="store_true",
        help="also write the sampled tiles to {sampling_id}.zarr, one sample per chunk "
        "(a training copy the sampler then reads instead of the source; needs --sampler)",
    )
    prep.add_argument(
        "--stats",
        action="store_true",
        help="also compute the sampled tiles' mean/std for normalize(method='fitted') "
        "({sampling_id}.stats.csv; needs --sampler)",
    )
    prep.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    insp = sub.add_parser(
        "inspect", help="summarise an index file and draw diagnostic figures", **fmt
    )
    insp.add_argument("index", help="a {tiling_id}.samples.csv or {sampling_id}.samples.csv file")
    insp.add_argument("--out", default=None, help="folder for PNG figures (None: beside the index)")
    insp.add_argument("--seed", type=int, default=0, help="seed of the epoch drawn for figures")
    insp.add_argument("--epoch", type=int, default=0, help="epoch drawn for the figures")
    insp.add_argument(
        "--archive",
        default=None,
        help="the archive, to outline its radar coverage (default: the path prepare recorded)",
    )

    bench = sub.add_parser("bench", help="measure prepare and training-read throughput", **fmt)
    bench.add_argument(
        "--what",
        choices=("prepare", "read", "memory", "all"),
        default="all",
        help="what to measure (memory: peak RSS per worker on large frames; not in all)",
    )
    _add_choice(
        bench, "--preset", _demo_presets, default="itdpc", help="demo archive to measure on"
    )
    bench.add_argument(
        "--path", default=None, help="measure on this archive (None: the demo archive)"
    )
    bench.add_argument(
        "--n-times", type=int, default=None, help="frames of the demo archive (None: the preset's)"
    )
    bench.add_argument(
        "--json", default=None, help="also write the figures to this JSON file (None: no file)"
    )
    bench.add_argument(
        "--fraction", type=float, default=0.1, help="share of the valid tiles sampled (read)"
    )
    bench.add_argument("--workers", type=int, default=2, help="DataLoader2 worker processes")
    bench.add_argument(
        "--tile-size", type=int, nargs="+", default=[128], help="tile size: N or Y X"
    )
    bench.add_argument(
        "--n-time-window", type=int, default=12, help="steps per tile (read benchmark)"
    )
    bench.add_argument(
        "--epochs", type=int, default=3, help="epochs per loader; the first one is start-up"
    )
    bench.add_argument(
        "--latency-ms",
        type=float,
        default=None,
        help="also read over a loopback HTTP server sleeping this long per request (read)",
    )
    bench.add_argument(
        "--frame-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("Y", "X"),
        help="frame size of the memory benchmark's demo archive (default 3500 7000)",
    )
    bench.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def _demo_presets() -> list[str]:
    from mlcast_pipes.demo import PRESETS

    return sorted(PRESETS)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mlcast-pipes`` command; returns the exit status.

    Examples
    --------
    >>> main(["inspect", "/nonexistent/x.samples.csv"])  # errors: a message and status 2
    2

    """
    args = build_parser().parse_args(argv)
    try:
        handler = {"demo": _demo, "prepare": _prepare, "inspect": _inspect, "bench": _bench}
        return handler[args.command](args)
    except MLCastPipesError as exc:
        message = _command_line_fix(str(exc)) if isinstance(exc, IndexFileError) else str(exc)
        print(f"mlcast-pipes {args.command}: error: {message}", file=sys.stderr)
        return 2


def _command_line_fix(message: str) -> str:
    """Word a damaged or stale index's fix for the command line (``--recompute``)."""
    head, sep, fix = message.rpartition("fix:")
    if not sep or "recompute" not in fix:
        return message
    return f"{head}fix: rerun this command with --recompute to rebuild the index"


def _demo(args: argparse.Namespace) -> int:
    import mlcast_pipes as mp
    from mlcast_pipes.catalog import demo_cache_dir
    from mlcast_pipes.demo import describe, ensure_demo

    if args.config:
        # describe the archives the configuration reads, not the demo archive
        pipe = mp.load_pipeline(args.config)
        for url in _configured_archives(pipe):
            print(f"configured archive: {url}")
            print(describe(url))
        if args.summary_only:
            return 0
    else:
        path = ensure_demo(
            demo_cache_dir() / f"demo-{args.preset}-seed{args.seed}.zarr",
            args.preset,
            args.seed,
            progress=not args.no_progress,
        )
        print(f"demo archive: {path}")
        print(describe(path))
        if args.summary_only:
            return 0
        size = args.tile_size or _demo_tile_size(path)
        pipe = mp.compose(
            [
                mp.OpenXarrayDataset(str(path)),
                mp.TilingSampler(
                    n_time_window=12,
                    tile_size=(size, size),
                    index_dir=args.index_dir,
                    progress=not args.no_progress,
                ),
                mp.BinNormSampler(aggregation="sum", n_scalar_total_bins=10),
                mp.NormalizeForTraining(),
                mp.ToTorchTensor(batch_size=args.batch_size, n_input=4, n_target=8, metadata=True),
            ]
        )
    loader = mp.make_dataloader(pipe, num_workers=args.workers)
    n_samples = 0
    first: Any = None
    start = time.perf_counter()
    try:
        for i, batch in enumerate(loader):
            if first is None:
                first = batch
            n_samples += _batch_len(batch)
            if i + 1 >= args.batches:
                break
    finally:
        loader.shutdown()
    elapsed = time.perf_counter() - start
    print(
        f"\nDataLoader2 with {args.workers} worker processes: {n_samples} samples in "
        f"{elapsed:.2f} s ({n_samples / max(elapsed, 1e-9):.1f} samples/s, start-up included)"
    )
    if first is not None:
        print("batch:", _shapes(first))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from mlcast_pipes.plots import plot_batch_sample

        figure = plot_batch_sample(first, out / "demo_sample.png")
        print(f"sample figure: {figure}")
    return 0


def _configured_archives(pipe: Any) -> list[str]:
    """Path or URL of every archive a pipeline's sources open."""
    from mlcast_pipes.datapipes.source import _SingleSource
    from mlcast_pipes.datapipes.steps import walk

    out: list[str] = []
    for dp in walk(pipe):
        if isinstance(dp, _SingleSource):
            spec = dp.opener.open(dp.source).encoding.get("mlcast_source")
            out.append(str(getattr(spec, "url", None) or dp.source))
    return out


def _demo_tile_size(path: Path) -> int:
    """128-pixel tiles, or 64 on archives too small to hold 128-pixel tiles without much NaN."""
    from mlcast_pipes.dataset import open_mlcast

    da = open_mlcast(str(path))
    return 128 if min(int(da.sizes["y"]), int(da.sizes["x"])) >= 512 else 64


def _batch_len(batch: Any) -> int:
    import torch

    if isinstance(batch, dict):
        key = "inputs" if "inputs" in batch else "data"
        return int(batch[key].shape[0])
    if isinstance(batch, tuple):
        return int(batch[0].shape[0])
    assert isinstance(batch, torch.Tensor)
    return int(batch.shape[0])


def _shapes(batch: Any) -> str:
    import torch

    if isinstance(batch, torch.Tensor):
        return f"tensor {tuple(batch.shape)} {batch.dtype}"
    if isinstance(batch, tuple):
        return ", ".join(_shapes(b) for b in batch)
    parts = [
        f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in batch.items() if isinstance(v, torch.Tensor)
    ]
    if "meta" in batch:
        parts.append(f"meta: {', '.join(batch['meta'])}")
    return "; ".join(parts)


def _prepare(args: argparse.Namespace) -> int:
    import contextlib

    from mlcast_pipes.dataset import open_mlcast
    from mlcast_pipes.indexes.format import default_index_dir
    from mlcast_pipes.indexes.plan import TilingPlan
    from mlcast_pipes.tiling import TilingParams

    if args.materialize and not args.sampler:
        raise ParameterError(
            "--materialize copies the samples of a sampling: add --sampler NAME (e.g. binnorm)"
        )
    if args.stats and not args.sampler:
        raise ParameterError(
            "--stats computes the statistics of a sampling: add --sampler NAME (e.g. binnorm)"
        )
    params = TilingParams(
        n_time_window=args.n_time_window,
        tile_size=_tile_size(args.tile_size),
        stride=None if args.stride is None else tuple(args.stride),
        max_nan_fraction=args.max_nan_fraction,
    )
    da = open_mlcast(
        args.dataset,
        args.var_name,
        catalog=args.catalog,
        storage_options=_key_values(args.storage_option) or None,
    )
    index_dir = Path(args.index_dir) if args.index_dir else default_index_dir()
    plan = TilingPlan(params, index_dir, recompute=args.recompute, progress=not args.no_progress)
    with contextlib.ExitStack() as stack:
        if args.scheduler or args.n_workers:
            from distributed import Client, LocalCluster

            if args.scheduler:
                client = stack.enter_context(Client(args.scheduler))
            else:
                cluster = stack.enter_context(
                    LocalCluster(n_workers=args.n_workers, dashboard_address=":0")
                )
                client = stack.enter_context(Client(cluster))
            print(f"dask cluster: {client.dashboard_link}")
        table = plan.table(da)
    print(table.index.summary())
    print(f"tiling index: {table.index.path}")
    if args.sampler:
        sampling = table.sampling_index(
            args.sampler,
            _key_values(args.param),
            n_time_sample=args.n_time_sample,
            seed=args.seed,
            index_dir=index_dir,
            recompute=args.recompute,
        )
        print(f"sampling index: {sampling.path} ({len(sampling.table)} samples in the pool)")
        if args.stats:
            from mlcast_pipes.indexes.sampling_stats import sampling_stats

            stats = sampling_stats(
                table,
                sampling,
                seed=args.seed,
                recompute=args.recompute,
                progress=not args.no_progress,
            )
            print(
                f"statistics: {stats.path} (mean {stats.mean:.6g}, std {stats.std:.6g} mm/h "
                f"of {stats.variable}; use .normalize(method='fitted'))"
            )
        if args.materialize:
            from mlcast_pipes.indexes.training_copy import copy_path, materialize

            target = materialize(
                sampling.table,
                sampling.meta,
                table.info,
                copy_path(index_dir, sampling.sampling_id),
                progress=not args.no_progress,
            )
            size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**20
            print(
                f"training copy: {target} ({len(sampling.table)} samples, {size:.1f} MiB); "
                "the same sampler reads it from now on"
            )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from mlcast_pipes.plots import inspect_index

    report = inspect_index(
        args.index, out_dir=args.out, seed=args.seed, epoch=args.epoch, archive=args.archive
    )
    print(report)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mlcast_pipes.bench import run_bench

    report = run_bench(
        what=args.what,
        preset=args.preset,
        path=args.path,
        n_times=args.n_times,
        json_path=args.json,
        fraction=args.fraction,
        workers=args.workers,
        epochs=args.epochs,
        tile_size=_tile_size(args.tile_size),
        n_time_window=args.n_time_window,
        latency_ms=args.latency_ms,
        frame_size=None if args.frame_size is None else tuple(args.frame_size),
        progress=not args.no_progress,
    )
    print(report)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
