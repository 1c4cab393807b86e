// The page of `daonet serve --web`: the first layer runs here (daonet-device.mjs); only the payload is sent.
import { Client, KeyedMasks, RandomMasks, SimilarityKeyedMasks, loadDevice } from "./daonet-device.mjs";

const $ = (id) => document.getElementById(id);
// What the page did last, for people curious in the console and for the browser tests.
const state = { device: null, input: null, payload: null, answer: null, error: null, busy: false };
window.daonetPage = state;

function showError(exc) {
  state.error = exc ? `${exc.name || "Error"}: ${exc.message}` : null;
  $("error").hidden = !exc;
  $("error").textContent = state.error || "";
}

function facts(el, rows) {
  el.replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
}

// -- the model ------------------------------------------------------------------------------------------
async function loadModels() {
  const r = await fetch("/device-bundles/index.json");
  if (!r.ok) throw new Error(`the server lists no device bundles (${r.status}); start it with \`daonet serve --web\``);
  const { bundles } = await r.json();
  $("model").replaceChildren(...bundles.map((b) => new Option(`${b.model_id} (${b.version})`, b.path)));
  if (!bundles.length) throw new Error("the server serves no model with a device bundle");
  await selectModel();
}

async function selectModel() {
  state.device = null;
  state.ready = false;
  $("predict").disabled = true;
  showError(null);
  $("bundle-status").textContent = "loading and verifying the device bundle...";
  try {
    const device = await loadDevice($("model").value);
    state.device = device;
    const shape = device.inputShape;
    const ldp = device.ldp ? `; Gaussian mechanism: (epsilon = ${device.ldp.epsilon.toPrecision(3)}, delta = ` +
      `${device.ldp.delta}) per request` : "";
    $("bundle-status").textContent = `${device.modelId} ${device.version}: ${device.kind} first layer, input ` +
      `${shape.join("x")}, ${device.nOutputs} outputs, drop rate ${device.dropRate}${ldp}; weights verified (SHA-256)`;
    const image = shape.length === 3;
    $("image-input").hidden = !image;
    $("signal-input").hidden = image;
    if (image) { $("preview").width = shape[2]; $("preview").height = shape[1]; }
    $("predict").disabled = false;
    state.ready = true;
  } catch (exc) {
    $("bundle-status").textContent = "the device bundle was refused";
    showError(exc);
  }
}

// -- image input: a drawing pad, or an image file -----------------------------------------------------------
const pad = $("pad");
const ctx = pad.getContext("2d");
let drawing = false;
let drawn = false;
function clearPad() {
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, pad.width, pad.height);
  drawn = false; state.input = null;
}
clearPad();
function at(ev) {
  const r = pad.getBoundingClientRect();
  return [(ev.clientX - r.left) * (pad.width / r.width), (ev.clientY - r.top) * (pad.height / r.height)];
}
pad.addEventListener("pointerdown", (ev) => {
  drawing = true; drawn = true;
  pad.setPointerCapture?.(ev.pointerId);
  const [x, y] = at(ev);
  ctx.beginPath(); ctx.moveTo(x, y);
  ctx.strokeStyle = "#fff"; ctx.lineWidth = 20; ctx.lineCap = "round"; ctx.lineJoin = "round";
  ctx.lineTo(x + 0.1, y + 0.1); ctx.stroke();
});
pad.addEventListener("pointermove", (ev) => {
  if (!drawing) return;
  const [x, y] = at(ev);
  ctx.lineTo(x, y); ctx.stroke();
});
const endStroke = () => {
  if (!drawing) return;
  drawing = false;
  state.input = padPixels();
  predict();
};
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointerleave", endStroke);
$("clear").addEventListener("click", clearPad);

