// The page: load onnxruntime-web and the sampler site.json names, then draw digits with it. When the site has
// an int8 file, that file runs alone by default (the faster one, as good as fp32); the "compare with fp32" box
// (or ?compare=1) loads the fp32 file too and draws the same noise through both. Every failure the user can
// cause or meet is one sentence in #message.
import { DIGIT_SIZE, gaussianNoise, loadSampler, readMetadata, sampleDigits } from "./fm-edge-sampler.js";

const $ = (id) => document.getElementById(id);
const SCALE = 3; // screen pixels per digit pixel
const PAD = 4; // pixels between digits
const PER_ROW = 8;
const NOT_A_SAMPLER = "That file is not an fm-edge sampler.onnx: pick a sampler.onnx written by fm-edge export.";

const state = {
  site: null, ort: null, ep: "", threads: 1, options: {}, columns: [], busy: false, running: Promise.resolve(),
  loaded: {}, // model key -> column, each session made once
  compare: false, // fp32 beside int8
  picked: false, // a file from "another sampler.onnx" is shown in place of the site's samplers
};

class Sentence extends Error {} // an error whose message is already the sentence the page shows

function say(sentence) {
  $("message").textContent = sentence;
  $("message").hidden = !sentence;
}

function describe(err) {
  if (err instanceof Sentence) return err.message;
  console.error(err);
  return `Something went wrong: ${String(err?.message ?? err).split("\n")[0]}`;
}

// onnxruntime-web: the site's one build. The WebGPU build runs WebGPU where the browser offers an adapter
// and WASM otherwise; the plain build (fm-edge web --no-webgpu) runs WASM. ?ep=wasm forces WASM.
async function loadRuntime(site, wasmOnly = false) {
  const query = new URLSearchParams(location.search);
  const forceWasm = wasmOnly || query.get("ep") === "wasm";
  let gpu = false;
  if (site.ort.webgpu && !forceWasm && navigator.gpu) {
    gpu = Boolean(await navigator.gpu.requestAdapter().catch(() => null));
  }
  let ort;
  try {
    ort = await import(new URL(site.ort.module, location.href).href);
  } catch {
    throw new Sentence("The runtime (onnxruntime-web) did not load: serve the whole folder fm-edge web wrote.");
  }
  ort.env.wasm.wasmPaths = new URL("ort/", location.href).href; // an absolute URL: a bare folder fails
  // threads need cross-origin isolation (the COOP/COEP headers); ORT's own default is half the cores.
  // ?threads=N overrides (for profiling).
  const cores = Math.min(Number(query.get("threads")) || navigator.hardwareConcurrency || 1, 8);
  const threads = crossOriginIsolated ? cores : 1;
  ort.env.wasm.numThreads = threads;
  return { ort, ep: gpu ? "webgpu" : "wasm", threads };
}

async function makeColumn(name, bytes) {
  const meta = readMetadata(bytes);
  if (!meta || meta.model !== "sampler") throw new Sentence(NOT_A_SAMPLER);
  let session;
  try {
    session = await loadSampler(state.ort, bytes, state.options);
  } catch (err) {
    console.error(err);
    throw new Sentence("onnxruntime-web could not load that sampler.onnx: it may be damaged or too new.");
  }
  const evals = meta.network_evals_per_image ?? meta.nfe ?? "?";
  const el = document.createElement("div");
  el.className = "column";
  el.innerHTML = "<h2></h2><p class=meta></p><canvas></canvas><p class=stats></p>";
  el.querySelector("h2").textContent = name;
  el.querySelector(".meta").textContent =
    `${(bytes.length / 1e6).toFixed(2)} MB · NFE ${meta.nfe ?? "?"} (${evals} network evaluation(s) per digit)` +
    ` · ${meta.solver ?? "?"} ${meta.steps ?? "?"} step(s)${meta.precision ? ` · ${meta.precision}` : ""}`;
  const column = { name, meta, session, bytes: bytes.length, el, canvas: el.querySelector("canvas") };
  column.stats = el.querySelector(".stats");
  const cfg = Number(meta.cfg_scale);
  column.cfgScale = Number.isFinite(cfg) && cfg >= 0 ? cfg : 1;
  // one warm-up run: the first call sets up memory and would inflate the first time shown
  await sampleDigits(state.ort, session, gaussianNoise(1, 1), [0], column.cfgScale);
  return column;
}

function showColumns(columns) {
  state.columns = columns;
  $("columns").replaceChildren(...columns.map((c) => c.el));
  $("compare").textContent = "";
}

// The site's samplers to show: int8 alone by default, fp32 first and int8 beside it when comparing, fp32 alone
// on a site without int8 (fm-edge web --no-int8).
function siteNames() {
  const models = state.site.models;
  if (!("int8" in models)) return Object.keys(models);
  return state.compare ? ["fp32", "int8"] : ["int8"];
}

