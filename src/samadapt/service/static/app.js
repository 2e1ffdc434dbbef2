// samadapt page: a Leaflet map that sends point, box and text prompts to POST /segment and draws the
// returned polygons. Plain script, no build step; Leaflet is vendored under /static/vendor/leaflet/.
//
// Hooks for tests and scripts:
//   document.body.dataset.state      "loading" | "idle" | "busy" | "error" | "auth"
//   document.body.dataset.responses  number of /segment answers handled (success or error)
//   document.body.dataset.tiles      "loading" | "loaded": the base layer's visible tiles (failed ones count as done)
//   #feature-count                   number of polygons drawn (all objects)
//   SVG paths: .seg-polygon (results), .prompt-point.fg / .prompt-point.bg, .prompt-box
//   .text-label                      the phrase (and detector score) of each polygon a text prompt found
(function () {
  "use strict";

  const TOKEN_KEY = "samadapt.token";
  const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
  const MIN_BOX_PX = 4; // smaller drags are treated as slips, not boxes

  const $ = (id) => document.getElementById(id);

  const state = {
    map: null,
    sources: [],        // GET /sources entries (Source.describe() on the server)
    source: null,       // the entry in use
    baseLayer: null,
    boxMode: false,
    drag: null,         // box being drawn: {start, rect, pointerId}
    objects: [],        // {index, prompts, features, layer, body, crs, controller}; the last one is current
    nextIndex: 0,
    error: false,
    responses: 0,
    retryAfterAuth: null,
    tileErrorShown: false,
    viewSet: false,     // the map has had a first view
  };

  // ---- server calls -------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    return headers;
  }

  /** One readable sentence from an error answer ({"error": ...}, FastAPI's {"detail": ...}, or text). */
  function errorMessage(response, text) {
    let body = null;
    try { body = JSON.parse(text); } catch (_) { /* not JSON */ }
    let message = "";
    if (body && typeof body.error === "string") {
      message = body.error;
      if (typeof body.detail === "string" && body.detail) message += " (" + body.detail + ")";
    } else if (body && typeof body.detail === "string") {
      message = body.detail;
    } else if (body && Array.isArray(body.detail)) {
      message = body.detail.map((d) => (d.loc ? d.loc.join(".") + ": " : "") + d.msg).join("; ");
    } else {
      message = text.trim().slice(0, 200) || response.statusText;
    }
    return "Server error " + response.status + ": " + message;
  }

  /** fetch() with the bearer token; throws ApiError on failure (status 0 = server unreachable). */
  async function request(path, options) {
    const opts = Object.assign({}, options);
    opts.headers = authHeaders(opts.headers);
    let response;
    try {
      response = await fetch(path, opts);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError("Cannot reach the samadapt server (" + err.message + ").", 0);
    }
    if (!response.ok) {
      const text = await response.text();
      if (response.status === 401) throw new ApiError("This server needs an access token.", 401);
      throw new ApiError(errorMessage(response, text), response.status);
    }
    return response;
  }

  async function getJSON(path, options) {
    return (await request(path, options)).json();
  }

  // Tiles go through fetch() too, so they carry the bearer token like every other API call.
  const ApiTileLayer = L.TileLayer.extend({
    createTile(coords, done) {
      const tile = document.createElement("img");
      tile.alt = "";
      tile.setAttribute("role", "presentation");
      request(this.getTileUrl(coords))
        .then((response) => response.blob())
        .then((blob) => {
          const url = URL.createObjectURL(blob);
          tile.onload = () => { URL.revokeObjectURL(url); done(null, tile); };
          tile.onerror = () => { URL.revokeObjectURL(url); done(new Error("undecodable tile image"), tile); };
          tile.src = url;
        })
        .catch((err) => done(err, tile));
      return tile;
    },
  });

  // ---- page state ---------------------------------------------------------------------------

  function refreshState() {
    let value = "idle";
    if (!$("auth").hidden) value = "auth";
    else if (state.objects.some((o) => o.controller)) value = "busy";
    else if (state.error) value = "error";
    else if (!state.source) value = "loading";
    document.body.dataset.state = value;
    document.body.dataset.responses = String(state.responses);
    $("status").textContent = value === "busy" ? "Segmenting\u2026" : "";

    const current = currentObject();
    const features = allFeatures();
    $("feature-count").textContent = String(features.length);
    $("undo").disabled = !current.prompts.length;
    $("new-object").disabled = !current.prompts.length;
    $("clear").disabled = !features.length && !state.objects.some((o) => o.prompts.length);
    $("download").disabled = !features.length;
  }

  function showBanner(message) {
    $("banner-text").textContent = message;
    $("banner").hidden = false;
  }

  function hideBanner() {
    $("banner").hidden = true;
    state.tileErrorShown = false;
  }

  function fail(err, retry) {
    if (err.status === 401) {
      state.retryAfterAuth = retry;
      $("auth").hidden = false;
      $("token").focus();
      showBanner(err.message);
    } else {
      state.error = true;
      showBanner(err.message);
    }
    refreshState();
  }

  function showModel(name, trusted) {
    $("model-name").textContent = name || "\u2013";
    $("model-warning").hidden = trusted !== false;
  }

  function formatMs(value) {
    if (typeof value !== "number") return "\u2013";
    return (value < 10 ? value.toFixed(1) : value.toFixed(0)) + " ms";
  }

  function showResult(fc) {
    const t = fc.timings_ms || {};
    for (const key of ["fetch", "encode", "decode", "vectorise", "total"]) $("t-" + key).textContent = formatMs(t[key]);
    $("cache-hit").textContent = fc.cache_hit ? "yes" : "no";
    $("body-name").textContent = fc.body || "\u2013";
    if ("model" in fc) showModel(fc.model, fc.trusted);
  }

  // ---- objects and prompts ------------------------------------------------------------------

  function newObject() {
    const obj = {
      index: state.nextIndex++, prompts: [], features: [], layer: null, body: null, crs: null, controller: null,
    };
    state.objects.push(obj);
    return obj;
  }

  function currentObject() {
    return state.objects[state.objects.length - 1];
  }

  function allFeatures() {
    return state.objects.flatMap((o) => o.features);
  }

  function colour(obj) {
    return COLOURS[obj.index % COLOURS.length];
  }

  /** The object new point and box prompts go to: a text search is an object of its own. */
  function promptObject() {
    const obj = currentObject();
    return obj.prompts.some((p) => p.kind === "text") ? finishObject() : obj;
  }

  function addPoint(latlng, label) {
    const obj = promptObject();
    const layer = L.circleMarker(latlng, {
      radius: 6, weight: 2, color: "#fff", fillOpacity: 1, interactive: false,
      fillColor: label ? "#1a9c35" : "#d11a1a", className: "prompt-point " + (label ? "fg" : "bg"),
    }).addTo(state.map);
    obj.prompts.push({ kind: "point", latlng, label, layer });
    segment(obj);
  }

  function addBox(bounds) {
    let obj = promptObject();
    // One box per object (SamGIS semantics): a second box starts the next object.
    if (obj.prompts.some((p) => p.kind === "box")) obj = finishObject();
    const layer = L.rectangle(bounds, {
      color: "#1f5fa8", weight: 2, fill: false, dashArray: "6 4", interactive: false, className: "prompt-box",
    }).addTo(state.map);
    obj.prompts.push({ kind: "box", bounds, layer });
    segment(obj);
  }

  /** Every match of a phrase in the current view, as a new object (the server searches the whole view). */
  function addText(phrase) {
    const obj = finishObject();
    // No marker on the map: the view is the prompt. An empty layer group keeps undo and clear uniform.
    obj.prompts.push({ kind: "text", phrase, view: state.map.getBounds(), layer: L.layerGroup() });
    segment(obj);
  }

  /** Keep the current object's polygons, drop its prompt markers, and start a new object. */
  function finishObject() {
    const obj = currentObject();
    if (obj.prompts.length) {
      obj.prompts.forEach((p) => p.layer.remove());
      obj.prompts = [];
      newObject();
    }
    refreshState();
    return currentObject();
  }

  function undo() {
    const obj = currentObject();
    const last = obj.prompts.pop();
    if (!last) return;
    last.layer.remove();
    segment(obj);
  }

  function clearAll() {
    for (const obj of state.objects) {
      if (obj.controller) obj.controller.abort();
      obj.prompts.forEach((p) => p.layer.remove());
      if (obj.layer) obj.layer.remove();
    }
    state.objects = [];
    newObject();
    state.error = false;
    hideBanner();
    refreshState();
  }

  function setFeatures(obj, fc) {
    if (obj.layer) obj.layer.remove();
    obj.layer = null;
    obj.features = (fc ? fc.features || [] : []).map((f) => ({
      type: "Feature",
      geometry: f.geometry,
      properties: Object.assign({}, f.properties, { object: obj.index, source: fc.source }),
    }));
    obj.body = fc ? fc.body : null;
    obj.crs = fc ? fc.crs : null;
    if (!obj.features.length) return;
    const labels = [];
    const polygons = L.geoJSON({ type: "FeatureCollection", features: obj.features }, {
      interactive: false,
      style: { color: colour(obj), weight: 2, fillOpacity: 0.3, className: "seg-polygon" },
      onEachFeature: (feature, layer) => {
        // The label sits just above the polygon so it never hides a small one: the score, or what a
        // text prompt found there with the detector's confidence.
        const props = feature.properties;
        const phrase = typeof props.phrase === "string" ? props.phrase : null;
        const score = Number(phrase === null ? props.score : props.detector_score);
        const value = Number.isFinite(score) ? score.toFixed(2) : "?";
        const b = layer.getBounds();
        labels.push(L.tooltip({
          permanent: true, direction: "top", interactive: false,
          className: phrase === null ? "score-label" : "score-label text-label",
        }).setLatLng([b.getNorth(), b.getCenter().lng])
          .setContent(phrase === null ? "score " + value : phrase + " " + value));
      },
    });
    obj.layer = L.layerGroup([polygons, ...labels]).addTo(state.map);
  }

  // ---- POST /segment ------------------------------------------------------------------------

  const plain = (ll) => ({ lat: ll.lat, lng: ll.lng });

  function payload(obj) {
    const text = obj.prompts.filter((p) => p.kind === "text");
    if (text.length) {
      // A text prompt searches the view it was typed in (kept, so Undo and retries ask the same).
      const v = text[0].view;
      return {
        bbox: { ne: plain(v.getNorthEast()), sw: plain(v.getSouthWest()) },
        prompt: text.map((p, i) => ({ id: i, type: "text", data: p.phrase })),
        zoom: Math.round(state.map.getZoom()),
        source_type: state.source.name,
      };
    }
    // The current view, grown to hold every prompt of the object if the user panned since.
    const view = L.latLngBounds(state.map.getBounds().getSouthWest(), state.map.getBounds().getNorthEast());
    obj.prompts.forEach((p) => view.extend(p.kind === "point" ? p.latlng : p.bounds));
    const corners = (b) => ({ ne: plain(b.getNorthEast()), sw: plain(b.getSouthWest()) });
    return {
      bbox: corners(view),
      prompt: obj.prompts.map((p, i) => (p.kind === "point"
        ? { id: i, type: "point", data: plain(p.latlng), label: p.label }
        : { id: i, type: "rectangle", data: corners(p.bounds), label: 1 })),
      zoom: Math.round(state.map.getZoom()),
      source_type: state.source.name,
    };
  }

  async function segment(obj) {
    if (obj.controller) obj.controller.abort(); // only the answer to the latest prompts matters
    obj.controller = null;
    if (!obj.prompts.length) {
      setFeatures(obj, null);
      refreshState();
      return;
    }
    const controller = new AbortController();
    obj.controller = controller;
    refreshState();
    try {
      const fc = await getJSON("/segment", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(payload(obj)),
        signal: controller.signal,
      });
      if (obj.controller !== controller) return;
      obj.controller = null;
      state.responses += 1;
      state.error = false;
      hideBanner();
      setFeatures(obj, fc);
      showResult(fc);
    } catch (err) {
      if (err.name === "AbortError" || obj.controller !== controller) return;
      obj.controller = null;
      state.responses += 1;
      fail(err, () => segment(obj));
    }
    refreshState();
  }

  // ---- sources and base map -----------------------------------------------------------------

  function useSource(name) {
    const next = state.sources.find((s) => s.name === name);
    if (!next) return;
    const bodies = new Set(state.objects.filter((o) => o.features.length).map((o) => o.body));
    if (bodies.size && !bodies.has(next.body)) {
      // Earth and Mars polygons must not end up in one GeoJSON file.
      showBanner("Download or clear the " + [...bodies].join("/") + " polygons before switching to "
        + next.name + " (" + next.body + ").");
      $("source").value = state.source.name;
      return;
    }
    finishObject();
    if (state.baseLayer) state.baseLayer.remove();
    state.source = next;
    state.tileErrorShown = false;
    const minZoom = Number.isFinite(next.min_zoom) ? next.min_zoom : 0;
    const maxZoom = Number.isFinite(next.max_zoom) ? next.max_zoom : 19;
    const options = { minZoom, maxZoom, attribution: next.attribution || "" };
    if (next.bounds) options.bounds = L.latLngBounds(next.bounds);
    state.baseLayer = new ApiTileLayer(next.tiles, options);
    state.baseLayer.on("loading", () => { document.body.dataset.tiles = "loading"; });
    state.baseLayer.on("load", () => { document.body.dataset.tiles = "loaded"; });
    state.baseLayer.on("tileerror", (e) => {
      if (e.error && e.error.status === 401) { fail(e.error, () => state.baseLayer.redraw()); return; }
      if (state.tileErrorShown) return;
      state.tileErrorShown = true;
      showBanner("Base map tiles failed: " + (e.error ? e.error.message : "unknown error"));
    });
    state.map.setMinZoom(minZoom);
    state.map.setMaxZoom(maxZoom);
    state.baseLayer.addTo(state.map);
    const linked = state.viewSet ? null : viewFromHash();
    if (linked) state.map.setView(linked.center, linked.zoom);
    else if (next.bounds) state.map.fitBounds(next.bounds);
    else if (!state.viewSet) state.map.setView([20, 0], Math.max(2, minZoom));
    state.viewSet = true;
    $("body-name").textContent = next.body || "\u2013";
    refreshState();
  }

  async function loadSources() {
    try {
      const health = await getJSON("/health");
      showModel(health.model, health.trusted);
      if (health.text_prompts === false) {
        // The server cannot read text: say how to change that instead of offering a search that fails.
        for (const id of ["text-prompt", "text-search"]) $(id).disabled = true;
        $("text-prompt").placeholder = "Text needs --detector or SAM 3";
        $("text-form").title = "Restart the server with --detector (e.g. grounding-dino-tiny) or a sam3 model "
          + "to find objects by name.";
      }
      const listing = await getJSON("/sources");
      state.sources = listing.sources || [];
      if (!state.sources.length) throw new ApiError("The server has no imagery sources configured.", 0);
      const select = $("source");
      select.replaceChildren(...state.sources.map((s) => new Option(s.name + " (" + s.body + ")", s.name)));
      $("source-picker").hidden = state.sources.length < 2;
      const chosen = state.sources.some((s) => s.name === listing.default) ? listing.default : state.sources[0].name;
      select.value = chosen;
      useSource(chosen);
    } catch (err) {
      fail(err, loadSources);
    }
  }

  // The view is kept in the address (#map=zoom/lat/lng) so it can be bookmarked or shared.
  function viewFromHash() {
    const m = /^#map=(\d+)\/(-?[\d.]+)\/(-?[\d.]+)$/.exec(window.location.hash);
    return m ? { zoom: Number(m[1]), center: [Number(m[2]), Number(m[3])] } : null;
  }

  function viewToHash() {
    const c = state.map.getCenter();
    const digits = Math.max(0, Math.ceil(Math.log10(2 ** state.map.getZoom())));
    const hash = "#map=" + state.map.getZoom() + "/" + c.lat.toFixed(digits) + "/" + c.lng.toFixed(digits);
    history.replaceState(null, "", hash);
  }

  // ---- map interaction ----------------------------------------------------------------------

  function setBoxMode(on) {
    state.boxMode = on;
    $("box-tool").setAttribute("aria-pressed", String(on));
    $("map").classList.toggle("box-mode", on);
    if (on) state.map.dragging.disable();
    else state.map.dragging.enable();
  }

  function onPointerDown(e) {
    if (!state.boxMode || e.button !== 0 || !state.source || e.target.closest(".leaflet-control")) return;
    const start = state.map.mouseEventToLatLng(e);
    const rect = L.rectangle(L.latLngBounds(start, start), { color: "#1f5fa8", weight: 2, fill: false, interactive: false })
      .addTo(state.map);
    state.drag = { start, rect, pointerId: e.pointerId };
    $("map").setPointerCapture(e.pointerId);
    e.preventDefault();
  }

  function onPointerMove(e) {
    if (!state.drag || e.pointerId !== state.drag.pointerId) return;
    state.drag.rect.setBounds(L.latLngBounds(state.drag.start, state.map.mouseEventToLatLng(e)));
  }

  function onPointerUp(e) {
    const drag = state.drag;
    if (!drag || e.pointerId !== drag.pointerId) return;
    state.drag = null;
    drag.rect.remove();
    const bounds = L.latLngBounds(drag.start, state.map.mouseEventToLatLng(e));
    const a = state.map.latLngToContainerPoint(bounds.getNorthEast());
    const b = state.map.latLngToContainerPoint(bounds.getSouthWest());
    if (Math.abs(a.x - b.x) >= MIN_BOX_PX && Math.abs(a.y - b.y) >= MIN_BOX_PX) addBox(bounds);
  }

  function onMapClick(e) {
    if (state.boxMode || !state.source) return; // in box mode a click ends a drag, it is not a point
    addPoint(e.latlng, e.originalEvent.shiftKey ? 0 : 1);
  }

  function onMapKey(e) {
    // Keyboard users: Enter / Shift+Enter prompt at the map centre (arrow keys pan, +/- zoom).
    if (e.key === "Enter" && e.target === $("map") && state.source) {
      addPoint(state.map.getCenter(), e.shiftKey ? 0 : 1);
      e.preventDefault();
    }
  }

  function onTextSubmit(e) {
    e.preventDefault();
    const phrase = $("text-prompt").value.split(/\s+/).filter(Boolean).join(" ");
    if (!phrase || !state.source) return;
    addText(phrase);
  }

  function download() {
    const objects = state.objects.filter((o) => o.features.length);
    if (!objects.length) return;
    const collection = {
      type: "FeatureCollection",
      body: objects[0].body,
      crs: objects[0].crs,
      features: objects.flatMap((o) => o.features),
    };
    const blob = new Blob([JSON.stringify(collection, null, 1)], { type: "application/geo+json" });
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = "samadapt-" + (state.source ? state.source.name : "map").replace(/[^\w.-]+/g, "_") + ".geojson";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function init() {
    const animate = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    state.map = L.map("map", {
      zoomSnap: 1, boxZoom: false, doubleClickZoom: false, keyboard: true,
      fadeAnimation: animate, zoomAnimation: animate, markerZoomAnimation: animate,
    });
    state.map.attributionControl.setPrefix(false);
    newObject();
    state.map.on("click", onMapClick);
    state.map.on("moveend", viewToHash);
    window.addEventListener("hashchange", () => {
      const view = viewFromHash();
      if (view && state.viewSet) state.map.setView(view.center, view.zoom);
    });
    const container = $("map");
    container.tabIndex = 0;
    container.addEventListener("pointerdown", onPointerDown);
    container.addEventListener("pointermove", onPointerMove);
    container.addEventListener("pointerup", onPointerUp);
    container.addEventListener("pointercancel", onPointerUp);
    container.addEventListener("keydown", onMapKey);

    $("box-tool").addEventListener("click", () => setBoxMode(!state.boxMode));
    $("text-form").addEventListener("submit", onTextSubmit);
    $("new-object").addEventListener("click", () => finishObject());
    $("undo").addEventListener("click", undo);
    $("clear").addEventListener("click", clearAll);
    $("download").addEventListener("click", download);
    $("source").addEventListener("change", (e) => useSource(e.target.value));
    $("banner-close").addEventListener("click", () => { hideBanner(); state.error = false; refreshState(); });
    document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.boxMode) setBoxMode(false); });
    $("auth").addEventListener("submit", (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("auth").hidden = true;
      hideBanner();
      const retry = state.retryAfterAuth;
      state.retryAfterAuth = null;
      refreshState();
      if (retry) retry();
    });
    refreshState();
    loadSources();
  }

  init();
})();
