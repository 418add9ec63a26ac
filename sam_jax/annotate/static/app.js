// sam-jax annotate: the page of the annotation tool (no build step, no external files).
// Prompts go to /api/decode; the mask shown is (model mask OR brush) AND NOT eraser.
"use strict";

const S = {
  images: [], index: 0, name: null, w: 0, h: 0, img: null,
  anns: [], points: [], box: null, decodeId: null,
  model: null, paint: null, erase: null, stack: [],
  mode: "prompt", t0: null, pending: 0, decodes: 0, chain: Promise.resolve(), lastMs: null,
};
window.samAnnotate = S;  // for the browser tests

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const acceptedLayer = document.createElement("canvas");
const currentLayer = document.createElement("canvas");

// ------------------------------------------------------------------ helpers

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(method, path, body) {
  S.pending++;
  try {
    const opts = {method, headers: {}};
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    const data = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
    if (!r.ok) {
      const err = new Error(data.error || `HTTP ${r.status}`);
      err.status = r.status;
      throw err;
    }
    return data;
  } finally {
    S.pending--;
  }
}

// Row-major run lengths, background first (the API's mask format).
function runsToMask(counts, n) {
  const m = new Uint8Array(n);
  let pos = 0, v = 0;
  for (const c of counts) {
    if (v) m.fill(1, pos, pos + c);
    pos += c;
    v ^= 1;
  }
  return m;
}

// COCO compressed RLE (column-major runs, pycocotools' string coding) -> row-major mask.
function cocoCounts(s) {
  const cnts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k);
      more = c & 0x20;
      p++; k++;
      if (!more && (c & 0x10)) x -= 2 ** (5 * k);
    }
    if (cnts.length > 2) x += cnts[cnts.length - 2];
    cnts.push(x);
  }
  return cnts;
}

// Write `value` into lab (row-major, W x H) wherever the COCO RLE mask is set.
function fillCoco(seg, lab, value, w, h) {
  let p = 0, v = 0;
  for (const c of cocoCounts(seg.counts)) {
    if (v) for (let q = p; q < p + c; q++) lab[(q % h) * w + Math.floor(q / h)] = value;
    p += c;
    v ^= 1;
  }
}

function maskToRuns(m) {
  const counts = [];
  let v = 0, run = 0;
  for (let i = 0; i < m.length; i++) {
    if (m[i] !== v) { counts.push(run); run = 0; v = m[i]; }
    run++;
  }
  counts.push(run);
  return counts;
}

function color(id) {
  const hue = (id * 137.508) % 360;
  return `hsl(${hue}, 80%, 55%)`;
}

function rgb(id) {
  const probe = document.createElement("canvas").getContext("2d");
  probe.fillStyle = color(id);
  probe.fillRect(0, 0, 1, 1);
  return probe.getImageData(0, 0, 1, 1).data;
}

function current() {
  // The mask being drawn: (model OR paint) AND NOT erase; null if nothing.
  if (!S.model && !S.paint) return null;
  const n = S.w * S.h, out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = ((S.model && S.model[i]) || (S.paint && S.paint[i])) && !(S.erase && S.erase[i]) ? 1 : 0;
  }
  return out;
}

// ------------------------------------------------------------------ drawing

// Paint mask m into RGBA data: fill at alpha `fill`, its outline opaque.
function paintMask(data, m, r, g, b, fill) {
  const w = S.w, h = S.h;
  for (let i = 0; i < m.length; i++) {
    if (!m[i]) continue;
    const x = i % w, y = (i - x) / w;
    const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
      !m[i - 1] || !m[i + 1] || !m[i - w] || !m[i + w];
    const j = 4 * i;
    data[j] = r; data[j + 1] = g; data[j + 2] = b; data[j + 3] = edge ? 255 : fill;
  }
}

