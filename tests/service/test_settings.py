"""Service settings: defaults, TOML/JSON files, environment overrides, --source values, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.tileserver import write_disc_geotiff
from samadapt.errors import InputError, InputFileError
from samadapt.service.settings import (
    DEFAULT_SOURCES,
    ServiceSettings,
    add_sources,
    load_settings,
    parse_source_option,
)


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.default_source == "OpenStreetMap"
    assert settings.sources["OpenStreetMap"]["url"] == "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    assert set(DEFAULT_SOURCES) <= set(settings.sources)
    assert all(spec["type"] == "xyz" and spec["body"] == "Earth" for spec in settings.sources.values())
    assert (settings.token, settings.cors_origins, settings.embedding_mode) == (None, [], "grid")
    assert (settings.max_body_bytes, settings.max_prompts, settings.encoder_workers) == (65536, 32, 1)
    assert settings.fetch_timeout_s == 10.0 and settings.tile_concurrency == 8


def test_toml_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write_disc_geotiff(tmp_path / "data" / "hirise.tif", "Mars")
    config = tmp_path / "service.toml"
    config.write_text(
        'default_source = "hirise"\nfetch_timeout_s = 4\nembedding_mode = "view"\ncors_origins = ["http://localhost:3000"]\n\n'
        '[sources.hirise]\ntype = "local"\npath = "data/hirise.tif"\n\n'
        '[sources.Topo]\nurl = "https://{s}.topo.example.org/{z}/{x}/{y}.png"\nmax_zoom = 17\nsubdomains = "xy"\n'
    )
    settings = load_settings(config, environ={})
    assert settings.default_source == "hirise"
    assert settings.sources["hirise"]["path"] == str((tmp_path / "data" / "hirise.tif").resolve())
    assert settings.sources["Topo"]["subdomains"] == ["x", "y"] and settings.sources["Topo"]["max_zoom"] == 17
    assert "OpenStreetMap" in settings.sources  # file sources are added to the defaults
    assert (settings.fetch_timeout_s, settings.embedding_mode) == (4.0, "view")
    assert settings.cors_origins == ["http://localhost:3000"]


def test_json_file_can_drop_default_sources(tmp_path: Path) -> None:
    config = tmp_path / "service.json"
    config.write_text(json.dumps({
        "default_sources": False, "default_source": "mine", "max_prompts": 5,
        "sources": {"mine": {"type": "xyz", "url": "http://127.0.0.1:8080/{z}/{x}/{y}.png"}},
    }))
    settings = load_settings(config, environ={})
    assert list(settings.sources) == ["mine"] and settings.max_prompts == 5


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text('token = "from-file"\nfetch_timeout_s = 4\nmax_prompts = 7\n')
    env = {
        "SAMADAPT_SERVICE_CONFIG": str(config), "SAMADAPT_TOKEN": "s3cret",
        "SAMADAPT_CORS_ORIGINS": "https://a.example, https://b.example",
        "SAMADAPT_SERVICE_FETCH_TIMEOUT_S": "2.5", "SAMADAPT_SERVICE_EMBEDDING_MODE": "view",
        "SAMADAPT_SOURCES": json.dumps({"extra": {"url": "https://x.example/{z}/{x}/{y}.jpg"}}),
    }
    settings = load_settings(environ=env)
    assert settings.token == "s3cret"
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.fetch_timeout_s == 2.5 and settings.max_prompts == 7
    assert settings.embedding_mode == "view"
    assert settings.sources["extra"]["type"] == "xyz"


def test_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMADAPT_TOKEN", "tok")
    monkeypatch.delenv("SAMADAPT_SERVICE_CONFIG", raising=False)
    assert load_settings().token == "tok"


@pytest.mark.parametrize(("name", "text", "message"), [
    ("bad.toml", "max_prompts = [", r"bad\.toml' is not valid TOML"),
    ("bad.json", "{", r"bad\.json' is not valid JSON"),
    ("bad.toml", "max_promts = 3", r"unknown setting\(s\) \['max_promts'\]"),
    ("bad.toml", "max_prompts = 0", r"max_prompts must be a whole number >= 1, got 0"),
    ("bad.toml", 'embedding_mode = "cells"', r"embedding_mode must be 'grid' or 'view'"),
    ("bad.toml", 'default_source = "nope"', r"default_source 'nope' is not a configured source"),
    ("bad.toml", '[sources.t]\nurl = "https://h.example/{z}/{x}.png"', r"source 't': url template .* lacks \{y\}"),
    ("bad.toml", '[sources.t]\nurl = "file:///etc/{z}/{x}/{y}"', r"source 't': url must be an http\(s\) template"),
    ("bad.toml", '[sources.t]\nurl = "https://h.example/{z}/{x}/{y}?k={key}"', r"unknown variable\(s\) \['\{key\}'\]"),
    ("bad.toml", '[sources.t]\ntype = "wms"\nurl = "https://h.example/"', r"source 't' has type 'wms'"),
    ("bad.toml", '[sources.t]\nurl = "https://h.example/{z}/{x}/{y}"\nzoom = 3', r"unknown key\(s\) \['zoom'\]"),
    ("bad.toml", '[sources.t]\nurl = "https://h.example/{z}/{x}/{y}"\nmax_zoom = 40',
     r"0 <= min_zoom <= max_zoom <= 30"),
    ("bad.toml", '[sources."a b"]\nurl = "https://h.example/{z}/{x}/{y}"', r"source name 'a b' is not allowed"),
    ("bad.toml", '[sources.mars]\nurl = "https://h.example/{z}/{x}/{y}"\nbody = "Mars"', r"give its lat/lng crs"),
    ("bad.yaml", "max_prompts: 3", r"must end in \.toml or \.json"),
])
def test_bad_file_says_what_is_wrong(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_settings(path, environ={})


def test_missing_file_and_bad_environment(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    with pytest.raises(InputError, match="SAMADAPT_SERVICE_MAX_PROMPTS must be a number, got 'many'"):
        load_settings(environ={"SAMADAPT_SERVICE_MAX_PROMPTS": "many"})
    with pytest.raises(InputError, match="SAMADAPT_SOURCES must be a JSON object"):
        load_settings(environ={"SAMADAPT_SOURCES": "[1, 2]"})


def test_source_option(tmp_path: Path) -> None:
    raster = write_disc_geotiff(tmp_path / "ctx.tif", "Mars")
    name, spec = parse_source_option(f"ctx={raster.path}")
    assert name == "ctx" and spec["type"] == "local" and spec["path"] == str(raster.path.resolve())
    name, spec = parse_source_option("Sat=https://tiles.example.org/{z}/{y}/{x}.jpg")
    assert name == "Sat" and spec["type"] == "xyz" and spec["url"].endswith("{z}/{y}/{x}.jpg")
    settings = add_sources(ServiceSettings(), [f"ctx={raster.path}"])
    assert "ctx" in settings.sources and "OpenStreetMap" in settings.sources
    with pytest.raises(InputError, match="--source takes NAME=file.tif"):
        parse_source_option("just-a-name")
    with pytest.raises(InputFileError, match="no such raster file"):
        parse_source_option(f"x={tmp_path / 'missing.tif'}")
    with pytest.raises(InputError, match="url must be an http"):
        parse_source_option("x=ftp://h.example/{z}/{x}/{y}.png")