async function fetchModel(name) {
  const path = state.site.models[name];
  const r = await fetch(path).catch(() => null);
  if (!r?.ok) throw new Sentence(`The sampler ${path} did not load: serve the whole folder fm-edge web wrote.`);
  return new Uint8Array(await r.arrayBuffer());
}

// The columns of siteNames(), each fetched and loaded the first time it is needed.
async function siteColumns() {
  const columns = [];
  for (const name of siteNames()) {
    state.loaded[name] ??= await makeColumn(name, await fetchModel(name));
    columns.push(state.loaded[name]);
  }
  return columns;
}

// The checkbox: add the fp32 column before int8 (loading it the first time), or remove it.
async function setCompare(on) {
  if (!("int8" in state.site.models)) throw new Sentence("This site has no int8 sampler to compare with fp32.");
  if (state.picked) throw new Sentence("A picked file is shown alone: reload the page to compare fp32 and int8.");
  state.compare = on;
  if (on && !state.loaded.fp32) $("status").textContent = "Loading the fp32 sampler…";
  try {
    const columns = await siteColumns();
    for (const c of columns) {
      if (state.columns.includes(c)) continue;
      // a column shown again: its old digits came from other noise than its neighbour's
      c.canvas.getContext("2d").clearRect(0, 0, c.canvas.width, c.canvas.height);
      c.stats.textContent = "";
    }
    showColumns(columns);
  } catch (err) {
    state.compare = false; // the int8 column stays
    throw err;
  } finally {
    $("compare-fp32").checked = state.compare;
    $("status").textContent = "Ready: press Generate.";
  }
  return state.columns.map((c) => c.name);
}

function draw(canvas, images, n) {
  const cols = Math.min(n, PER_ROW);
  const rows = Math.ceil(n / PER_ROW);
  const cell = 28 * SCALE + PAD;
  canvas.width = cols * cell + PAD;
  canvas.height = rows * cell + PAD;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(canvas.width, canvas.height);
  img.data.fill(58); // the gaps: dark grey, so a black digit background shows its edge
  for (let k = 0; k < n; k++) {
    const x0 = (k % cols) * cell + PAD;
    const y0 = Math.floor(k / cols) * cell + PAD;
    for (let y = 0; y < 28 * SCALE; y++) {
      for (let x = 0; x < 28 * SCALE; x++) {
        const v = images[k * DIGIT_SIZE + Math.floor(y / SCALE) * 28 + Math.floor(x / SCALE)];
        const i = ((y0 + y) * canvas.width + x0 + x) * 4;
        img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
      }
    }
  }
  for (let i = 3; i < img.data.length; i += 4) img.data[i] = 255;
  ctx.putImageData(img, 0, 0);
}

// The digits as drawn: one pixel from the middle of each block (what the browser test compares).
function readCanvas(index, n) {
  const canvas = state.columns[index].canvas;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const cols = Math.min(n, PER_ROW);
  const cell = 28 * SCALE + PAD;
  const out = new Uint8Array(n * DIGIT_SIZE);
  for (let k = 0; k < n; k++) {
    for (let p = 0; p < DIGIT_SIZE; p++) {
      const x = (k % cols) * cell + PAD + (p % 28) * SCALE + 1;
      const y = Math.floor(k / cols) * cell + PAD + Math.floor(p / 28) * SCALE + 1;
      out[k * DIGIT_SIZE + p] = data[(y * canvas.width + x) * 4];
    }
  }
  return out;
}

function psnr(a, b) {
  let sum = 0;
  let top = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    sum += d * d;
    top = Math.max(top, Math.abs(d));
  }
  const mse = sum / a.length;
  return { maxDiff: top, psnr: mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse) };
}

// Sample the same noise through every column, draw, and show the time per digit.
async function generate(labels, noise) {
  const results = [];
  for (const column of state.columns) {
    const t0 = performance.now();
    const images = await sampleDigits(state.ort, column.session, noise, labels, column.cfgScale);
    const ms = performance.now() - t0;
    draw(column.canvas, images, labels.length);
    const perDigit = ms / labels.length;
    column.stats.textContent = `${perDigit.toFixed(2)} ms per digit (${labels.length} in ${ms.toFixed(0)} ms)`;
    results.push({ name: column.name, ms, msPerDigit: perDigit, images });
  }
  if (results.length === 2) {
    const { maxDiff, psnr: db } = psnr(results[0].images, results[1].images);
    const shown = Number.isFinite(db) ? `${db.toFixed(1)} dB` : "identical";
    $("compare").textContent = `${results[1].name} vs ${results[0].name}: max |diff| ${maxDiff} grey levels, PSNR ${shown}`;
  }
  return results;
}

function wholeNumber(text, low, high, sentence) {
  const t = text.trim();
  const v = Number(t);
  if (!/^[0-9]+$/.test(t) || v < low || v > high) throw new Sentence(sentence(JSON.stringify(t)));
  return v;
}

