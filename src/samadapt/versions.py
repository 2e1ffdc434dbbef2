"""The versions of samadapt's dependencies in use, against the ranges its test suite ran on.

The ranges are the ``Requires-Dist`` lines of samadapt's own installed metadata (from
``pyproject.toml``), so there is one list of them; ``constraints.txt`` holds the exact versions
the suite last ran with.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class DependencyVersion:
    """One dependency: its name, the tested range, the installed version and whether it fits."""

    name: str
    tested: str
    installed: str | None

    @property
    def in_range(self) -> bool:
        """True when the installed version lies in the tested range (a missing one does not)."""
        if self.installed is None:
            return False
        try:
            spec = Requirement(f"{self.name}{self.tested}").specifier
            return spec.contains(Version(self.installed), prereleases=True)
        except (InvalidRequirement, InvalidVersion):
            return False


def dependency_versions(extras: tuple[str, ...] = ("train",)) -> list[DependencyVersion]:
    """The core dependencies (and those of ``extras``), each with its tested range and installed version.

    Returns:
        One entry per requirement, in ``pyproject.toml`` order; ``installed`` is None when the
        package is not installed (an extra that was not asked for, say).
    """
    try:
        lines = metadata.requires("samadapt") or []
    except metadata.PackageNotFoundError:
        return []
    found = []
    for line in lines:
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        try:
            installed: str | None = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            installed = None
        found.append(DependencyVersion(req.name, str(req.specifier), installed))
    return found
