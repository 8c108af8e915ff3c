"""Lazy imports: the package and its command line load torch only when a datapipe is used.

Each check runs in a fresh interpreter, since this test session has imported torch already.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlcast_pipes


def _run(code: str, *, cwd: Path | None = None) -> str:
    root = str(Path(mlcast_pipes.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_importing_the_package_does_not_import_torch() -> None:
    out = _run(
        """
        import sys
        import mlcast_pipes as mp
        print("torch" in sys.modules, mp.ParameterError.__name__, "torch" in sys.modules)
        """
    )
    assert out == "False ParameterError False"


def test_functionals_are_registered_once_torch_is_imported() -> None:
    out = _run(
        """
        import sys
        import mlcast_pipes
        from torchdata.datapipes.iter import IterableWrapper
        dp = IterableWrapper(["a.zarr"]).open_mlcast().tile(n_time_window=4, tile_size=32)
        print(type(dp).__name__, hasattr(dp, "binnorm_sample"))
        """
    )
    assert out == "TileDataPipe True"


def test_functionals_are_registered_when_torch_came_first() -> None:
    out = _run(
        """
        from torchdata.datapipes.iter import IterableWrapper
        import mlcast_pipes
        print(type(IterableWrapper(["a.zarr"]).open_mlcast()).__name__)
        """
    )
    assert out == "MLCastOpener"


def test_public_names_resolve_and_are_listed() -> None:
    out = _run(
        """
        import mlcast_pipes as mp
        missing = [n for n in mp.__all__ if getattr(mp, n, None) is None]
        same = set(mp.__all__) == {*mp._HOME, "__version__"}
        print(missing, same, set(mp.__all__) <= set(dir(mp)), mp.__version__ != "")
        """
    )
    assert out == "[] True True True"


def test_the_command_line_runs_without_torch(tiny_archive: Path, tmp_path: Path) -> None:
    out = _run(
        f"""
        import contextlib, io, sys
        from mlcast_pipes.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            with contextlib.suppress(SystemExit):
                main(["--help"])
            with contextlib.suppress(SystemExit):
                main(["prepare", "--help"])
            rc = main(["prepare", {str(tiny_archive)!r}, "--n-time-window", "12", "--tile-size",
                       "64", "--no-progress", "--index-dir", {str(tmp_path / "idx")!r},
                       "--sampler", "binnorm", "--stats"])
        print(rc, "torch" in sys.modules)
        """
    )
    assert out == "0 False"


def test_spawned_workers_have_the_functionals(tiny_archive: Path, tmp_path: Path) -> None:
    out = _run(
        f"""
        import mlcast_pipes as mp
        from torchdata.datapipes.iter import IterableWrapper
        pipe = (
            IterableWrapper([{str(tiny_archive)!r}])
            .open_mlcast()
            .tile(n_time_window=12, tile_size=64, index_dir={str(tmp_path)!r}, progress=False)
            .binnorm_sample(n_scalar_total_bins=5)
            .normalize()
            .to_tensor(batch_size=4)
        )
        loader = mp.Loader(pipe, num_workers=1, multiprocessing_context="spawn")
        try:
            print(tuple(next(iter(loader)).shape)[0])
        finally:
            loader.shutdown()
        """
    )
    assert out == "4"


def test_the_core_imports_neither_torch_nor_torchdata() -> None:
    out = _run(
        """
        import importlib, pkgutil, sys
        import mlcast_pipes
        core = ["dataset", "tiling", "sampling", "transforms", "indexes", "reader"]
        names = [f"mlcast_pipes.{n}" for n in ["epochs", "delivery", "records", "splits"]]
        for package in core:
            module = importlib.import_module(f"mlcast_pipes.{package}")
            names += [m.name for m in pkgutil.walk_packages(module.__path__, module.__name__ + ".")]
        for name in names:
            importlib.import_module(name)
        print(len(names) > 30, "torch" in sys.modules, "torchdata" in sys.modules)
        """
    )
    assert out == "True False False"
