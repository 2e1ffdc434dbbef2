"""Request and response models of the HTTP service: the SamGIS payload, typed.

Requests are validated by pydantic (a bad payload is a 422 with a readable message);
coordinates must be finite numbers. The response models document the JSON in the OpenAPI
schema; the endpoints build the JSON directly rather than validating it a second time on the
way out, which keeps the cached path (prompt in, GeoJSON out) lean.

Coordinates are degrees of longitude and latitude on the source's body (Earth unless the
source is, say, a Mars GeoTIFF); ``ne`` is the north-east corner, ``sw`` the south-west one.

A request's prompts are either points and rectangles (objects the user points at) or text
prompts (phrases searched for over the whole view); mixing the two kinds is a 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# allow_inf_nan=False: Python's JSON reader accepts NaN and Infinity, and NaN passes no bound
# check with a useful message ("should be less than or equal to 90").
Lat = Annotated[float, Field(ge=-90.0, le=90.0, allow_inf_nan=False, description="Latitude in degrees.")]
Lng = Annotated[float, Field(ge=-180.0, le=180.0, allow_inf_nan=False, description="Longitude in degrees.")]


class LatLng(BaseModel):
    """A point in degrees of latitude and longitude."""

    model_config = ConfigDict(extra="forbid")

    lat: Lat
    lng: Lng


class BBox(BaseModel):
    """A lat/lng rectangle given by its north-east and south-west corners."""

    model_config = ConfigDict(extra="forbid")

    ne: LatLng
    sw: LatLng

    @model_validator(mode="after")
    def _ordered(self) -> BBox:
        if not (self.ne.lat > self.sw.lat and self.ne.lng > self.sw.lng):
            raise ValueError(
                f"ne must lie north-east of sw (ne.lat > sw.lat and ne.lng > sw.lng); got ne=({self.ne.lat}, "
                f"{self.ne.lng}) and sw=({self.sw.lat}, {self.sw.lng})"
            )
        return self

    def contains(self, lat: float, lng: float) -> bool:
        """True when (lat, lng) lies inside or on the edge of the rectangle."""
        eps = 1e-9
        return (self.sw.lat - eps <= lat <= self.ne.lat + eps) and (self.sw.lng - eps <= lng <= self.ne.lng + eps)


class PointPrompt(BaseModel):
    """A click: label 1 marks the object, 0 the background."""

    model_config = ConfigDict(extra="forbid")

    id: int | None = None
    type: Literal["point"]
    data: LatLng
    label: Literal[0, 1] = 1


class RectanglePrompt(BaseModel):
    """A box around the object."""

    model_config = ConfigDict(extra="forbid")

    id: int | None = None
    type: Literal["rectangle"]
    data: BBox
    label: Literal[1] = 1


#: Longest phrase of a text prompt, in characters (``samadapt.text.search.MAX_PHRASE``: a class name, not a sentence).
MAX_PHRASE = 200


class TextPrompt(BaseModel):
    """A phrase naming what to find, e.g. "pit": every match in the whole view is an object."""

    model_config = ConfigDict(extra="forbid")

    id: int | None = None
    type: Literal["text"]
    data: str = Field(description=f"A word or short phrase, 1-{MAX_PHRASE} characters (spaces collapsed).")

    @field_validator("data")
    @classmethod
    def _phrase(cls, value: str) -> str:
        phrase = " ".join(value.split())
        if not phrase:
            raise PydanticCustomError("phrase_empty", "the phrase is empty; give a word or short phrase such as 'pit'")
        if len(phrase) > MAX_PHRASE:
            raise PydanticCustomError("phrase_too_long", "the phrase has {length} characters; keep it to {most} "
                                      "(a class name, not a sentence)", {"length": len(phrase), "most": MAX_PHRASE})
        return phrase


Prompt = Annotated[PointPrompt | RectanglePrompt | TextPrompt, Field(discriminator="type")]


class SegmentRequest(BaseModel):
    """The SamGIS ``/segment`` payload, plus the optional ``mode`` and ``separate`` fields and text prompts.

    By default all prompts together describe one object (foreground and background points
    and at most one rectangle), as in SamGIS; with ``separate`` each foreground point and
    each rectangle is its own object and background points apply to every object.

    Text prompts (``{"type": "text", "data": "pit"}``) search the whole view, one phrase per
    prompt, and every match is its own object; ``mode`` and ``separate`` do not apply to them.
    A request holds either text prompts or point and rectangle prompts, never both.
    """

    model_config = ConfigDict(extra="forbid")

    bbox: BBox
    prompt: list[Prompt] = Field(min_length=1)
    zoom: int = Field(ge=0, le=30)
    source_type: str = Field(min_length=1, max_length=200)
    mode: Literal["grid", "view"] | None = None
    separate: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> SegmentRequest:
        kinds = {p.type == "text" for p in self.prompt}
        if len(kinds) > 1:
            raise PydanticCustomError("prompt_mix", "text prompts search the whole view and cannot be mixed with "
                                      "point or rectangle prompts; send them in separate requests")
        return self

    @property
    def phrases(self) -> tuple[str, ...]:
        """The phrases of the text prompts, each once, in order; empty for a point / rectangle request."""
        return tuple(dict.fromkeys(p.data for p in self.prompt if isinstance(p, TextPrompt)))


class MapRequest(BaseModel):
    """The ``/map`` payload: segment every class in the view with the adapter."""

    model_config = ConfigDict(extra="forbid")

    bbox: BBox
    zoom: int = Field(ge=0, le=30)
    source_type: str = Field(min_length=1, max_length=200)


class Timings(BaseModel):
    """Milliseconds spent per step of one request."""

    fetch: float
    encode: float
    decode: float
    vectorise: float
    total: float


class Feature(BaseModel):
    """A GeoJSON Feature: a Polygon or MultiPolygon in lng/lat of the source's body."""

    type: Literal["Feature"] = "Feature"
    geometry: dict[str, Any]
    properties: dict[str, Any] = Field(
        description="/segment: {score, object}, plus {phrase, detector_score} for text prompts; "
                    "/map: {class, name, probability}."
    )


class SegmentResponse(BaseModel):
    """A GeoJSON FeatureCollection with the service's facts about how it was made."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[Feature]
    body: str = Field(description="Celestial body of the coordinates, e.g. Earth or Mars.")
    crs: str = Field(description="Geographic CRS of the coordinates (EPSG:4326 on Earth).")
    source: str
    zoom: int
    mode: Literal["grid", "view"]
    model: str
    trusted: bool = Field(description="False for random-initialised test models (or detectors): their masks "
                          "mean nothing.")
    detector: str | None = Field(None, description="Text prompts: the detector that found the boxes; None for "
                                 "SAM 3, which reads text itself, and for point / rectangle prompts.")
    cache_hit: bool = Field(description="True when no imagery was fetched and no embedding computed.")
    timings_ms: Timings


class MapResponse(BaseModel):
    """Class polygons of the whole view."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[Feature]
    body: str
    crs: str
    source: str
    zoom: int
    model: str
    adapter: str
    timings_ms: dict[str, float]


class ErrorResponse(BaseModel):
    """Every error: one readable sentence, and for validation errors the details."""

    error: str
    detail: list[dict[str, Any]] | None = None
