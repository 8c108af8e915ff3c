"""Tests of mlcast_pipes.catalog: intake-v1 YAML parsing, nested catalogs, id resolution, demo."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from mlcast_pipes import catalog as cat
from mlcast_pipes.catalog import (
    CatalogEntry,
    demo_cache_dir,
    load_catalog,
    resolve_entry,
    resolve_urlpath,
)
from mlcast_pipes.errors import CatalogError

COMMUNITY_IDS = {
    "precipitation.radklim_hourly",
    "precipitation.radklim_5_minutes",
    "precipitation.dmi_10_minutes",
    "precipitation.it_dpc_sri_5min",
    "precipitation.uk_metoffice_5min",
    "precipitation.be_rmi_radclim_mfb_5min",  # new in mlcast-datasets 0.3.0
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def community_style(tmp_path: Path) -> Path:
    """A root catalog plus a nested precipitation catalog, laid out like mlcast-datasets."""
    write(
        tmp_path / "precipitation" / "catalog.yml",
        """
        plugins:
          source:
            - module: intake_xarray

        sources:
          radar_a:
            description : "Radar A, local copy "
            driver: zarr
            args:
              urlpath: "{{ CATALOG_DIR }}/../data/a.zarr"
              consolidated: true
            metadata:
              variable: RR
          radar_b:
            description: "Radar B on S3"
            driver: zarr
            args:
              urlpath: "s3://bucket/b/v0.1.0/b.zarr/"
              consolidated: true
              storage_options:
                anon: true
                endpoint_url: "https://object-store.example.org"
          relative:
            driver: zarr
            args:
              urlpath: "rel/c.zarr"
        """,
    )
    return write(
        tmp_path / "catalog.yml",
        """
        metadata:
          name: my-datasets
          description: |
            Test catalog.

        sources:
          precipitation:
            description: "Precipitation datasets"
            driver: intake.catalog.local.YAMLFileCatalog
            args:
              path: "{{ CATALOG_DIR }}/precipitation/catalog.yml"
        """,
    )


# ----------------------------------------------------------------------------------------------
# bundled catalog


def test_bundled_catalog_lists_community_archives_and_demo() -> None:
    entries = load_catalog()
    assert COMMUNITY_IDS | {"demo"} == set(entries)
    for fid in COMMUNITY_IDS:
        e = entries[fid]
        assert e.driver == "zarr"
        assert e.urlpath.startswith("s3://mlcast-source-datasets/")
        assert e.urlpath.rstrip("/").endswith(".zarr")
        assert e.storage_options == {
            "anon": True,
            "endpoint_url": "https://object-store.os-api.cci2.ecmwf.int",
        }
        assert e.consolidated is True
        assert e.name == fid.split(".")[-1]
        assert e.description
    assert entries["precipitation.dmi_10_minutes"].var_name == "dbz"
    assert entries["precipitation.it_dpc_sri_5min"].var_name == "RR"
    demo = entries["demo"]
    assert demo.driver == "mlcast_demo"
    assert demo.args["preset"] == "small" and demo.args["seed"] == 0


def test_bundled_mirror_has_the_current_community_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cat, "community_catalog", lambda: None)  # the mirror, installed or not
    entry = resolve_entry("be_rmi_radclim_mfb_5min")
    assert entry.id == "precipitation.be_rmi_radclim_mfb_5min"
    assert entry.urlpath == (
        "s3://mlcast-source-datasets/radar_precipitation/BE-RMI-radclim-mfb/v0.1.1/5_minutes.zarr/"
    )
    assert COMMUNITY_IDS | {"demo"} == set(load_catalog())


def fake_community_package(site: Path) -> Path:
    """An installed-looking mlcast_datasets package whose import would fail (needs intake)."""
    write(site / "mlcast_datasets" / "__init__.py", "import intake_is_not_installed_here\n")
    write(
        site / "mlcast_datasets" / "catalog" / "catalog.yml",
        """
        sources:
          precipitation:
            driver: intake.catalog.local.YAMLFileCatalog
            args:
              path: "{{ CATALOG_DIR }}/precipitation/catalog.yml"
        """,
    )
    write(
        site / "mlcast_datasets" / "catalog" / "precipitation" / "catalog.yml",
        """
        sources:
          dmi_10_minutes:
            driver: zarr
            args:
              urlpath: "s3://mlcast-source-datasets/dmi/v0.2.0/dmi_10_minutes.zarr/"
              consolidated: true
              storage_options: {anon: true}
          fr_meteofrance_5min:
            driver: zarr
            args:
              urlpath: "s3://mlcast-source-datasets/fr/v0.1.0/5_minutes.zarr/"
        """,
    )
    return site / "mlcast_datasets" / "catalog" / "catalog.yml"


def test_installed_community_package_catalog_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    root = fake_community_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert cat.community_catalog() == root
    entries = load_catalog()
    # its entries replace the mirror's; the demo stays; the mirror's variable hint is kept
    assert set(entries) == {
        "demo",
        "precipitation.dmi_10_minutes",
        "precipitation.fr_meteofrance_5min",
    }
    dmi = resolve_entry("dmi_10_minutes")
    assert dmi.urlpath == "s3://mlcast-source-datasets/dmi/v0.2.0/dmi_10_minutes.zarr/"
    assert dmi.var_name == "dbz"
    assert resolve_entry("fr_meteofrance_5min").urlpath.endswith("fr/v0.1.0/5_minutes.zarr/")
    assert "mlcast_datasets" not in sys.modules  # found without importing it
    # a user catalog is read as given
    assert "demo" not in load_catalog(root)


def test_bundled_catalog_is_package_data() -> None:
    assert cat.BUNDLED_CATALOG.name == "catalog.yml"
    assert (cat.BUNDLED_CATALOG.parent / "precipitation.yml").is_file()


def test_resolve_full_and_short_ids() -> None:
    full = resolve_entry("precipitation.dmi_10_minutes")
    short = resolve_entry("dmi_10_minutes")
    assert full == short
    assert full.id == "precipitation.dmi_10_minutes"
    assert resolve_entry("demo").id == "demo"


def test_unknown_id_suggests_close_matches_and_lists_ids() -> None:
    with pytest.raises(CatalogError) as info:
        resolve_entry("dmi_10_minute")
    msg = str(info.value)
    assert "unknown dataset id 'dmi_10_minute'" in msg
    assert "Did you mean" in msg and "'dmi_10_minutes'" in msg
    for fid in COMMUNITY_IDS:
        assert fid in msg
    # CatalogError is a KeyError, but prints as a plain message
    assert isinstance(info.value, KeyError)
    assert not msg.startswith('"')


def test_unknown_id_is_case_insensitive_in_suggestions() -> None:
    with pytest.raises(CatalogError, match="Did you mean 'demo'"):
        resolve_entry("DEMO")


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_empty_or_non_string_id(bad: Any) -> None:
    with pytest.raises(CatalogError, match="non-empty string"):
        resolve_entry(bad)


# ----------------------------------------------------------------------------------------------
# user catalogs


def test_user_catalog_nested_like_the_community(tmp_path: Path) -> None:
    root = community_style(tmp_path)
    entries = load_catalog(root)
    assert list(entries) == [
        "precipitation.radar_a",
        "precipitation.radar_b",
        "precipitation.relative",
    ]
    a = entries["precipitation.radar_a"]
    assert Path(a.urlpath) == (tmp_path / "data" / "a.zarr").resolve()
    assert a.var_name == "RR"
    assert a.description == "Radar A, local copy"
    b = resolve_entry("radar_b", root)
    assert b.urlpath == "s3://bucket/b/v0.1.0/b.zarr/"
    assert b.storage_options == {"anon": True, "endpoint_url": "https://object-store.example.org"}
    assert b.consolidated is True
    rel = entries["precipitation.relative"]
    assert Path(rel.urlpath) == tmp_path / "precipitation" / "rel" / "c.zarr"
    assert rel.consolidated is None and rel.storage_options == {}


def test_short_driver_name_and_relative_nested_path(tmp_path: Path) -> None:
    write(
        tmp_path / "sub" / "inner.yaml",
        """
        sources:
          x:
            driver: zarr
            args: {urlpath: "memory://x.zarr"}
        """,
    )
    root = write(
        tmp_path / "root.yaml",
        """
        sources:
          group:
            driver: yaml_file_cat
            args: {path: sub/inner.yaml}
          deeper:
            driver: yaml_file_cat
            args: {path: "{{CATALOG_DIR}}/sub/inner.yaml"}
        """,
    )
    entries = load_catalog(str(root))
    assert set(entries) == {"group.x", "deeper.x"}
    assert entries["group.x"].urlpath == "memory://x.zarr"
    with pytest.raises(CatalogError) as info:
        resolve_entry("x", root)
    msg = str(info.value)
    assert "ambiguous" in msg and "'group.x'" in msg and "'deeper.x'" in msg
    assert resolve_entry("deeper.x", root).id == "deeper.x"


def test_catalog_as_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    entries = load_catalog(
        {"sources": {"mine": {"driver": "zarr", "args": {"urlpath": "data/mine.zarr"}}}}
    )
    assert Path(entries["mine"].urlpath) == tmp_path / "data" / "mine.zarr"


def test_env_and_parameter_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_BUCKET", "bucket-7")
    monkeypatch.setenv("MLCAST_PIPES_CATALOG_ENV", "OTHER, MY_BUCKET")  # named by the user
    root = write(
        tmp_path / "c.yml",
        """
        sources:
          e:
            driver: zarr
            parameters:
              version: {description: archive version, type: str, default: v0.2.0}
            args:
              urlpath: "s3://{{ env(MY_BUCKET) }}/{{ version }}/e.zarr"
        """,
    )
    assert load_catalog(root)["e"].urlpath == "s3://bucket-7/v0.2.0/e.zarr"


def test_unset_env_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    root = write(
        tmp_path / "c.yml",
        """
        sources:
          e:
            driver: zarr
            args: {urlpath: "s3://{{ env('NOPE_NOT_SET') }}/e.zarr"}
        """,
    )
    with pytest.raises(CatalogError, match="NOPE_NOT_SET"):
        load_catalog(root)


def test_unknown_template_is_reported(tmp_path: Path) -> None:
    root = write(
        tmp_path / "c.yml",
        """
        sources:
          e:
            driver: zarr
            args: {urlpath: "s3://{{ bucket }}/e.zarr"}
        """,
    )
    with pytest.raises(CatalogError) as info:
        load_catalog(root)
    msg = str(info.value)
    assert str(root) in msg and "sources.e.args.urlpath" in msg and "template" in msg


# ----------------------------------------------------------------------------------------------
# malformed catalogs


def test_malformed_yaml_names_file(tmp_path: Path) -> None:
    root = write(tmp_path / "bad.yml", "sources:\n  a: [unclosed\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(root)
    assert str(root) in str(info.value) and "not valid YAML" in str(info.value)


def test_yaml_is_read_safely(tmp_path: Path) -> None:
    root = write(tmp_path / "evil.yml", "sources: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(root)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("metadata: {name: x}\n", "'sources'"),
        ("sources: [a, b]\n", "'sources'"),
        ("sources:\n  a: just-a-string\n", "'sources.a'"),
        ("sources:\n  a:\n    args: {urlpath: x.zarr}\n", "sources.a.driver"),
        ("sources:\n  a:\n    driver: zarr\n", "sources.a.args.urlpath"),
        ("sources:\n  a:\n    driver: zarr\n    args: [1]\n", "sources.a.args"),
        (
            "sources:\n  a:\n    driver: zarr\n    args: {urlpath: x.zarr, storage_options: 3}\n",
            "sources.a.args.storage_options",
        ),
        (
            "sources:\n  a:\n    driver: zarr\n    args: {urlpath: x.zarr, consolidated: maybe}\n",
            "sources.a.args.consolidated",
        ),
        ("sources:\n  a:\n    driver: yaml_file_cat\n    args: {}\n", "sources.a.args.path"),
        ("sources:\n  a:\n    driver: mlcast_demo\n    args: {seed: -1}\n", "sources.a.args.seed"),
        (
            "sources:\n  a:\n    driver: mlcast_demo\n    args: {preset: 5}\n",
            "sources.a.args.preset",
        ),
    ],
)
def test_missing_or_wrong_keys_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    root = write(tmp_path / "c.yml", text)
    with pytest.raises(CatalogError) as info:
        load_catalog(root)
    assert str(root) in str(info.value)
    assert key in str(info.value)


def test_empty_sources_is_an_empty_catalog(tmp_path: Path) -> None:
    assert load_catalog(write(tmp_path / "c.yml", "sources:\n")) == {}


def test_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nope.yml")


def test_missing_nested_file_names_referrer(tmp_path: Path) -> None:
    root = write(
        tmp_path / "c.yml",
        """
        sources:
          precipitation:
            driver: yaml_file_cat
            args: {path: "{{ CATALOG_DIR }}/precipitation/catalog.yml"}
        """,
    )
    with pytest.raises(CatalogError) as info:
        load_catalog(root)
    msg = str(info.value)
    assert "precipitation/catalog.yml" in msg and "does not exist" in msg
    assert "sources.precipitation.args.path" in msg and str(root) in msg


def test_catalog_loop_is_detected(tmp_path: Path) -> None:
    root = write(
        tmp_path / "c.yml",
        """
        sources:
          me:
            driver: yaml_file_cat
            args: {path: "{{ CATALOG_DIR }}/c.yml"}
        """,
    )
    with pytest.raises(CatalogError, match="loop"):
        load_catalog(root)


def test_wrong_catalog_argument_type() -> None:
    with pytest.raises(CatalogError, match="catalog must be"):
        load_catalog(42)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# demo entries and the cache folder


def test_demo_cache_dir_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLCAST_PIPES_CACHE", str(tmp_path / "cache"))
    assert demo_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("MLCAST_PIPES_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo_cache_dir() == tmp_path / "home" / ".cache" / "mlcast-pipes"


def test_demo_entry_path_in_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLCAST_PIPES_CACHE", str(tmp_path))
    root = write(
        tmp_path / "c.yml",
        """
        sources:
          tiny_demo:
            driver: mlcast_demo
            args: {preset: tiny, seed: 3}
        """,
    )
    entry = resolve_entry("tiny_demo", root)
    assert Path(entry.urlpath) == tmp_path / "demo-tiny-seed3.zarr"
    assert load_catalog()["demo"].urlpath == str(tmp_path / "demo-small-seed0.zarr")


def test_resolve_urlpath_materialises_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mlcast_pipes.demo as demo

    calls: list[tuple[Path, str, int]] = []

    def fake_ensure_demo(path: Any, preset: str = "small", seed: int = 0) -> Path:
        calls.append((Path(path), preset, seed))
        return Path(path)

    monkeypatch.setattr(demo, "ensure_demo", fake_ensure_demo)
    monkeypatch.setenv("MLCAST_PIPES_CACHE", str(tmp_path / "fresh" / "cache"))
    entry = resolve_entry("demo")
    out = resolve_urlpath(entry)
    assert calls == [(tmp_path / "fresh" / "cache" / "demo-small-seed0.zarr", "small", 0)]
    assert out == str(calls[0][0])
    assert (tmp_path / "fresh" / "cache").is_dir()  # the cache folder was created


def test_resolve_urlpath_plain_entry_untouched() -> None:
    entry = CatalogEntry(
        id="a.b",
        name="b",
        driver="zarr",
        urlpath="s3://x/y.zarr",
        storage_options={},
        consolidated=None,
        var_name=None,
        description="",
        metadata={},
    )
    assert resolve_urlpath(entry) == "s3://x/y.zarr"