function renderAccepted() {
  // One label image for all accepted masks (the later mask wins where they overlap), so
  // the cost is their total area plus one pass over the pixels, however many masks.
  const w = S.w, h = S.h, n = w * h;
  acceptedLayer.width = w; acceptedLayer.height = h;
  const c = acceptedLayer.getContext("2d");
  const data = c.createImageData(w, h), d = data.data;
  const lab = new Int32Array(n);
  S.anns.forEach((a, k) => fillCoco(a.segmentation, lab, k + 1, w, h));
  const colours = S.anns.map((a) => rgb(a.id));
  for (let i = 0; i < n; i++) {
    const k = lab[i];
    if (!k) continue;
    const x = i % w;
    const edge = x === 0 || x === w - 1 || i < w || i >= n - w ||
      lab[i - 1] !== k || lab[i + 1] !== k || lab[i - w] !== k || lab[i + w] !== k;
    const [r, g, b] = colours[k - 1], j = 4 * i;
    d[j] = r; d[j + 1] = g; d[j + 2] = b; d[j + 3] = edge ? 255 : 110;
  }
  c.putImageData(data, 0, 0);
}

function renderCurrent() {
  currentLayer.width = S.w; currentLayer.height = S.h;
  const c = currentLayer.getContext("2d");
  const m = current();
  let area = 0;
  if (m) {
    const data = c.createImageData(S.w, S.h);
    for (let i = 0; i < m.length; i++) area += m[i];
    paintMask(data.data, m, 30, 144, 255, 150);
    c.putImageData(data, 0, 0);
  }
  $("maskinfo").textContent = m ? `current mask: ${area} px` : "";
  $("maskinfo").dataset.area = String(area);
}