/** Pixels of a canvas region scaled to the model's input (uint8, channel-first). */
function pixelsOf(source, sx, sy, sw, sh, box) {
  const [c, h, w] = state.device.inputShape;
  const small = $("preview");
  const sctx = small.getContext("2d");
  sctx.imageSmoothingEnabled = true; sctx.imageSmoothingQuality = "high";
  sctx.fillStyle = "#000"; sctx.fillRect(0, 0, w, h);
  if (box) sctx.drawImage(source, sx, sy, sw, sh, box[0], box[1], box[2], box[3]);
  else sctx.drawImage(source, sx, sy, sw, sh, 0, 0, w, h);
  const rgba = sctx.getImageData(0, 0, w, h).data;
  const out = new Uint8Array(c * h * w);
  for (let i = 0; i < h * w; i++) {
    const [r, g, b] = [rgba[4 * i], rgba[4 * i + 1], rgba[4 * i + 2]];
    if (c === 1) out[i] = Math.round((r * 299 + g * 587 + b * 114) / 1000);
    else { out[i] = r; out[h * w + i] = g; out[2 * h * w + i] = b; }
  }
  return out;
}

/** The drawing as the model's input: MNIST-style, the stroke's bounding box fitted into the centre 20/28. */
function padPixels() {
  const [, h, w] = state.device.inputShape;
  const img = ctx.getImageData(0, 0, pad.width, pad.height).data;
  let [x0, y0, x1, y1] = [pad.width, pad.height, -1, -1];
  for (let y = 0; y < pad.height; y++) for (let x = 0; x < pad.width; x++) {
    if (img[4 * (y * pad.width + x)] > 0) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  }
  if (x1 < 0) return pixelsOf(pad, 0, 0, pad.width, pad.height, null);
  const side = Math.max(x1 - x0 + 1, y1 - y0 + 1);
  const scale = (Math.min(h, w) * 20 / 28) / side;
  const [bw, bh] = [(x1 - x0 + 1) * scale, (y1 - y0 + 1) * scale];
  return pixelsOf(pad, x0, y0, x1 - x0 + 1, y1 - y0 + 1, [(w - bw) / 2, (h - bh) / 2, bw, bh]);
}

$("image-file").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  if (!file || !state.device) return;
  try {
    const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    state.input = pixelsOf(bitmap, 0, 0, bitmap.width, bitmap.height, null);
    drawn = false;
    await predict();
  } catch (exc) {
    showError(exc);
  }
});

// -- signal input: a CSV file --------------------------------------------------------------------------------
$("csv-file").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  if (!file || !state.device) return;
  showError(null);
  const values = (await file.text()).split(/[\s,;]+/).filter((s) => s.length).map(Number);
  const size = state.device.inputShape.reduce((a, b) => a * b, 1);
  if (values.length !== size || values.some((v) => !Number.isFinite(v))) {
    showError(new Error(`${file.name} holds ${values.length} values${values.some((v) => !Number.isFinite(v)) ? " (some not numbers)" : ""}; this model takes one signal of ${size} numbers`));
    return;
  }
  state.input = Float32Array.from(values);
  plotLine($("signal-plot"), state.input);
  await predict();
});

function plotLine(canvas, values) {
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const lo = Math.min(...values); const hi = Math.max(...values);
  g.strokeStyle = "#1d2330"; g.beginPath();
  values.forEach((v, i) => {
    const x = (i / Math.max(1, values.length - 1)) * (canvas.width - 8) + 4;
    const y = canvas.height - 6 - ((v - lo) / (hi - lo || 1)) * (canvas.height - 12);
    if (i) g.lineTo(x, y); else g.moveTo(x, y);
  });
  g.stroke();
}

function plotSent(canvas, values) {
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  let hi = 0;
  for (const v of values) hi = Math.max(hi, v);
  g.fillStyle = "#3b6fd8";
  values.forEach((v, i) => {
    if (!v) return;
    const x = (i / values.length) * canvas.width;
    const hgt = (v / (hi || 1)) * (canvas.height - 4);
    g.fillRect(x, canvas.height - hgt, Math.max(1, canvas.width / values.length), hgt);
  });
}

