"""The exception -> HTTP status table: complete, ordered, and what the app answers with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import samadapt.errors
from samadapt.errors import SamadaptError
from samadapt.predict.segmenter import Segmenter
from samadapt.service.app import create_app
from samadapt.service.errors import STATUS_TABLE, error_status
from samadapt.service.settings import ServiceSettings
from samadapt.service.sources import FetchError, SourceError

SAMADAPT_ERRORS = sorted(
    (c for c in vars(samadapt.errors).values()
     if isinstance(c, type) and issubclass(c, SamadaptError) and c is not SamadaptError),
    key=lambda c: c.__name__,
)


@pytest.fixture
def client(tiny_models: dict[str, Path]) -> Iterator[TestClient]:
    # The source is never contacted: no request here reads imagery.
    settings = ServiceSettings(sources={"tiles": {"type": "xyz", "url": "http://127.0.0.1:9/{z}/{x}/{y}.png"}},
                               default_source="tiles")
    app = create_app(settings, Segmenter(tiny_models["sam"], cache=False))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def add_raising_route(client: TestClient, error: type[Exception], message: str) -> str:
    """Add a route raising ``error(message)`` to the client's app; its path."""
    async def endpoint() -> None:
        raise error(message)

    app = client.app
    assert isinstance(app, FastAPI)
    app.add_api_route(f"/raise/{error.__name__}", endpoint)
    return f"/raise/{error.__name__}"


def test_samadapt_errors_are_found() -> None:
    assert {c.__name__ for c in SAMADAPT_ERRORS} >= {"InputError", "ModelNotFoundError", "CheckpointError"}


@pytest.mark.parametrize("error", SAMADAPT_ERRORS, ids=lambda c: c.__name__)
def test_every_samadapt_error_has_its_own_status_and_the_app_answers_with_it(
        client: TestClient, error: type[SamadaptError]) -> None:
    """A samadapt error is never the bare 500 of a bug: the client's fault is 4xx, an upstream or
    server condition (a failed download 502, a missing extra 501, a full disk 507) says which."""
    status = error_status(error("what went wrong and how to fix it"))
    assert 400 <= status < 600 and status != 500
    r = client.get(add_raising_route(client, error, "what went wrong and how to fix it"))
    assert r.status_code == status
    assert r.json() == {"error": "what went wrong and how to fix it"}


@pytest.mark.parametrize(("error", "status"), [(FetchError, 502), (SourceError, 400), (SamadaptError, 500),
                                               (RuntimeError, 500)])
def test_service_errors_and_the_rest_answer_with_the_table_status(client: TestClient, error: type[Exception],
                                                                   status: int) -> None:
    assert error_status(error("x")) == status
    assert client.get(add_raising_route(client, error, "x")).status_code == status


def test_no_row_of_the_table_is_hidden_by_an_earlier_one() -> None:
    for i, row in enumerate(STATUS_TABLE):
        earlier = [r.error.__name__ for r in STATUS_TABLE[:i] if issubclass(row.error, r.error)]
        assert not earlier, f"{row.error.__name__} comes after {earlier}, so its row is never used"


def test_the_api_docs_show_the_table(client: TestClient) -> None:
    description = client.get("/openapi.json").json()["info"]["description"]
    for row in STATUS_TABLE:
        assert f"| `{row.error.__name__}` | {row.status} |" in description
