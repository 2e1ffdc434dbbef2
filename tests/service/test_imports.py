"""The service package imports without cycles, function-level imports included."""

from __future__ import annotations

from test_layout import _cycles, _graph


def test_service_modules_form_no_import_cycle() -> None:
    graph = {name: deps for name, deps in _graph().items() if name.startswith("samadapt.service")}
    assert _cycles(graph) == []


def test_sources_package_reexports_what_callers_import() -> None:
    import samadapt.service.sources as sources
    from samadapt.service.sources.local import LocalSource
    from samadapt.service.sources.tiles import XYZSource

    assert sources.LocalSource is LocalSource and sources.XYZSource is XYZSource
    assert all(hasattr(sources, name) for name in sources.__all__)