// -- predict -------------------------------------------------------------------------------------------------
async function predict() {
  const device = state.device;
  if (!device || !state.input || state.busy) return;
  state.busy = true;
  showError(null);
  try {
    const mode = $("mask-mode").value;
    const masks = mode === "keyed" ? await KeyedMasks.fromStorage(localStorage, device.version)
      : mode === "similarity" ? await SimilarityKeyedMasks.fromStorage(localStorage, device.version) : new RandomMasks();
    const apiKey = $("api-key").value || null;
    const client = new Client(location.origin, device, { masks, apiKey });
    const answer = await client.predict(state.input);
    state.payload = answer.payload.data;
    state.answer = { label: answer.label, index: answer.index, probabilities: answer.probabilities, bytesSent: answer.bytesSent };
    const cert = answer.certificate;
    facts($("sent"), [
      ["outputs sent", `${answer.nnz} of ${answer.nOutputs} (the rest dropped or zero)`],
      ["bytes sent", `${answer.bytesSent} (the raw input is ${device.rawInputBytes} bytes, never sent)`],
      ["model version", answer.modelVersion],
      ["round trip", `${answer.latencyMs.toFixed(1)} ms`],
    ]);
    plotSent($("sent-plot"), answer.payload.activations);
    facts($("certificate"), cert.epsilon !== undefined ? [  // the Gaussian mechanism: the bound is (epsilon, delta)
      ["outputs sent k", String(cert.k)],
      ["epsilon per request", `${cert.epsilon.toPrecision(3)} (delta ${cert.delta}): any two inputs are (epsilon, delta)-indistinguishable from this payload`],
      ["clip / noise std", `${cert.clip} / ${cert.std}`],
      ["note", cert.note],
    ] : cert.applies === false ? [  // a device block: no first-layer equations to certify
      ["surviving outputs k", String(cert.k)],
      ["device block", cert.block],
      ["note", cert.note],
    ] : [
      ["surviving outputs k", `${cert.k} (the random mask left ${cert.k_before_policy}; the policy dropped ${cert.dropped_by_policy} more)`],
      ["rank / input size", `${cert.rank} / ${cert.n}`],
      ["identifiable inputs", String(cert.identifiable)],
      ["revealed energy", cert.revealed_energy.toFixed(4)],
      ["max leverage", cert.max_leverage.toFixed(4)],
      ["policy", policyText(cert)],
      ...(cert.exact === false ? [["note", cert.note]] : []),
    ]);
    $("answer").textContent = answer.label;
    const classes = device.classes;
    $("probabilities").replaceChildren(...answer.probabilities.map((p, i) => {
      const row = document.createElement("div"); row.className = "bar";
      const name = document.createElement("span"); name.textContent = classes[i] ?? String(i);
      const fill = document.createElement("span"); fill.className = "fill"; fill.style.width = `${Math.round(p * 300)}px`;
      const val = document.createElement("span"); val.textContent = p.toFixed(3);
      row.append(name, fill, val);
      return row;
    }));
  } catch (exc) {
    showError(exc);
  } finally {
    state.busy = false;
  }
}

$("predict").addEventListener("click", () => {
  if (drawn) state.input = padPixels();
  predict();
});
$("model").addEventListener("change", selectModel);
$("api-key").addEventListener("change", () => sessionStorage.setItem("daonet-api-key", $("api-key").value));
$("api-key").value = sessionStorage.getItem("daonet-api-key") || "";
loadModels().catch(showError);

/** The policy line: "met" only against a real energy limit (users read "met" as "private"). */
export function policyText(cert) {
  const limit = cert.policy.max_revealed_energy;
  const identifiable = `identifiable inputs ${cert.policy.forbid_identifiable ? "forbidden" : "allowed"}`;
  if (limit == null) return `no energy limit set (${identifiable}${cert.policy_ok ? "" : ": NOT met"})`;
  return `${cert.policy_ok ? "met" : "NOT met"} (max revealed energy ${limit}, ${identifiable})`;
}
