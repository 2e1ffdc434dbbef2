"""``samadapt serve``: the real uvicorn server on 127.0.0.1, started through the command line."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers.cli import run_cli
from helpers.tileserver import write_disc_geotiff
from samadapt.service import server as service_server


def test_serve_listens_on_localhost_and_answers(tiny_models: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    mars = write_disc_geotiff(tmp_path / "mars.tif", "Mars")
    monkeypatch.setattr(sys, "argv", ["samadapt", "serve", "--model", str(tiny_models["sam"]), "--port", "0",
                                      "--source", f"mars={mars.path}", "--mode", "view"])
    from samadapt.cli import main

    exits: list[object] = []

    def serve() -> None:
        try:
            main()
        except SystemExit as e:  # typer ends with sys.exit(0) when the server stops
            exits.append(e.code)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (service_server.RUNNING and service_server.RUNNING[0].started) and time.monotonic() < deadline:
        assert thread.is_alive(), capsys.readouterr().err
        time.sleep(0.05)
    server = service_server.RUNNING[0]
    try:
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        assert host == "127.0.0.1"
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/health").json()["status"] == "ok"
            sources = client.get("/sources").json()
            assert sources["default"] == "mars" and "mars" in [s["name"] for s in sources["sources"]]
            body = {"bbox": {"ne": {"lat": mars.lat + 0.05, "lng": mars.lng + 0.05},
                             "sw": {"lat": mars.lat - 0.05, "lng": mars.lng - 0.05}},
                    "prompt": [{"type": "point", "data": {"lat": mars.lat, "lng": mars.lng}, "label": 1}],
                    "zoom": 10, "source_type": "mars"}
            out = client.post("/segment", json=body).json()
            assert out["body"] == "Mars" and out["mode"] == "view"
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive() and exits == [0]
    printed = " ".join(capsys.readouterr().out.split())
    assert f"serving on {base}" in printed


def test_serve_rejects_bad_options(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(["serve", "--model", str(tiny_models["sam"]), "--source", "nofile"], monkeypatch, capsys)
    assert code == 2 and "--source takes NAME=file.tif" in text
    code, text = run_cli(["serve", "--model", str(tiny_models["sam"]), "--mode", "tiles"], monkeypatch, capsys)
    assert code == 2 and "--mode must be grid or view" in text


def test_serve_stops_when_its_parent_process_ends(tiny_models: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--parent-pid: a server started by another program (the QGIS plugin) goes when that program goes."""
    import subprocess

    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    mars = write_disc_geotiff(tmp_path / "mars.tif", "Mars")
    monkeypatch.setattr(sys, "argv", ["samadapt", "serve", "--model", str(tiny_models["sam"]), "--port", "0",
                                      "--source", f"mars={mars.path}", "--parent-pid", str(parent.pid)])
    from samadapt.cli import main

    exits: list[object] = []

    def serve() -> None:
        try:
            main()
        except SystemExit as e:
            exits.append(e.code)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (service_server.RUNNING and service_server.RUNNING[0].started) and time.monotonic() < deadline:
            assert thread.is_alive(), capsys.readouterr().err
            time.sleep(0.05)
        time.sleep(1.5)
        assert thread.is_alive()  # the parent lives: the server keeps serving
    finally:
        parent.kill()
        parent.wait()
    thread.join(30)
    assert not thread.is_alive() and exits == [0]


def test_serve_refuses_a_parent_pid_that_does_not_exist(tiny_models: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    code, text = run_cli(["serve", "--model", str(tiny_models["sam"]), "--parent-pid", str(gone.pid)], monkeypatch,
                         capsys)
    assert code == 2 and f"--parent-pid {gone.pid}: no such process" in text