function draw(drag) {
  if (!S.img) return;
  ctx.clearRect(0, 0, S.w, S.h);
  ctx.drawImage(S.img, 0, 0);
  ctx.drawImage(acceptedLayer, 0, 0);
  ctx.drawImage(currentLayer, 0, 0);
  const r = Math.max(3, Math.round(Math.max(S.w, S.h) / 150));
  ctx.lineWidth = Math.max(1, r / 3);
  for (const [x, y, label] of S.points) {
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fillStyle = label ? "#2ecc40" : "#ff4136";
    ctx.fill();
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  }
  const box = drag || S.box;
  if (box) {
    ctx.strokeStyle = "#ffdc00";
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
}

function renderList() {
  const ul = $("masks");
  ul.innerHTML = "";
  for (const a of S.anns) {
    const li = document.createElement("li");
    li.className = a.source;
    li.dataset.id = a.id;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = color(a.id);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = `#${a.id} ${a.source} ${a.area} px` + (a.source === "manual" ? ` ${a.seconds.toFixed(1)} s` : "");
    const del = document.createElement("button");
    del.className = "delete";
    del.title = "delete this mask";
    del.textContent = "\u2715";
    del.addEventListener("click", () => deleteMask(a.id));
    li.append(sw, label, del);
    ul.append(li);
  }
  $("nmasks").textContent = String(S.anns.length);
}

function showView(v) {
  S.anns = v.annotations;
  renderAccepted();
  renderList();
  draw();
}

async function refreshCounter() {
  const list = await api("GET", "/api/images");
  S.images = list.images.map((x) => x.name);
  $("counter").textContent = `image ${S.index + 1} / ${list.total} \u00b7 done ${list.done} / ${list.total}`;
  $("counter").dataset.done = String(list.done);
}

// ------------------------------------------------------------------ object being drawn

function resetObject() {
  S.points = []; S.box = null; S.decodeId = null;
  S.model = null; S.paint = null; S.erase = null; S.stack = []; S.t0 = null;
  renderCurrent();
  draw();
}

function snapshot() {
  S.stack.push({points: S.points.slice(), box: S.box, decodeId: S.decodeId, model: S.model,
                paint: S.paint && S.paint.slice(), erase: S.erase && S.erase.slice()});
  if (S.stack.length > 100) S.stack.shift();
  if (S.t0 === null) S.t0 = performance.now();
}

function decode() {
  // Serialised: each decode feeds the previous one's logits back (mask_input).
  S.chain = S.chain.then(async () => {
    if (!S.points.length && !S.box) { S.model = null; S.decodeId = null; renderCurrent(); draw(); return; }
    const name = S.name;
    const body = {image: name, points: S.points, box: S.box, mask_input: S.decodeId};
    let r;
    try {
      r = await api("POST", "/api/decode", body);
    } catch (e) {
      if (e.status === 422 && S.decodeId) {  // stale mask_input: retry without it
        body.mask_input = null;
        try { r = await api("POST", "/api/decode", body); } catch (e2) { status(e2.message, true); return; }
      } else { status(e.message, true); return; }
    }
    if (name !== S.name) return;
    S.decodeId = r.decode_id;
    S.model = runsToMask(r.mask.counts, S.w * S.h);
    S.decodes++;
    S.lastMs = r.ms;
    renderCurrent();
    draw();
    status(`score ${r.score.toFixed(3)}, stability ${r.stability.toFixed(3)}, ${r.ms.toFixed(0)} ms on the server`);
  });
  return S.chain;
}

async function accept() {
  await S.chain;
  const m = current();
  if (!m || !m.some((v) => v)) { status("nothing to accept: click on an object first", true); return; }
  const seconds = S.t0 === null ? 0 : (performance.now() - S.t0) / 1000;
  try {
    const v = await api("POST", "/api/accept", {
      image: S.name, mask: {counts: maskToRuns(m)}, decode_id: S.model ? S.decodeId : null,
      seconds, points: S.points});
    resetObject();
    showView(v);
    status(`accepted mask #${v.id} (${seconds.toFixed(1)} s)`);
    await refreshCounter();
  } catch (e) { status(e.message, true); }
}

async function undo() {
  await S.chain;
  if (S.stack.length) {
    const s = S.stack.pop();
    Object.assign(S, {points: s.points, box: s.box, decodeId: s.decodeId, model: s.model,
                      paint: s.paint, erase: s.erase});
    if (!S.stack.length) S.t0 = null;
    renderCurrent();
    draw();
    status("undid the last prompt");
    return;
  }
  try {
    const v = await api("POST", "/api/undo", {image: S.name});
    showView(v);
    status(`undid ${v.undone} of mask #${v.id}`);
    await refreshCounter();
  } catch (e) { status(e.message, true); }
}

async function deleteMask(id) {
  try {
    const v = await api("POST", "/api/delete", {image: S.name, id});
    showView(v);
    status(`deleted mask #${id}`);
    await refreshCounter();
  } catch (e) { status(e.message, true); }
}

// ------------------------------------------------------------------ images

async function openImage(index) {
  if (!S.images.length) { status("no images in the folder", true); return; }
  S.index = Math.max(0, Math.min(S.images.length - 1, index));
  const name = S.images[S.index];
  S.name = name;
  $("imagename").textContent = name;
  status(`opening ${name} (computing its embedding)...`);
  const img = new Image();
  const loaded = new Promise((ok, fail) => { img.onload = ok; img.onerror = () => fail(new Error(`cannot load ${name}`)); });
  img.src = `/api/image?name=${encodeURIComponent(name)}`;
  try {
    const [v] = await Promise.all([api("POST", "/api/open", {image: name}), loaded]);
    if (S.name !== name) return;
    S.img = img; S.w = img.naturalWidth; S.h = img.naturalHeight;
    canvas.width = S.w; canvas.height = S.h;
    fit();
    resetObject();
    showView(v);
    await refreshCounter();
    status(`${name}: ${v.annotations.length} masks` + (v.prefilled ? " (prefilled)" : "") + ". Click an object.");
    document.body.dataset.ready = name;
  } catch (e) { status(e.message, true); }
}

// Show the image as large as the stage allows (pixels stay square); clicks are mapped back.
function fit() {
  if (!S.w) return;
  const stage = $("stage"), pad = 16;
  const scale = Math.min((stage.clientWidth - pad) / S.w, (stage.clientHeight - pad) / S.h);
  canvas.style.width = `${Math.max(1, Math.floor(S.w * scale))}px`;
  canvas.style.height = `${Math.max(1, Math.floor(S.h * scale))}px`;
}
window.addEventListener("resize", fit);

// ------------------------------------------------------------------ input

function imageXY(ev) {
  const r = canvas.getBoundingClientRect();
  const x = (ev.clientX - r.left) * S.w / r.width, y = (ev.clientY - r.top) * S.h / r.height;
  return [Math.min(S.w - 0.5, Math.max(0, x)), Math.min(S.h - 0.5, Math.max(0, y))];
}

function stroke(x0, y0, x1, y1) {
  const n = S.w * S.h;
  if (!S.paint) S.paint = new Uint8Array(n);
  if (!S.erase) S.erase = new Uint8Array(n);
  const rad = Number($("brush-size").value), on = S.mode === "brush";
  const steps = Math.max(1, Math.ceil(Math.hypot(x1 - x0, y1 - y0) / Math.max(1, rad / 2)));
  for (let s = 0; s <= steps; s++) {
    const cx = x0 + (x1 - x0) * s / steps, cy = y0 + (y1 - y0) * s / steps;
    for (let y = Math.max(0, Math.floor(cy - rad)); y <= Math.min(S.h - 1, Math.ceil(cy + rad)); y++) {
      for (let x = Math.max(0, Math.floor(cx - rad)); x <= Math.min(S.w - 1, Math.ceil(cx + rad)); x++) {
        if ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= rad * rad) {
          const i = y * S.w + x;
          S.paint[i] = on ? 1 : 0;
          S.erase[i] = on ? 0 : 1;
        }
      }
    }
  }
}