function readForm() {
  const max = state.site.max_count;
  const count = wholeNumber($("count").value, 1, max, (got) => `The count must be a whole number from 1 to ${max}; got ${got}.`);
  const digits = $("digits").value.replace(/[\s,]+/g, "");
  if (!/^[0-9]+$/.test(digits)) {
    throw new Sentence(`Digits must be one or more of 0-9, such as 0123456789; got ${JSON.stringify($("digits").value)}.`);
  }
  const seed = wholeNumber($("seed").value, 0, 2 ** 32 - 1, (got) => `The noise seed must be a whole number from 0 to 4294967295; got ${got}.`);
  const labels = Array.from({ length: count }, (_, i) => Number(digits[i % digits.length]));
  return { labels, noise: gaussianNoise(count, seed) };
}

// One piece of work at a time (a Generate, a load); the button and the checkbox wait for it.
function busy(work) {
  if (state.busy) return Promise.resolve(undefined);
  state.busy = true;
  $("generate").disabled = $("compare-fp32").disabled = true;
  state.running = (async () => {
    try {
      say("");
      return await work();
    } catch (err) {
      say(describe(err));
      return undefined;
    } finally {
      state.busy = false;
      $("generate").disabled = state.columns.length === 0;
      $("compare-fp32").disabled = false;
    }
  })();
  return state.running;
}

async function start() {
  if (typeof WebAssembly !== "object") {
    throw new Sentence("This browser cannot run WebAssembly, which the digits need: try a current Chrome, Edge, Firefox or Safari.");
  }
  const response = await fetch("site.json").catch(() => null);
  if (!response?.ok) throw new Sentence("The site's site.json is missing: serve the whole folder fm-edge web wrote.");
  state.site = await response.json();
  const query = new URLSearchParams(location.search);
  // ?compare=1: start with fp32 beside int8 (for scripts); the checkbox shows only where there is int8
  const pair = "int8" in state.site.models;
  state.compare = pair && query.get("compare") === "1";
  // ?opt=disabled|basic|extended|all: ORT's graph optimization level (for profiling; default all)
  const level = query.get("opt") ?? "all";
  const open = async (wasmOnly) => {
    Object.assign(state, await loadRuntime(state.site, wasmOnly));
    state.options = { executionProviders: [state.ep], graphOptimizationLevel: level };
    state.loaded = {};
    return siteColumns();
  };
  let columns;
  try {
    columns = await open(false);
  } catch (err) {
    if (state.ep !== "webgpu") throw err;
    console.warn("WebGPU failed, using WASM:", err); // a driver or an operator WebGPU lacks
    columns = await open(true);
  }
  showColumns(columns);
  $("compare-fp32").checked = state.compare;
  $("compare-label").hidden = !pair;
  const isolation = crossOriginIsolated ? "cross-origin isolated" : "not cross-origin isolated (see docs/web.md: _headers)";
  $("runtime").textContent =
    `onnxruntime-web ${state.site.ort_version ?? ""} · ${state.ep} · ${state.threads} thread(s) · ${isolation}.`;
  $("status").textContent = "Ready: press Generate.";
}

async function useFile(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  showColumns([await makeColumn(file.name, bytes)]);
  state.picked = true;
  $("compare-label").hidden = true; // a picked file is shown alone; reloading the page brings the box back
  $("status").textContent = `Using ${file.name}.`;
}

function offline() {
  if (!("serviceWorker" in navigator)) return;
  navigator.serviceWorker.register("sw.js").then(
    () => navigator.serviceWorker.ready.then(() => ($("offline").textContent = "Works offline once loaded.")),
    () => ($("offline").textContent = "No offline copy (this host does not allow a service worker)."),
  );
}

const ready = busy(start).then(() => {
  if (!state.columns.length) throw new Error($("message").textContent);
});
ready.catch(() => ($("status").textContent = ""));
offline();

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy(async () => {
    const { labels, noise } = readForm();
    await generate(labels, noise);
  });
});
$("compare-fp32").addEventListener("change", (event) => busy(() => setCompare(event.target.checked)));
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) busy(() => useFile(file));
});

// For tests and the console: the same path as the button, with noise from outside.
window.fmEdge = {
  ready,
  generate: (labels, noise) => busy(() => generate(labels, noise)),
  readCanvas,
  // the checkbox's path: resolves to the shown columns' names once they are ready (undefined on a failure,
  // whose sentence is in #message)
  setCompare: async (on) => {
    await ready;
    while (state.busy) await state.running;
    return busy(() => setCompare(Boolean(on)));
  },
  info: () => ({
    ep: state.ep, threads: state.threads, isolated: crossOriginIsolated, site: state.site,
    columns: state.columns.map((c) => c.name), compare: state.compare,
  }),
};
