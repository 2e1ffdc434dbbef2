"""``samadapt objects``: a catalogue of mapped objects (measures on the body, size-frequency table)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from samadapt.cli.console import stderr, stdout
from samadapt.errors import InputError

if TYPE_CHECKING:
    from samadapt.catalogue.build import Catalogue, CountingArea

AreaKm2Opt = Annotated[float | None, typer.Option("--area-km2", help="Counting area of the size-frequency table "
                                                  "in km² (default: the convex hull of the objects).")]
AreaFileOpt = Annotated[Path | None, typer.Option("--area", help="Polygons whose union is the counting area, e.g. "
                                                  "the mapped footprint (GeoPackage, GeoJSON, Shapefile).")]


def counting_area(area_km2: float | None, area: Path | None) -> CountingArea:
    """The counting area the options give, checked before any work.

    Raises:
        InputError: both options, or an area that is not positive.
    """
    from samadapt.catalogue.build import CountingArea

    if area_km2 is not None and area is not None:
        raise InputError("give --area-km2 or --area, not both")
    if area_km2 is not None and not area_km2 > 0:
        raise InputError(f"--area-km2 must be a positive area, got {area_km2}")
    return CountingArea(km2=area_km2, polygons=area)


def report(catalogue: Catalogue) -> None:
    """Print what a catalogue holds, and its notes as warnings."""
    for note in catalogue.notes:
        stderr.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    stdout.print(f"wrote {catalogue.out_dir}: {catalogue.objects} objects, counting area "
                 f"{catalogue.area:.4g} {catalogue.unit}² ({catalogue.area_source})", highlight=False, soft_wrap=True)


def objects_cmd(
    polygons: Annotated[Path, typer.Argument(help="Polygons of objects, e.g. `predict`'s <stem>_polygons.gpkg.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Catalogue folder to write.")],
    area_km2: AreaKm2Opt = None,
    area: AreaFileOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous catalogue.")] = False,
) -> None:
    """Catalogue objects: id, class, centroid (map and planetocentric lon/lat), geodesic area and
    perimeter on the body's ellipsoid, equivalent diameter, score; plus the cumulative size-frequency
    table N(>=D) per km² and its log-log plot."""
    from samadapt.catalogue.build import write_catalogue

    report(write_catalogue(polygons, out_dir, area=counting_area(area_km2, area), overwrite=overwrite))
