"""The shared options of the commands: each checked once, by its callback, with the message users see."""

from __future__ import annotations

import pytest

from helpers.cli import run_cli
from samadapt.cli.options import band_list, choice, encoder_runtime, method_options, parse_ints
from samadapt.errors import InputError


def test_choice_names_the_flag_the_bad_value_and_what_is_allowed() -> None:
    check = choice("--vector", ("gpkg", "geojson", "none"))
    assert check("gpkg") == "gpkg"
    assert check(None) is None
    with pytest.raises(InputError, match=r"--vector must be gpkg, geojson or none, got 'shp'"):
        check("shp")


def test_band_list_reads_one_based_bands_and_nothing_means_every_band() -> None:
    assert band_list("4,3,2") == (4, 3, 2)
    assert band_list(None) is None
    assert band_list("") is None
    with pytest.raises(InputError, match="whole number"):
        band_list("4,x")


def test_precision_overrides_the_runtime() -> None:
    assert encoder_runtime("fp32", "bf16").precision == "bf16"
    assert encoder_runtime("bf16", None).precision == "bf16"


def test_method_options_convert_json_values_and_dashes() -> None:
    assert method_options(["rank=8", "use-bias=true", "name=pits"]) == {"rank": 8, "use_bias": True, "name": "pits"}
    with pytest.raises(InputError, match="key=value"):
        method_options(["rank"])


def test_parse_ints_names_the_flag() -> None:
    assert parse_ints("5,10, 20,", "--sizes") == [5, 10, 20]
    with pytest.raises(InputError, match="--sizes takes comma-separated whole numbers"):
        parse_ints("a,b", "--sizes")


@pytest.mark.parametrize("command", [["embed", "x.tif"], ["predict", "ad", "x.tif", "-o", "maps"]])
def test_batch_size_below_one_stops_every_command_with_exit_code_2(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run_cli([*command, "--batch-size", "0"], monkeypatch, capsys)
    assert code == 2
    assert "--batch-size must be at least 1, got 0" in text