let down = null;
canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
canvas.addEventListener("mousedown", (ev) => {
  if (!S.img) return;
  ev.preventDefault();
  const [x, y] = imageXY(ev);
  down = {x, y, cx: ev.clientX, cy: ev.clientY, button: ev.button, shift: ev.shiftKey, drag: false};
  if (S.t0 === null) S.t0 = performance.now();  // the object's time starts at its first press
  if (S.mode !== "prompt") { snapshot(); stroke(x, y, x, y); renderCurrent(); draw(); }
});
canvas.addEventListener("mousemove", (ev) => {
  if (!down) return;
  const [x, y] = imageXY(ev);
  if (S.mode !== "prompt") {
    stroke(down.x, down.y, x, y); down.x = x; down.y = y; renderCurrent(); draw(); return;
  }
  if (down.button === 0 && Math.hypot(ev.clientX - down.cx, ev.clientY - down.cy) > 5) down.drag = true;
  if (down.drag) draw([Math.min(down.x, x), Math.min(down.y, y), Math.max(down.x, x), Math.max(down.y, y)]);
});
window.addEventListener("mouseup", (ev) => {
  if (!down) return;
  const d = down;
  down = null;
  if (S.mode !== "prompt") return;
  const [x, y] = imageXY(ev);
  snapshot();
  if (d.drag) {
    S.box = [Math.min(d.x, x), Math.min(d.y, y), Math.max(d.x, x), Math.max(d.y, y)];
  } else {
    S.points.push([d.x, d.y, d.button === 2 || d.shift ? 0 : 1]);
  }
  draw();
  decode();
});

function setMode(mode) {
  S.mode = mode;
  for (const m of ["prompt", "brush", "eraser"]) $(`mode-${m}`).classList.toggle("active", m === mode);
  canvas.style.cursor = mode === "prompt" ? "crosshair" : "cell";
}

document.addEventListener("keydown", (ev) => {
  if (ev.target.tagName === "INPUT") return;
  const k = ev.key;
  if (k === "Enter") { ev.preventDefault(); accept(); }
  else if ((k === "z" && (ev.ctrlKey || ev.metaKey)) || k === "Backspace") { ev.preventDefault(); undo(); }
  else if (k === "Escape") { resetObject(); }
  else if (k === "n" || k === "ArrowRight") { openImage(S.index + 1); }
  else if (k === "p" || k === "ArrowLeft") { openImage(S.index - 1); }
  else if (k === "v") { setMode("prompt"); }
  else if (k === "b") { setMode("brush"); }
  else if (k === "e") { setMode("eraser"); }
});

// Keys belong to the page, not to the last button clicked (Enter would press it again).
document.addEventListener("click", (ev) => { const b = ev.target.closest("button"); if (b) b.blur(); });
$("prev").addEventListener("click", () => openImage(S.index - 1));
$("next").addEventListener("click", () => openImage(S.index + 1));
$("accept").addEventListener("click", accept);
$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", () => { resetObject(); status("cleared"); });
$("mode-prompt").addEventListener("click", () => setMode("prompt"));
$("mode-brush").addEventListener("click", () => setMode("brush"));
$("mode-eraser").addEventListener("click", () => setMode("eraser"));
$("export").addEventListener("click", async () => {
  try {
    const r = await api("POST", "/api/export", {});
    status(`exported ${r.images} images, ${r.masks} masks to ${r.path}`);
  } catch (e) { status(e.message, true); }
});

(async () => {
  try {
    await refreshCounter();
    await openImage(0);
  } catch (e) { status(e.message, true); }
})();
