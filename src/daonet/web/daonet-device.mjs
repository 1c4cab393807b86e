// daonet device runtime in JavaScript: the same bytes as the numpy runtime (daonet.device), for browsers
// and Node >= 20. One ES module, no dependencies: fetch + WebCrypto (SHA-256, Ed25519) only.
//
//   import { loadDevice, KeyedMasks, Client } from "./daonet-device.mjs";
//   const device = await loadDevice("https://server/device-bundles/mnist-mlp/");
//   const masks = await KeyedMasks.fromStorage(localStorage, device.version);
//   const client = new Client("https://server", device, { masks });
//   const answer = await client.predict(pixels);   // {label, probabilities, bytesSent, certificate, ...}
//
// Everything here mirrors a Python function of the same name; comments name it. The activations are
// computed in float64 and rounded once to float32, exactly as DeviceModel does, so both runtimes send
// the same payload bytes for the same input and mask.

export const WIRE_VERSION = 1;
export const SIGNED_WIRE_VERSION = 2;  // values may be negative: the Gaussian mechanism (noise kind gaussian_ldp)
export const DEVICE_FORMAT = "daonet-device-bundle";
export const FORMAT_VERSION = 1;
export const MASK_CONTEXT = "daonet-mask-v1";
export const IDENTIFIABLE_TOL = 1e-6;
export const RANGE_TOLERANCE = 1e-6;
const DEPENDENT_RTOL = 1e-9;
const ENERGY_EPS = 1e-12;
const EPS64 = 2.220446049250313e-16;
const KEY_BYTES = 32;
const KNOWN_LAYER_KEYS = new Set(["kind", "in_shape", "out_channels", "kernel", "stride", "output_shape",
  "n_outputs", "activation", "quantize", "first_output_shape", "block"]);
const KNOWN_STEP_KEYS = new Set(["op", "n_in", "n_out", "kernel", "stride", "padding", "activation", "weight", "bias", "size"]);
const KNOWN_NOISE_KEYS = new Set(["std", "floor", "relative_std", "kind", "applies_to", "mechanism", "clip", "grid",
  "clip_steps", "noise_steps", "sensitivity", "delta", "epsilon", "accountant", "accountant_version", "target_epsilon",
  "clip_quantile"]);
const LDP_FIELDS = ["mechanism", "clip", "grid", "clip_steps", "noise_steps", "sensitivity", "delta", "epsilon", "accountant", "accountant_version"];
const LDP_MAX_NOISE_STEPS = 256;
const LDP_MAX_CLIP_STEPS = 2 ** 16;
const LDP_Y_CAP = 64;
export const LDP_NOISE_CONTEXT = "daonet-ldp-noise-v1";
export const LDP_NOTE = "Gaussian mechanism: the guarantee is (epsilon, delta) per request; rank and revealed-energy figures are not the guarantee here";
const LDP_SIMILARITY_REFUSAL = "similarity-keyed masks cannot draw gaussian_ldp noise: near-duplicates would share noise, and the difference of two such payloads is noiseless; use KeyedMasks (exact replays cost nothing) or RandomMasks";
const LAYER_KINDS = ["dense", "conv1d", "conv2d"];
export const BLOCK_NOTE = "non-linear block: covered by the audit only";
export const NOISE_NOTE = "noise on surviving values: the equations are not exact; rank and revealed energy are an upper bound on what they pin down";
const BLOCK_NOTE_REFUSAL = "non-linear block: covered by the audit only (the first-layer equations, their certificate and the white-box attacks on W apply to a single linear layer)";
export const NOISE_CONTEXT = "daonet-noise-v1";
const FIX = "re-export the bundle with `daonet export`";
const UPGRADE = `upgrade daonet if the bundle is newer, or ${FIX}`;

// -- errors (the Python classes of the same names) ----------------------------------------------------------
export class DaonetError extends Error {
  constructor(message) { super(message); this.name = this.constructor.name; }
}
export class BundleError extends DaonetError {}
/** A manifest field is missing, has the wrong type, or contradicts another field (a BundleError). */
export class ManifestError extends BundleError {}
export class InputError extends DaonetError {}
export class PayloadError extends DaonetError {}
export class VersionMismatchError extends DaonetError {
  constructor(message, expected, got) { super(message); this.expected = expected; this.got = got; }
}
export class ServerError extends DaonetError {
  constructor(status, error, detail) {
    super(`server answered ${status} (${error}): ${detail}`);
    this.status = status; this.error = error; this.detail = detail;
  }
}

// -- small helpers -------------------------------------------------------------------------------------------
const crypto_ = () => {
  const c = globalThis.crypto;
  if (!c || !c.subtle) throw new DaonetError("WebCrypto is not available (a browser page must be served over https or from localhost; Node needs >= 18)");
  return c;
};
const prod = (a) => a.reduce((p, v) => p * v, 1);
const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Python's ``repr(float)`` (shortest round-trip digits, Python's exponent rules). */
export function pyFloatRepr(v) {
  if (Number.isNaN(v)) return "nan";
  if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  if (v === 0) return Object.is(v, -0) ? "-0.0" : "0.0";
  const [mant, expStr] = v.toExponential().split("e");
  const exp = Number(expStr);
  const neg = mant.startsWith("-");
  const digits = mant.replace("-", "").replace(".", "");
  let out;
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    out = `${m}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  } else if (exp < 0) {
    out = `0.${"0".repeat(-exp - 1)}${digits}`;
  } else if (digits.length <= exp + 1) {
    out = `${digits}${"0".repeat(exp + 1 - digits.length)}.0`;
  } else {
    out = `${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
  }
  return (neg ? "-" : "") + out;
}

/** Python's ``format(v, ".3g")`` (used in error messages that must read like the Python ones). */
export function pyFormatG(v, p = 3) {
  if (!Number.isFinite(v)) return Number.isNaN(v) ? "nan" : (v > 0 ? "inf" : "-inf");
  if (v === 0) return Object.is(v, -0) ? "-0" : "0";
  const [mant, expStr] = v.toExponential(p - 1).split("e");
  const exp = Number(expStr);
  const strip = (s) => (s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s);
  if (exp < -4 || exp >= p) return `${strip(mant)}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  return strip(v.toFixed(Math.max(0, p - 1 - exp)));
}

const pyTuple = (s) => (s.length === 1 ? `(${s[0]},)` : `(${s.join(", ")})`);

/** numpy's ``np.round`` / ``np.rint``: round half to even. */
export function roundHalfEven(v) {
  const r = Math.round(v);
  return (Math.abs(v % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

/** float32 -> IEEE half bits, round to nearest even (numpy's ``astype(float16)``). */
export function f32ToF16Bits(v) {
  f32[0] = v;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    let r = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (r & 1))) r += 1;
    return sign | r;
  }
  let r = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (r & 1))) r += 1;
  return sign | r;
}

async function sha256Hex(bytes) {
  return hex(await crypto_().subtle.digest("SHA-256", bytes));
}

// -- safetensors (parsed by hand: 8-byte LE header length, JSON header, raw little-endian data) -------------
/** Parse a safetensors file into ``{name: {shape, data: Float32Array}}``; refuses anything but F32. */
export function parseSafetensors(buffer, name = "weights") {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  if (bytes.length < 8) throw new BundleError(`${name} is truncated (${bytes.length} bytes); re-download the bundle`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const hlen = dv.getUint32(0, true) + dv.getUint32(4, true) * 2 ** 32;
  if (hlen > bytes.length - 8) throw new BundleError(`${name} is truncated: its header announces ${hlen} bytes; re-download the bundle`);
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + hlen)));
  } catch (exc) {
    throw new BundleError(`${name} is not a readable safetensors file: ${exc.message}`);
  }
  const base = 8 + hlen;
  const out = {};
  for (const [key, info] of Object.entries(header)) {
    if (key === "__metadata__") continue;
    if (info.dtype !== "F32") throw new BundleError(`${name}: tensor ${key} has dtype ${info.dtype}; this runtime reads F32 only, re-export the bundle`);
    const [begin, end] = info.data_offsets;
    const count = prod(info.shape);
    if (end - begin !== 4 * count || base + end > bytes.length) throw new BundleError(`${name}: tensor ${key} is truncated or inconsistent; re-download the bundle`);
    const data = new Float32Array(count);
    const tdv = new DataView(bytes.buffer, bytes.byteOffset + base + begin, 4 * count);
    for (let i = 0; i < count; i++) data[i] = tdv.getFloat32(4 * i, true);
    out[key] = { shape: info.shape.map(Number), data };
  }
  return out;
}

// -- bundle verification: the version follows from the content, and a trusted key signed it -----------------
// (daonet.bundle.verify_content, daonet.signing.verify). A half's digest is the SHA-256 of its manifest as
// Python writes it canonically (json.dumps: sorted keys, "," and ":" separators, ASCII escapes, floats by
// repr), without ``version`` and ``integrity``; version = sha256("daonet-bundle-v1" | device | server)[:16];
// the signature is Ed25519 over that same message. Python's json.loads tells 1 from 1.0, JSON.parse does not,
// so the manifest text is parsed here by a parser that keeps each value's canonical text.
export const BUNDLE_CONTEXT = "daonet-bundle-v1";
const UNSEALED = new Set(["version", "integrity"]);
const SHA256_HEX = /^[0-9a-f]{64}$/;
const NUMBER_TOKEN = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?/y;

/** Python's ``json.dumps(str, ensure_ascii=True)``: escapes outside space..tilde, lower-case hex. */
function pyJsonString(s) {
  let out = "\"";
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x22) out += "\\\"";
    else if (c === 0x5c) out += "\\\\";
    else if (c >= 0x20 && c <= 0x7e) out += s[i];
    else if (c === 0x0a) out += "\\n";
    else if (c === 0x0d) out += "\\r";
    else if (c === 0x09) out += "\\t";
    else if (c === 0x08) out += "\\b";
    else if (c === 0x0c) out += "\\f";
    else out += `\\u${c.toString(16).padStart(4, "0")}`;
  }
  return `${out}"`;
}

/** Python's string order (code points; JS's default sort compares UTF-16 units). */
function codePointCompare(a, b) {
  const x = Array.from(a, (ch) => ch.codePointAt(0));
  const y = Array.from(b, (ch) => ch.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/**
 * ``json.loads`` as Python reads a manifest (NaN/Infinity literals accepted, duplicate keys: the last wins),
 * returning ``{value, members, floats}``: the plain value, the canonical ``json.dumps`` text of each top-level
 * member (``null`` where Python could not write it: a non-finite number), and the paths (``.layer.n_outputs``,
 * ``.input.shape[0]``) of numbers written as floats, which Python's int fields refuse.
 */
export function parseManifestText(text, where = "manifest.json") {
  let i = 0;
  const floats = new Set();
  const fail = (what) => { throw new BundleError(`${where} is not valid JSON (${what}: char ${i}); the bundle is corrupt, re-export it`); };
  const skip = () => { while (i < text.length && " \t\n\r".includes(text[i])) i++; };
  const literal = (word, value, canon) => {
    if (text.startsWith(word, i)) { i += word.length; return [value, canon]; }
    return null;
  };
  function string() {
    let out = "";
    i++;
    for (;;) {
      if (i >= text.length) fail("Unterminated string starting at");
      const c = text.charCodeAt(i);
      if (c === 0x22) { i++; return out; }
      if (c < 0x20) fail("Invalid control character at");
      if (c !== 0x5c) { out += text[i++]; continue; }
      const e = text[i + 1];
      const simple = { "\"": "\"", "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" }[e];
      if (simple !== undefined) { out += simple; i += 2; continue; }
      if (e !== "u" || !/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) fail("Invalid \\escape");
      out += String.fromCharCode(parseInt(text.slice(i + 2, i + 6), 16));
      i += 6;
    }
  }
  function value(path) {  // -> [plain value, canonical text or null]
    skip();
    const c = text[i];
    if (c === "\"") { const s = string(); return [s, pyJsonString(s)]; }
    if (c === "{") {
      i++;
      const obj = {};
      const canon = new Map();
      skip();
      if (text[i] === "}") { i++; return [obj, "{}"]; }
      for (;;) {
        skip();
        if (text[i] !== "\"") fail("Expecting property name enclosed in double quotes");
        const key = string();
        skip();
        if (text[i] !== ":") fail("Expecting ':' delimiter");
        i++;
        const [v, cv] = value(`${path}.${key}`);
        Object.defineProperty(obj, key, { value: v, writable: true, enumerable: true, configurable: true });
        canon.delete(key);
        canon.set(key, cv);
        skip();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "}") { i++; break; }
        fail("Expecting ',' delimiter");
      }
      const keys = [...canon.keys()].sort(codePointCompare);
      const bad = keys.some((k) => canon.get(k) === null);
      const members = `{${keys.map((k) => `${pyJsonString(k)}:${canon.get(k)}`).join(",")}}`;
      return path === "" ? [obj, canon] : [obj, bad ? null : members];
    }
    if (c === "[") {
      i++;
      const arr = [];
      const parts = [];
      skip();
      if (text[i] === "]") { i++; return [arr, "[]"]; }
      for (;;) {
        const [v, cv] = value(`${path}[${arr.length}]`);
        arr.push(v);
        parts.push(cv);
        skip();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "]") { i++; break; }
        fail("Expecting ',' delimiter");
      }
      return [arr, parts.includes(null) ? null : `[${parts.join(",")}]`];
    }
    const word = literal("null", null, "null") || literal("true", true, "true") || literal("false", false, "false");
    if (word) return word;
    NUMBER_TOKEN.lastIndex = i;
    const m = NUMBER_TOKEN.exec(text);
    if (m) {
      i += m[0].length;
      if (m[1] === undefined && m[2] === undefined) return [Number(m[0]), BigInt(m[0]).toString()];
      floats.add(path);
      const v = Number(m[0]);
      return [v, Number.isFinite(v) ? pyFloatRepr(v) : null];
    }
    const special = literal("NaN", NaN, null) || literal("Infinity", Infinity, null) || literal("-Infinity", -Infinity, null);
    if (special) { floats.add(path); return special; }
    return fail("Expecting value");
  }
  const [v, members] = value("");
  skip();
  if (i < text.length) fail("Extra data");
  return { value: v, members: members instanceof Map ? members : null, floats };
}

/** SHA-256 hex of a half's canonical content (``content_digest``): every member but ``version``/``integrity``. */
export async function contentDigest(members, where = "manifest.json") {
  const keys = [...members.keys()].filter((k) => !UNSEALED.has(k)).sort(codePointCompare);
  if (keys.some((k) => members.get(k) === null)) {
    throw new BundleError(`${where} holds a non-finite number (NaN or Infinity), which JSON cannot carry; the bundle is corrupt, re-export it`);
  }
  const text = `{${keys.map((k) => `${pyJsonString(k)}:${members.get(k)}`).join(",")}}`;
  return sha256Hex(new TextEncoder().encode(text));
}

const bytesOfHex = (h) => Uint8Array.from(h.match(/../g) || [], (b) => parseInt(b, 16));
const bundleMessage = (deviceDigest, serverDigest) => concatBytes(new TextEncoder().encode(BUNDLE_CONTEXT),
  bytesOfHex(deviceDigest), bytesOfHex(serverDigest));

/** Python's ``base64.b64decode(s, validate=True)``: the alphabet and padding only, else null. */
function strictBase64(s) {
  if (typeof s !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) return null;
  try {
    return Uint8Array.from(atob(s), (ch) => ch.charCodeAt(0));
  } catch {
    return null;
  }
}

const ED25519_SPKI_PREFIX = "302a300506032b6570032100";

/**
 * A trusted Ed25519 public key (``load_public_key``): a ``.pub`` PEM text (``daonet keygen``), its bytes, the
 * 32 raw key bytes, a ``CryptoKey``, or (Node) the path of a ``.pub`` file. Returns ``{key, keyId}``; keyId is
 * ``key_id``: the first 16 hex characters of the SHA-256 of the raw key.
 */
export async function loadPublicKey(source) {
  const label = String(source instanceof Uint8Array ? `${source.length} bytes` : source).slice(0, 80);
  const cannot = (why) => new DaonetError(`cannot read the public key ${label}: ${why}`);
  const subtle = crypto_().subtle;
  let raw;
  if (typeof CryptoKey !== "undefined" && source instanceof CryptoKey) {
    raw = new Uint8Array(await subtle.exportKey("raw", source).catch(() => { throw cannot("the CryptoKey is not an extractable Ed25519 public key"); }));
  } else {
    let data = source instanceof ArrayBuffer ? new Uint8Array(source) : source;
    if (typeof data === "string" && !data.includes("-----BEGIN")) {
      if (!isNode) throw cannot("pass the PEM text of the .pub file, its bytes or the 32 raw key bytes");
      const fs = await import("node:fs/promises");
      data = new Uint8Array(await fs.readFile(data).catch((exc) => { throw cannot(exc.message); }));
    }
    if (data instanceof Uint8Array && data.length === 32) {
      raw = data;
    } else {
      const text = typeof data === "string" ? data : new TextDecoder().decode(data);
      const m = /-----BEGIN PUBLIC KEY-----([A-Za-z0-9+/=\s]*)-----END PUBLIC KEY-----/.exec(text);
      const der = m ? strictBase64(m[1].replace(/\s+/g, "")) : null;
      if (!der) throw cannot("it is not a PEM public key (make key pairs with `daonet keygen`)");
      if (der.length !== 44 || hex(der.subarray(0, 12)) !== ED25519_SPKI_PREFIX) {
        throw new DaonetError(`${label} is not an Ed25519 public key (make key pairs with \`daonet keygen\`)`);
      }
      raw = der.subarray(12);
    }
  }
  let key;
  try {
    key = await subtle.importKey("raw", raw, { name: "Ed25519" }, true, ["verify"]);
  } catch (exc) {
    throw new DaonetError(`this runtime's WebCrypto cannot import Ed25519 keys (${exc.message}); use Node >= 20 or a current browser`);
  }
  return { key, keyId: (await sha256Hex(raw)).slice(0, 16) };
}

/**
 * Refuse a device half whose version does not follow from its content, and (with ``publicKeys``) one that a
 * trusted key did not sign (``verify_content`` + ``signing.verify``, the same rules and messages).
 */
export async function verifyContent(manifest, members, where, publicKeys = []) {
  const integrity = manifest.integrity;
  if (integrity === undefined || integrity === null) {
    throw new BundleError(`${where} has no integrity block, so its version is not bound to its content (exported by an older daonet, or edited); re-export it with \`daonet export\``);
  }
  const digests = [await contentDigest(members, where), integrity.pair_digest];
  const message = bundleMessage(...digests);
  const expected = (await sha256Hex(message)).slice(0, 16);
  if (manifest.version !== expected) {
    throw new BundleError(`${where}: version '${manifest.version}' does not match its content (expected '${expected}'): the manifest or a weight file was edited after export; re-export or re-download the bundle`);
  }
  if (!publicKeys || !publicKeys.length) return;
  const keys = [];
  for (const k of publicKeys) keys.push(k && k.keyId && k.key ? k : await loadPublicKey(k));
  const known = keys.map((k) => k.keyId).join(", ");
  const signature = integrity.signature ?? null;
  const signer = integrity.key_id ?? null;
  if (signature === null) {
    throw new BundleError(`${where} is not signed, and a signed bundle is required (trusted keys: ${known}); export it with \`daonet export --sign KEY\``);
  }
  const key = keys.find((k) => k.keyId === signer);
  const sig = strictBase64(signature);
  if (key && sig) {
    const ok = await crypto_().subtle.verify({ name: "Ed25519" }, key.key, sig, message).catch(() => false);
    if (ok) return;
  }
  throw new BundleError(`${where} is not signed by a trusted key (signed by ${String(signer).slice(0, 16)}, trusted: ${known}), or was modified after signing; get the bundle from its vendor or re-export and sign it`);
}

// -- bundle loading ------------------------------------------------------------------------------------------
const isNode = typeof process !== "undefined" && !!(process.versions && process.versions.node);

function looksLikeUrl(s) {
  return /^(https?|file|blob|data):/i.test(s) || (!isNode && typeof s === "string");
}

async function readHttp(base, name, fetchFn) {
  const url = new URL(name, base).toString();
  let r;
  try {
    r = await fetchFn(url, { cache: "no-store" });
  } catch (exc) {
    throw new BundleError(`cannot fetch ${url}: ${exc.message}`);
  }
  if (!r.ok) throw new BundleError(`fetching ${url} answered ${r.status}; is the device bundle served there?`);
  return new Uint8Array(await r.arrayBuffer());
}

async function readPath(dir, name) {
  const fs = await import("node:fs/promises");
  try {
    return new Uint8Array(await fs.readFile(`${dir}/${name}`));
  } catch (exc) {
    if (exc.code === "ENOENT") throw new BundleError(`${dir}/${name} is missing; copy the whole bundle directory or re-export it`);
    throw new BundleError(`cannot read ${dir}/${name}: ${exc.message}`);
  }
}

/**
 * Load a device bundle (``manifest.json`` + its safetensors file) from an http(s) URL of the bundle
 * directory, or (Node) a directory path, checked in Python's order (``DeviceModel.load``): the manifest's
 * schema, its version against its content, the signature when ``publicKeys`` are given (refused unless one of
 * them signed it; see :func:`loadPublicKey` for the forms a key may take), then the weights' SHA-256.
 */
export async function loadDevice(source, { fetch: fetchFn = globalThis.fetch, publicKeys = [] } = {}) {
  let read;
  let where = String(source);
  if (looksLikeUrl(where)) {
    const base = new URL(where.endsWith("/") ? where : `${where}/`, globalThis.location ? globalThis.location.href : undefined);
    where = base.toString();
    read = (name) => readHttp(base, name, fetchFn);
  } else {
    const fs = await import("node:fs/promises");
    where = where.replace(/\/+$/, "");
    const exists = (p) => fs.stat(p).then(() => true, () => false);
    if (!(await exists(`${where}/manifest.json`)) && (await exists(`${where}/device/manifest.json`))) where = `${where}/device`;
    read = (name) => readPath(where, name);
  }
  const manifestBytes = await read("manifest.json");
  const manifestWhere = `${where}${where.endsWith("/") ? "" : "/"}manifest.json`;
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(manifestBytes);
  } catch (exc) {
    throw new BundleError(`${manifestWhere} is not valid JSON (${exc.message}); the bundle is corrupt, re-export it`);
  }
  const { value: manifest, members, floats } = parseManifestText(text, manifestWhere);
  checkManifest(manifest, where, floats);
  await verifyContent(manifest, members, manifestWhere, publicKeys);
  const [name, expected] = Object.entries(manifest.files)[0];
  const weights = await read(name);
  const actual = await sha256Hex(weights);
  if (actual !== expected) {
    throw new BundleError(`${where} ${name} does not match its manifest (sha256 ${actual.slice(0, 12)}... != ${String(expected).slice(0, 12)}...): the file was modified or truncated; re-export or re-download the bundle`);
  }
  const tensors = parseSafetensors(weights, name);
  if (!tensors.weight || !tensors.bias) throw new BundleError(`${where} lacks 'weight'/'bias'; re-export the bundle`);
  return new DeviceModel(manifest, tensors);
}

/**
 * Refuse an invalid manifest (the Python schema's checks and messages, :func:`checkSchema`) and one this runtime
 * cannot reproduce exactly (rather than computing something different). ``floats``: the paths of numbers the
 * manifest text wrote as floats (``parseManifestText``), which integer fields refuse as Python does.
 */
export function checkManifest(manifest, where = "bundle", floats = new Set()) {
  if (!manifest || typeof manifest !== "object" || manifest.format !== DEVICE_FORMAT) {
    throw new BundleError(`${where}: manifest is a ${JSON.stringify(manifest && manifest.format)} manifest, expected '${DEVICE_FORMAT}'`);
  }
  if (manifest.format_version !== FORMAT_VERSION) {
    throw new BundleError(`${where}: manifest has format version ${manifest.format_version}, this runtime reads version ${FORMAT_VERSION}; update daonet-device.mjs or re-export the bundle`);
  }
  checkSchema(manifest, where, floats);
  if (Object.keys(manifest.files).length !== 1) throw new BundleError(`${where}: a device bundle lists exactly one weight file`);
  const layer = manifest.layer;
  const unsupported = [];
  const unknownKeys = (obj, known, prefix) => {
    if (!obj || typeof obj !== "object" || Array.isArray(obj)) return;
    for (const [key, value] of Object.entries(obj)) {
      if (!known.has(key) && value !== null && !(Array.isArray(value) && value.length === 0)) unsupported.push(`${prefix}${key}`);
    }
  };
  unknownKeys(layer, KNOWN_LAYER_KEYS, "layer.");
  if (Array.isArray(layer.block)) layer.block.forEach((step, i) => unknownKeys(step, KNOWN_STEP_KEYS, `layer.block[${i}].`));
  unknownKeys(manifest.noise, KNOWN_NOISE_KEYS, "noise.");
  if (layer.activation !== undefined && layer.activation !== "relu") unsupported.push(`activation ${layer.activation}`);
  const drop = manifest.drop || {};
  if (drop.policy !== undefined && drop.policy !== "bernoulli") unsupported.push(`drop policy ${drop.policy}`);
  if (drop.rescale) unsupported.push("rescaled dropping");
  const wire = manifest.wire || {};
  if (wire.version !== undefined && wire.version !== WIRE_VERSION && wire.version !== SIGNED_WIRE_VERSION) unsupported.push(`wire version ${wire.version}`);
  if (!LAYER_KINDS.includes(layer.kind)) unsupported.push(`first-layer kind ${JSON.stringify(layer.kind)}`);
  if (unsupported.length) {
    throw new BundleError(`${where}: this bundle uses ${unsupported.join(", ")}, which the JavaScript device runtime does not support; use the Python runtime (daonet.device) or export without it`);
  }
  const steps = blockPlan(layer, where);
  const noise = noiseSpec(manifest.noise, where);
  const fail = manifestFailure(where);
  const privacy = manifest.privacy || {};
  if (steps.length && privacy.max_revealed_energy !== undefined && privacy.max_revealed_energy !== null) {
    fail("privacy.max_revealed_energy", "is set, but this device bundle runs a non-linear block: the revealed energy is defined for a single linear layer only",
      "re-export without --max-revealed-energy (a block is covered by the audit)");
  }
  if (noise && layer.quantize) fail("noise", "is set together with layer.quantize: noise would undo the rounding");
  return { steps, noise };
}

// -- the manifest schema (daonet.manifest: DeviceManifest.from_json, the same fields, checks and messages) -----
// A field type is "str", "int", "float", "bool", "any", {lit: [...]}, {list: type}, {dict: type}, {opt: type}
// (also null) or {spec: SPEC}; a SPEC lists [name, type, required] and its cross-field check. ``layer.block`` and
// ``noise`` are read by blockPlan / noiseSpec below (same messages).
const pyEq = (a, b) => a === b || (["number", "boolean"].includes(typeof a) && ["number", "boolean"].includes(typeof b) && Number(a) === Number(b));
const typeName = (tp) => {
  if (typeof tp === "string") return { str: "a string", int: "an integer", float: "a number", bool: "true/false", any: "anything" }[tp];
  if (tp.lit) return tp.lit.map((v) => (typeof v === "string" ? `'${v}'` : v === false ? "False" : String(v))).join(" or ");
  if (tp.opt) return `${typeName(tp.opt)} or null`;
  return tp.list ? "a list" : "an object";
};
const positiveInts = (values, at, what, fail) => { if (values.some((v) => v < 1)) fail(at, `${what} must be positive integers, got ${pyList(values)}`); };

const INPUT_SPEC = {
  fields: [["shape", { list: "int" }, true], ["dtype", { lit: ["float32"] }], ["raw_dtype", { lit: ["float32", "uint8"] }],
    ["range", { opt: { list: "float" } }]],
  check(s, at, fail) {
    if (!s.shape.length) fail(`${at}.shape`, "is empty; an input has at least a channel axis");
    positiveInts(s.shape, `${at}.shape`, "dimensions", fail);
    if (s.range != null && (s.range.length !== 2 || !(s.range[0] < s.range[1]))) fail(`${at}.range`, `must be [low, high] with low < high, got ${pyList(s.range.map(pyFloatRepr))}`);
  },
};
const NORMALIZATION_SPEC = {
  fields: [["mean", { opt: { list: "float" } }], ["std", { opt: { list: "float" } }], ["per", { lit: ["channel", "feature"] }]],
  check(s, at, fail) {
    if (s.std != null && s.std.some((v) => v <= 0)) fail(`${at}.std`, `must be positive, got ${pyList(s.std.map(pyFloatRepr))}`);
  },
};
const QUANTIZE_SPEC = {
  fields: [["levels", "int", true], ["clip", "float", true]],
  check(s, at, fail) {
    if (s.levels < 1) fail(`${at}.levels`, `must be at least 1, got ${s.levels}`);
    if (s.clip === 0) fail(`${at}.clip`, "must be non-zero");
  },
};
const LAYER_SPEC = {
  fields: [["kind", { lit: LAYER_KINDS }, true], ["output_shape", { list: "int" }, true], ["n_outputs", "int", true],
    ["in_shape", { opt: { list: "int" } }], ["out_channels", { opt: "int" }], ["kernel", { list: "int" }], ["stride", { list: "int" }],
    ["activation", { lit: ["relu"] }], ["quantize", { opt: { spec: null } }], ["first_output_shape", { opt: { list: "int" } }],
    ["block", { opt: "any" }]],
  check(s, at, fail) {
    positiveInts(s.output_shape, `${at}.output_shape`, "dimensions", fail);
    const n = prod(s.output_shape);
    if (n !== s.n_outputs) fail(`${at}.n_outputs`, `is ${s.n_outputs}, but output_shape ${pyList(s.output_shape)} has ${n} outputs`);
    if (Array.isArray(s.block)) s.block.forEach((step, i) => parseStep(step, `${at}.block[${i}]`, fail));  // fields first
    if (Array.isArray(s.block) && s.block.length && s.first_output_shape == null) {
      fail(`${at}.first_output_shape`, "is missing: a layer with a block needs the first layer's own output shape");
    }
    if (s._extra) return;  // a newer layout: refused by checkManifest, which names its fields
    const first = layerFirstShape(s);
    positiveInts(first, `${at}.first_output_shape`, "dimensions", fail);
    if (s.out_channels != null && s.out_channels !== first[0]) fail(`${at}.out_channels`, `is ${s.out_channels}, the first layer's output starts with ${first[0]}`);
    const nd = LAYER_KINDS.indexOf(s.kind);
    for (const name of ["kernel", "stride"]) {
      if (s[name].length !== nd) fail(`${at}.${name}`, `a ${s.kind} layer needs ${nd} value(s), got ${pyList(s[name])}`);
      positiveInts(s[name], `${at}.${name}`, name, fail);
    }
    if (first.length !== nd + 1) fail(`${at}.output_shape`, `a ${s.kind} layer has ${nd + 1} output axes, got ${pyList(first)}`);
    if (s.in_shape != null) layerCheckInput(s, s.in_shape, `${at}.in_shape`, fail);
  },
};
LAYER_SPEC.fields[8][1] = { opt: { spec: QUANTIZE_SPEC } };
const DROP_SPEC = {
  fields: [["rate", "float", true], ["policy", { lit: ["bernoulli"] }], ["rescale", { lit: [false] }]],
  check(s, at, fail) {
    if (!(s.rate >= 0 && s.rate < 1)) fail(`${at}.rate`, `must be in [0, 1), got ${pyFloatRepr(s.rate)}`, "train and export with --drop-rate in [0, 1)");
  },
};
const WIRE_SPEC = { fields: [["version", { lit: [1, 2] }], ["value_dtype", { opt: { lit: ["float32", "float16"] } }]], check() {} };
/** ``NoiseSpec``: kind ``gaussian`` (noise on surviving values) or ``gaussian_ldp`` (the Gaussian mechanism). */
const NOISE_SPEC = {
  fields: [["std", "float", true], ["floor", { opt: "float" }], ["relative_std", "float"], ["kind", { lit: ["gaussian", "gaussian_ldp"] }],
    ["applies_to", { lit: ["surviving", "kept"] }], ["mechanism", { opt: { lit: ["discrete_gaussian"] } }], ["clip", { opt: "float" }],
    ["grid", { opt: "float" }], ["clip_steps", { opt: "int" }], ["noise_steps", { opt: "int" }], ["sensitivity", { opt: "float" }],
    ["delta", { opt: "float" }], ["epsilon", { opt: "float" }], ["accountant", { opt: "str" }], ["accountant_version", { opt: "str" }],
    ["target_epsilon", { opt: "float" }], ["clip_quantile", { opt: "float" }]],
  check(s, at, fail) {
    const kind = s.kind ?? "gaussian";
    const appliesTo = s.applies_to ?? "surviving";
    if (kind !== "gaussian_ldp") {
      if (s.floor == null) fail(at, "the field 'floor' is missing (the manifest is malformed: corrupt, or not written by daonet)");
      if (appliesTo !== "surviving") fail(`${at}.applies_to`, `is '${appliesTo}'; noise of kind 'gaussian' applies to 'surviving' values`);
      if (s.std < 0 || s.floor <= 0) fail(at, `noise std ${pyFloatRepr(s.std)} / floor ${pyFloatRepr(s.floor)} are invalid (std >= 0, floor > 0)`);
      return;
    }
    for (const name of LDP_FIELDS) if (s[name] == null) fail(`${at}.${name}`, "is missing: noise of kind 'gaussian_ldp' needs it");
    if (appliesTo !== "kept") fail(`${at}.applies_to`, `is '${appliesTo}'; noise of kind 'gaussian_ldp' applies to every 'kept' output`);
    const [grid, b, st] = [s.grid, s.clip_steps, s.noise_steps];
    if (!(grid > 0 && isPowerOfTwo(grid))) fail(`${at}.grid`, `must be a positive power of two, got ${pyFloatRepr(grid)}`);
    if (!(st >= 1 && st <= LDP_MAX_NOISE_STEPS)) fail(`${at}.noise_steps`, `must be in [1, ${LDP_MAX_NOISE_STEPS}], got ${st}`);
    if (!(b >= 1 && b <= LDP_MAX_CLIP_STEPS)) fail(`${at}.clip_steps`, `must be in [1, ${LDP_MAX_CLIP_STEPS}], got ${b}`);
    if (s.clip !== b * grid || s.std !== st * grid) {
      fail(at, `clip ${pyFloatRepr(s.clip)} / std ${pyFloatRepr(s.std)} are not clip_steps x grid / noise_steps x grid (${pyFloatRepr(b * grid)} / ${pyFloatRepr(st * grid)})`);
    }
    if (s.sensitivity !== Math.sqrt(2) * (b * grid)) {
      fail(`${at}.sensitivity`, `is ${pyFloatRepr(s.sensitivity)}, the replace-one sensitivity of clipped non-negative vectors is sqrt(2) x clip = ${pyFloatRepr(Math.sqrt(2) * (b * grid))}`);
    }
    if (!(s.delta > 0 && s.delta < 1)) fail(`${at}.delta`, `must be in (0, 1), got ${pyFloatRepr(s.delta)}`);
    if (!(s.epsilon > 0)) fail(`${at}.epsilon`, `must be > 0, got ${pyFloatRepr(s.epsilon)}`);
  },
};
const isPowerOfTwo = (v) => { let m = v; while (m >= 2) m /= 2; while (m < 1) m *= 2; return m === 1; };

/** ``check_ldp_wire``: wire version 2 goes with gaussian_ldp noise only; that mode sends float32 and runs no policy. */
function checkLdpWire(noise, wire, privacy, nOutputs, at, fail) {
  const ldp = !!noise && noise.kind === "gaussian_ldp";
  const version = (wire && wire.version) ?? 1;
  if (version === 2 && !ldp) fail(`${at}.wire.version`, "2 is not supported without noise of kind 'gaussian_ldp' (signed values)", UPGRADE);
  if (!ldp) return;
  if (version !== 2) fail(`${at}.wire.version`, `is ${version}; noise of kind 'gaussian_ldp' sends signed values: wire version 2`);
  const vd = wire && wire.value_dtype;
  if (vd != null && vd !== "float32") fail(`${at}.wire.value_dtype`, `is '${vd}'; noise of kind 'gaussian_ldp' sends float32 values`);
  if (privacy && privacy.max_revealed_energy != null) {
    fail(`${at}.privacy.max_revealed_energy`, "is set with noise of kind 'gaussian_ldp': an input-dependent drop would void the (epsilon, delta) bound", "re-export without --max-revealed-energy");
  }
  if (nOutputs * noise.clip_steps ** 2 >= 2 ** 53) {
    fail(`${at}.noise.clip_steps`, `${noise.clip_steps} with ${nOutputs} outputs overflows exact integer arithmetic (n_outputs x clip_steps^2 must stay below 2^53)`);
  }
}
const PRIVACY_SPEC = {
  fields: [["max_revealed_energy", { opt: "float" }], ["forbid_identifiable", "bool"], ["identifiable_tol", "float"]],
  check(s, at, fail) {
    const m = s.max_revealed_energy;
    if (m != null && !(m >= 0 && m <= 1)) fail(`${at}.max_revealed_energy`, `must be in [0, 1] or null, got ${pyFloatRepr(m)}`, "export with --max-revealed-energy in [0, 1]");
    if (s.identifiable_tol !== undefined && !(s.identifiable_tol > 0 && s.identifiable_tol < 1)) fail(`${at}.identifiable_tol`, `must be in (0, 1), got ${pyFloatRepr(s.identifiable_tol)}`);
  },
};
const INTEGRITY_SPEC = {
  fields: [["pair_digest", "str", true], ["signature", { opt: "str" }], ["key_id", { opt: "str" }]],
  check(s, at, fail) {
    if (!SHA256_HEX.test(s.pair_digest)) fail(`${at}.pair_digest`, `is not a SHA-256 hex digest: '${s.pair_digest.slice(0, 20)}'`);
    if ((s.signature == null) !== (s.key_id == null)) fail(at, "has a signature without a key_id or the other way round");
  },
};
const DEVICE_SPEC = {
  fields: [["model_id", "str", true], ["version", "str", true], ["files", { dict: "str" }, true], ["classes", { list: "str" }],
    ["format_version", "int"], ["integrity", { opt: { spec: INTEGRITY_SPEC } }], ["input", { spec: INPUT_SPEC }, true],
    ["layer", { spec: LAYER_SPEC }, true], ["drop", { spec: DROP_SPEC }, true], ["normalization", { spec: NORMALIZATION_SPEC }],
    ["wire", { spec: WIRE_SPEC }], ["privacy", { spec: PRIVACY_SPEC }], ["noise", { opt: { spec: NOISE_SPEC } }], ["format", { lit: [DEVICE_FORMAT] }]],
  check(s, at, fail) {
    if (s.format_version !== undefined && s.format_version !== FORMAT_VERSION) {
      fail(`${at}.format_version`, `is ${s.format_version}, this daonet reads version ${FORMAT_VERSION}`, "upgrade daonet or re-export the bundle");
    }
    if (!s.model_id) fail(`${at}.model_id`, "is empty");
    if (!s.version || /[^\x00-\x7f]/.test(s.version) || s.version.length > 255) fail(`${at}.version`, `must be a short ASCII string, got '${s.version.slice(0, 40)}'`);
    const files = Object.entries(s.files);
    if (!files.length) fail(`${at}.files`, "lists no weight files");
    for (const [name, digest] of files) {
      if (/[/\\]/.test(name) || ["", ".", ".."].includes(name)) fail(`${at}.files.${name}`, "is not a plain file name inside the bundle");
      if (!SHA256_HEX.test(digest)) fail(`${at}.files.${name}`, `is not a SHA-256 hex digest: '${digest.slice(0, 20)}'`);
    }
    const layer = s.layer;
    layerCheckInput(layer, s.input.shape, `${at}.input.shape`, fail);
    if (layer.in_shape != null && !sameShape(layer.in_shape, s.input.shape)) fail(`${at}.layer.in_shape`, `is ${pyList(layer.in_shape)}, input.shape is ${pyList(s.input.shape)}`);
    const norm = s.normalization || {};  // Normalization.check_input: per channel, or per input value (dense only)
    const perFeature = norm.per === "feature";
    const [count, what] = perFeature ? [prod(s.input.shape), "input values"] : [s.input.shape[0], "input channel(s)"];
    for (const name of ["mean", "std"]) {
      if (norm[name] != null && norm[name].length !== count) fail(`${at}.normalization.${name}`, `has ${norm[name].length} values for ${count} ${what}`);
    }
    if (perFeature && layer.kind !== "dense") fail(`${at}.normalization.per`, `is 'feature', but the first layer is ${layer.kind}: per-feature normalization needs a dense first layer`, "export per-channel statistics for a convolution, or use a dense model");
    if (s.layer.block && s.layer.block.length && s.privacy && s.privacy.max_revealed_energy != null) return;  // checkManifest says why
    if (s.noise && s.layer.quantize) return;  // checkManifest says why
    checkLdpWire(s.noise, s.wire, s.privacy, s.layer.n_outputs, at, fail);
  },
};

function layerFirstShape(s) { return s.first_output_shape && s.first_output_shape.length ? s.first_output_shape : s.output_shape; }

/** ``LayerSpec.check_input``: does this geometry turn inputs of ``shape`` into the first layer's outputs? */
function layerCheckInput(s, shape, at, fail) {
  if (s.kind === "dense" || s._extra) return;
  const nd = s.kernel.length;
  if (shape.length !== nd + 1) fail(at, `a ${s.kind} layer takes inputs with ${nd + 1} axes, got ${pyList(shape)}`);
  const spatial = shape.slice(1).map((d, j) => Math.floor((d - s.kernel[j]) / s.stride[j]) + 1);
  const first = layerFirstShape(s).slice(1);
  if (!sameShape(spatial, first)) {
    fail(at, `input ${pyList(shape)} with kernel ${pyList(s.kernel)} and stride ${pyList(s.stride)} gives outputs ${pyList(spatial)}, the layer says ${pyList(first)}`);
  }
}

/** One JSON value read as ``tp`` (``_parse``); ``floats`` holds the paths of numbers written as floats. */
function parseTyped(tp, v, at, path, ctx) {
  const { fail, floats } = ctx;
  const got = () => (typeof v === "number" && !Number.isFinite(v) ? (Number.isNaN(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity")
    : floats.has(path) && Number.isInteger(v) ? `${v}.0` : pyJson(v));
  if (tp === "any") return v;
  if (tp.opt) return v === null ? null : parseTyped(tp.opt, v, at, path, ctx);
  if (tp.lit) {
    if (!tp.lit.some((x) => pyEq(x, v))) fail(at, `${got()} is not supported (this daonet reads ${typeName(tp)})`, UPGRADE);
    return v;
  }
  if (tp.list) {
    if (!Array.isArray(v)) fail(at, `expected a list, got ${got()}`);
    return v.map((x, j) => parseTyped(tp.list, x, `${at}[${j}]`, `${path}[${j}]`, ctx));
  }
  if (tp.dict) {
    if (!v || typeof v !== "object" || Array.isArray(v)) fail(at, `expected an object, got ${got()}`);
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, parseTyped(tp.dict, x, `${at}.${k}`, `${path}.${k}`, ctx)]));
  }
  if (tp.spec) return parseSpec(tp.spec, v, at, path, ctx);
  if (tp === "bool") { if (typeof v !== "boolean") fail(at, `expected true/false, got ${got()}`); return v; }
  if (tp === "int") { if (!isInt(v) || floats.has(path)) fail(at, `expected an integer, got ${got()}`); return v; }
  if (tp === "float") { if (typeof v !== "number" || !Number.isFinite(v)) fail(at, `expected a finite number, got ${got()}`); return v; }
  if (typeof v !== "string") fail(at, `expected a string, got ${got()}`);
  return v;
}

/** One manifest block (``Spec.from_json``): its fields in order (a null one takes its default), then its check. */
function parseSpec(spec, obj, at, path, ctx) {
  if (!obj || typeof obj !== "object" || Array.isArray(obj)) ctx.fail(at, `expected an object, got ${pyJson(obj)}`);
  const out = {};
  for (const [name, tp, required] of spec.fields) {
    const v = Object.hasOwn(obj, name) ? obj[name] : undefined;
    if ((v === null || v === undefined) && !required && !tp.opt && tp !== "any") continue;
    if (v !== undefined) out[name] = parseTyped(tp, v, `${at}.${name}`, `${path}.${name}`, ctx);
    else if (required) ctx.fail(at, `the field '${name}' is missing (the manifest is malformed: corrupt, or not written by daonet)`);
  }
  out._extra = Object.keys(obj).some((k) => !spec.fields.some(([name]) => name === k));
  spec.check(out, at, ctx.fail);
  return out;
}

/** The device manifest checked field by field as ``DeviceManifest.from_json`` checks it (same messages). */
export function checkSchema(manifest, where = "manifest.json", floats = new Set()) {
  // the top level's own location is ``where``: its fields are named without the leading dot
  const fail = (at, problem, fix = FIX) => {
    throw new ManifestError(`${where}: ${at ? `${at.replace(/^\./, "")}: ` : ""}${problem}; ${fix}`);
  };
  return parseSpec(DEVICE_SPEC, manifest, "", "", { floats, fail });
}

// -- manifest checks of the block and the noise (``BlockStep`` / ``LayerSpec`` / ``NoiseSpec``, same messages) ---------
const pyList = (a) => `[${a.join(", ")}]`;
/** ``json.dumps(value)[:60]`` as the Python manifest errors print it. */
const pyJson = (v) => {
  if (Array.isArray(v)) return `[${v.map(pyJson).join(", ")}]`.slice(0, 60);
  if (v && typeof v === "object") return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${pyJson(x)}`).join(", ")}}`.slice(0, 60);
  return String(JSON.stringify(v === undefined ? null : v)).slice(0, 60);
};
const manifestFailure = (where) => (field, problem, fix = FIX) => {
  throw new ManifestError(`${where}: ${field}: ${problem}; ${fix}`);
};
const isInt = (v) => typeof v === "number" && Number.isInteger(v);

/** One ``layer.block`` step parsed and checked like ``BlockStep.from_json``. */
function parseStep(raw, at, fail) {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) fail(at, `expected an object, got ${pyJson(raw)}`);
  if (raw.op === undefined) fail(at, "the field 'op' is missing (the manifest is malformed: corrupt, or not written by daonet)");
  if (![...LAYER_KINDS, "maxpool"].includes(raw.op)) {
    fail(`${at}.op`, `${pyJson(raw.op)} is not supported (this daonet reads 'dense' or 'conv1d' or 'conv2d' or 'maxpool')`, UPGRADE);
  }
  const step = { op: raw.op };
  for (const name of ["n_in", "n_out"]) {
    const v = raw[name] ?? null;
    if (v !== null && !isInt(v)) fail(`${at}.${name}`, `expected an integer, got ${pyJson(v)}`);
    step[name] = v;
  }
  for (const name of ["kernel", "stride", "padding"]) {
    const v = raw[name] ?? [];
    if (!Array.isArray(v)) fail(`${at}.${name}`, `expected a list, got ${pyJson(v)}`);
    v.forEach((x, j) => { if (!isInt(x)) fail(`${at}.${name}[${j}]`, `expected an integer, got ${pyJson(x)}`); });
    step[name] = v.slice();
  }
  step.activation = raw.activation ?? null;
  if (step.activation !== null && step.activation !== "relu") fail(`${at}.activation`, `${pyJson(step.activation)} is not supported (this daonet reads 'relu')`, UPGRADE);
  for (const name of ["weight", "bias"]) {
    const v = raw[name] ?? null;
    if (v !== null && typeof v !== "string") fail(`${at}.${name}`, `expected a string, got ${pyJson(v)}`);
    step[name] = v;
  }
  step.size = raw.size ?? null;
  if (step.size !== null && !isInt(step.size)) fail(`${at}.size`, `expected an integer, got ${pyJson(step.size)}`);
  if (step.op === "maxpool") {
    if (step.size === null || step.size < 2) fail(`${at}.size`, `a maxpool step needs a window of at least 2, got ${step.size ?? "None"}`);
    return step;
  }
  for (const name of ["n_in", "n_out", "weight", "bias", "activation"]) {
    if (step[name] === null) fail(`${at}.${name}`, `is missing: a ${step.op} step needs it`);
  }
  if (step.n_in < 1 || step.n_out < 1) fail(at, `n_in/n_out must be positive, got ${step.n_in}/${step.n_out}`);
  const nd = LAYER_KINDS.indexOf(step.op);
  for (const name of ["kernel", "stride", "padding"]) {
    if (step[name].length !== nd) fail(`${at}.${name}`, `a ${step.op} step needs ${nd} value(s), got ${pyList(step[name])}`);
  }
  if ([...step.kernel, ...step.stride].some((v) => v < 1)) fail(at, `kernel and stride must be positive integers, got ${pyList([...step.kernel, ...step.stride])}`);
  if (step.padding.some((v) => v < 0)) fail(`${at}.padding`, `must be >= 0, got ${pyList(step.padding)}`);
  return step;
}

/**
 * The manifest's ``layer.block`` checked as the Python manifest checks it (same messages): every step's
 * fields, the chain of shapes from ``first_output_shape`` to ``output_shape``. Returns the steps, each
 * with its ``inShape``/``outShape`` (no batch axis); ``[]`` without a block.
 */
function blockPlan(layer, where) {
  const fail = manifestFailure(where);
  const block = layer.block ?? null;
  if (block === null) return [];
  if (!Array.isArray(block)) fail("layer.block", `expected a list, got ${pyJson(block)}`);
  const steps = block.map((raw, i) => parseStep(raw, `layer.block[${i}]`, fail));
  if (!steps.length) return [];
  if (!Array.isArray(layer.first_output_shape)) {
    fail("layer.first_output_shape", "is missing: a layer with a block needs the first layer's own output shape");
  }
  const kind = layer.kind;
  let shape = layer.first_output_shape.map(Number);
  steps.forEach((step, i) => {
    const at = `layer.block[${i}]`;
    if (![kind, "maxpool"].includes(step.op) || (step.op === "maxpool" && kind === "dense")) {
      fail(`${at}.op`, `'${step.op}' after a '${kind}' first layer is not supported (blocks repeat the first layer's kind; maxpool needs a convolution)`, UPGRADE);
    }
    step.inShape = shape;
    if (step.op === "maxpool") {
      if (shape.length < 2 || Math.min(...shape.slice(1)) < step.size) fail(at, `maxpool ${step.size} needs a spatial input at least that large, got ${pyList(shape)}`);
      shape = [shape[0], ...shape.slice(1).map((d) => Math.floor(d / step.size))];
    } else {
      if (shape[0] !== step.n_in || shape.length !== step.kernel.length + 1) {
        fail(`${at}.n_in`, `a ${step.op} step taking ${step.n_in} channels cannot follow an output shaped ${pyList(shape)}`);
      }
      const spatial = shape.slice(1).map((d, j) => Math.floor((d + 2 * step.padding[j] - step.kernel[j]) / step.stride[j]) + 1);
      if (spatial.length && Math.min(...spatial) < 1) fail(at, `kernel ${pyList(step.kernel)} is larger than its input ${pyList(shape)}`);
      shape = [step.n_out, ...spatial];
    }
    step.outShape = shape;
  });
  const output = (layer.output_shape || []).map(Number);
  if (!sameShape(shape, output)) fail("layer.output_shape", `is ${pyList(output)}, but the first layer and its block output ${pyList(shape)}`);
  return steps;
}

/** The manifest's ``noise`` parsed and checked like ``NoiseSpec.from_json`` (``null`` when off). */
function noiseSpec(raw, where) {
  if (raw === undefined || raw === null) return null;
  const s = parseSpec(NOISE_SPEC, raw, "noise", "noise", { floats: new Set(), fail: manifestFailure(where) });
  if (s.kind === "gaussian_ldp") {
    return { kind: "gaussian_ldp", std: s.std, clip: s.clip, grid: s.grid, clipSteps: s.clip_steps, noiseSteps: s.noise_steps,
      epsilon: s.epsilon, delta: s.delta, sensitivity: s.sensitivity, accountant: s.accountant, accountantVersion: s.accountant_version };
  }
  return { kind: "gaussian", std: s.std, floor: s.floor, relativeStd: s.relative_std ?? 0 };
}

// -- the privacy policy and certificate (daonet.device.certificate) -----------------------------------------
export class PrivacyPolicy {
  constructor({ maxRevealedEnergy = null, forbidIdentifiable = true, identifiableTol = IDENTIFIABLE_TOL } = {}) {
    if (maxRevealedEnergy !== null && !(maxRevealedEnergy >= 0 && maxRevealedEnergy <= 1)) {
      throw new InputError(`max_revealed_energy must be in [0, 1] or None, got ${maxRevealedEnergy}`);
    }
    if (!(identifiableTol > 0 && identifiableTol < 1)) throw new InputError(`identifiable_tol must be in (0, 1), got ${identifiableTol}`);
    this.maxRevealedEnergy = maxRevealedEnergy;
    this.forbidIdentifiable = forbidIdentifiable;
    this.identifiableTol = identifiableTol;
  }

  static fromManifest(privacy) {
    privacy = privacy || {};
    if (typeof privacy !== "object" || Array.isArray(privacy)) throw new BundleError(`the manifest's 'privacy' must be an object`);
    const m = privacy.max_revealed_energy;
    try {
      return new PrivacyPolicy({
        maxRevealedEnergy: m === null || m === undefined ? null : Number(m),
        forbidIdentifiable: privacy.forbid_identifiable === undefined ? true : Boolean(privacy.forbid_identifiable),
        identifiableTol: privacy.identifiable_tol === undefined ? IDENTIFIABLE_TOL : Number(privacy.identifiable_tol),
      });
    } catch (exc) {
      throw new BundleError(`the manifest's 'privacy' settings are invalid: ${exc.message}`);
    }
  }

  get active() { return this.forbidIdentifiable || this.maxRevealedEnergy !== null; }

  allows(cert) {
    if (this.forbidIdentifiable && cert.identifiable > 0) return false;
    return this.maxRevealedEnergy === null || cert.revealed_energy <= this.maxRevealedEnergy + 1e-9;
  }

  toDict() {
    return { max_revealed_energy: this.maxRevealedEnergy, forbid_identifiable: this.forbidIdentifiable, identifiable_tol: this.identifiableTol };
  }
}

/** The first layer as equations over the raw input (``FirstLayerSystem``): rows in float64. */
class FirstLayerSystem {
  constructor(dev) {
    this.kind = dev.kind;
    this.inputShape = dev.inputShape;
    this.n = prod(dev.inputShape);
    this.nOutputs = dev.nOutputs;
    const c = dev.inputShape[0];
    const w = dev.weight;
    if (this.kind === "dense") {
      this.denseRows = new Float64Array(w.length);
      for (let o = 0; o < dev.outChannels; o++) {
        for (let j = 0; j < this.n; j++) this.denseRows[o * this.n + j] = w[o * this.n + j] / dev.std[Math.floor(j / dev.normStride)];
      }
      this.patchify = false;
      this.nPositions = 1;
      this.patchDim = this.n;
    } else {
      const kernel = dev.kernel;
      const kprod = prod(kernel);
      this.patchDim = c * kprod;
      this.kernelRows = new Float64Array(w.length);
      for (let o = 0; o < dev.outChannels; o++) {
        for (let ci = 0; ci < c; ci++) {
          for (let j = 0; j < kprod; j++) {
            const at = (o * c + ci) * kprod + j;
            this.kernelRows[at] = w[at] / dev.std[ci];
          }
        }
      }
      this.patchify = dev.stride.every((s, i) => s >= kernel[i]);
      const spatialOut = dev.outputShape.slice(1);
      this.nPositions = prod(spatialOut);
      const spatial = dev.inputShape.slice(1);
      const plane = prod(spatial);
      this.patchCoords = new Int32Array(this.nPositions * this.patchDim);
      for (let p = 0; p < this.nPositions; p++) {
        const starts = [];
        let rem = p;
        for (let d = spatialOut.length - 1; d >= 0; d--) { starts[d] = (rem % spatialOut[d]) * dev.stride[d]; rem = Math.floor(rem / spatialOut[d]); }
        for (let ci = 0; ci < c; ci++) {
          for (let j = 0; j < kprod; j++) {
            let r = j;
            let flat = 0;
            let mult = 1;
            for (let d = spatial.length - 1; d >= 0; d--) {
              const off = r % kernel[d];
              r = Math.floor(r / kernel[d]);
              flat += (starts[d] + off) * mult;
              mult *= spatial[d];
            }
            this.patchCoords[p * this.patchDim + ci * kprod + j] = ci * plane + flat;
          }
        }
      }
    }
  }

  /** Independent systems ``{members, rows (k x m), coords, pos}`` (``FirstLayerSystem.blocks``). */
  blocks(indices) {
    const k = indices.length;
    if (this.kind === "dense") {
      const rows = new Float64Array(k * this.n);
      for (let i = 0; i < k; i++) rows.set(this.denseRows.subarray(indices[i] * this.n, (indices[i] + 1) * this.n), i * this.n);
      return [{ members: Array.from({ length: k }, (_, i) => i), rows, m: this.n, coords: null, pos: 0, gram: this.gramOf(indices) }];
    }
    const ch = indices.map((v) => Math.floor(v / this.nPositions));
    const pos = indices.map((v) => v % this.nPositions);
    const pd = this.patchDim;
    if (!this.patchify) {
      const rows = new Float64Array(k * this.n);
      for (let i = 0; i < k; i++) {
        for (let j = 0; j < pd; j++) rows[i * this.n + this.patchCoords[pos[i] * pd + j]] = this.kernelRows[ch[i] * pd + j];
      }
      return [{ members: Array.from({ length: k }, (_, i) => i), rows, m: this.n, coords: null, pos: 0 }];
    }
    const order = new Array(k);  // by position, then index (a counting sort)
    const at = new Int32Array(this.nPositions + 1);
    for (let i = 0; i < k; i++) at[pos[i] + 1]++;
    for (let p = 0; p < this.nPositions; p++) at[p + 1] += at[p];
    for (let i = 0; i < k; i++) order[at[pos[i]]++] = i;
    const out = [];
    for (let s = 0; s < k;) {
      let e = s;
      while (e < k && pos[order[e]] === pos[order[s]]) e++;
      const members = order.slice(s, e);
      const rows = new Float64Array(members.length * pd);
      const K = this.kernelRows;
      for (let r = 0; r < members.length; r++) {  // a copy loop: no view object per row
        const from = ch[members[r]] * pd;
        for (let j = 0; j < pd; j++) rows[r * pd + j] = K[from + j];
      }
      const p = pos[order[s]];
      out.push({ members, rows, m: pd, coords: this.patchCoords.subarray(p * pd, (p + 1) * pd), pos: p });
      s = e;
    }
    return out;
  }

  /**
   * The Gram matrix of a dense layer's surviving rows, looked up in ``W W^T`` of all its rows (built once, on
   * first use, as numpy's ``FirstLayerSystem.gram``): a request then skips a k x k x n product. Null for a
   * layer too wide to hold it.
   */
  gramOf(indices) {
    const O = this.nOutputs;
    if (O > 2048) return null;
    const n = this.n;
    if (!this._gram) {
      const D = this.denseRows;
      const full = new Float64Array(O * O);
      const n4 = n - (n % 4);
      for (let i = 0; i < O; i++) {
        for (let j = 0; j <= i; j++) {
          let s0 = 0; let s1 = 0; let s2 = 0; let s3 = 0;
          for (let t = 0; t < n4; t += 4) {
            s0 += D[i * n + t] * D[j * n + t]; s1 += D[i * n + t + 1] * D[j * n + t + 1];
            s2 += D[i * n + t + 2] * D[j * n + t + 2]; s3 += D[i * n + t + 3] * D[j * n + t + 3];
          }
          for (let t = n4; t < n; t++) s0 += D[i * n + t] * D[j * n + t];
          full[i * O + j] = full[j * O + i] = (s0 + s1) + (s2 + s3);
        }
      }
      this._gram = full;
    }
    const k = indices.length;
    const g = new Float64Array(k * k);
    for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) g[i * k + j] = this._gram[indices[i] * O + indices[j]];
    return g;
  }

  /** ``a_i . d`` and ``||a_i||`` of one output's full row (for the policy's last-resort loop). */
  alignment(index, d) {
    let dot = 0;
    let nn = 0;
    if (this.kind === "dense") {
      for (let j = 0; j < this.n; j++) { const a = this.denseRows[index * this.n + j]; dot += a * d[j]; nn += a * a; }
    } else {
      const pd = this.patchDim;
      const ch = Math.floor(index / this.nPositions);
      const p = index % this.nPositions;
      for (let j = 0; j < pd; j++) { const a = this.kernelRows[ch * pd + j]; dot += a * d[this.patchCoords[p * pd + j]]; nn += a * a; }
    }
    return Math.abs(dot) / Math.max(Math.sqrt(nn), 1e-300);
  }
}

/** ``d[coords]`` (``d`` itself without coords); a plain loop (``Float64Array.from`` with a map runs the iterator protocol). */
function gather(d, coords) {
  if (!coords) return d;
  const out = new Float64Array(coords.length);
  for (let i = 0; i < coords.length; i++) out[i] = d[coords[i]];
  return out;
}

/** One-sided Jacobi SVD of the columns of ``M`` (rows x cols, row-major): columns -> U*sigma, returns V. */
function jacobiColumns(M, rows, cols) {
  const V = new Float64Array(cols * cols);
  for (let i = 0; i < cols; i++) V[i * cols + i] = 1;
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < cols - 1; p++) {
      for (let q = p + 1; q < cols; q++) {
        let alpha = 0; let beta = 0; let gamma = 0;
        for (let i = 0; i < rows; i++) {
          const a = M[i * cols + p]; const b = M[i * cols + q];
          alpha += a * a; beta += b * b; gamma += a * b;
        }
        if (gamma === 0 || Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < rows; i++) {
          const a = M[i * cols + p]; const b = M[i * cols + q];
          M[i * cols + p] = c * a - s * b; M[i * cols + q] = s * a + c * b;
        }
        for (let i = 0; i < cols; i++) {
          const a = V[i * cols + p]; const b = V[i * cols + q];
          V[i * cols + p] = c * a - s * b; V[i * cols + q] = s * a + c * b;
        }
      }
    }
    if (!rotated) break;
  }
  return V;
}

// -- WebAssembly SIMD kernels -----------------------------------------------------------------------------------
// A dense layer's time goes to the certificate's leverages, ``sum_i (L^-1 A)_it^2`` (k^2 m / 2 multiply-adds),
// to its Cholesky factor and inverse (k^3 / 3), and to the first layer's sums and screen. Where the engine has
// WebAssembly SIMD these run in a small module whose bytes are written below at load time (f64x2; ``lev`` holds a
// 4 x 4 tile in registers, ``upd`` is a batch of row updates y -= alpha x, ``dots`` the four-accumulator sums of
// the first layer); elsewhere (an engine without it, a page whose CSP forbids compiling WebAssembly, or after
// ``useWasmSimd(false)``) the plain-JavaScript loops run. Both do the same IEEE operations in the same order
// (one product and one sum per term, in the same term order per entry), so both give the same bits.
const wUleb = (v) => { const o = []; do { let b = v & 0x7f; v >>>= 7; if (v) b |= 0x80; o.push(b); } while (v); return o; };
const wSleb = (v) => { const o = []; for (;;) { const b = v & 0x7f; v >>= 7; if ((v === 0 && !(b & 0x40)) || (v === -1 && (b & 0x40))) { o.push(b); return o; } o.push(b | 0x80); } };
const wVec = (items) => [...wUleb(items.length), ...items.flat()];
const wSection = (id, bytes) => [id, ...wUleb(bytes.length), ...bytes];
const wName = (s) => wVec([...s].map((c) => c.charCodeAt(0)));

/**
 * The module: memory ``mem`` and ``lev(Lp, A, lev, kp, mp)`` (byte offsets; kp, mp multiples of 4). ``Lp`` is a
 * lower-triangular ``Li`` packed by tiles of 4 rows (tile q: for j < q + 4, the 4 values ``Li[q + r][j]``),
 * ``A`` is kp x mp row-major; ``lev[t] = sum_i (sum_j Li[i][j] A[j][t])^2``, i ascending, for t < mp.
 */
function leverageModuleBytes() {
  const get = (i) => [0x20, ...wUleb(i)]; const set = (i) => [0x21, ...wUleb(i)]; const tee = (i) => [0x22, ...wUleb(i)];
  const i32 = (v) => [0x41, ...wSleb(v)];
  const ADD = 0x6a; const LT_U = 0x49; const SHL = 0x74;
  const simd = (op, ...imm) => [0xfd, ...wUleb(op), ...imm];
  const load = (off) => simd(0x00, 4, ...wUleb(off)); const store = (off) => simd(0x0b, 4, ...wUleb(off));
  const splat = (off) => simd(0x0a, 3, ...wUleb(off));  // v128.load64_splat
  const FADD = simd(0xf0); const FMUL = simd(0xf2); const ZERO = simd(0x0c, ...new Array(16).fill(0));
  const loop = (body) => [0x03, 0x40, ...body, 0x0b];
  const again = (counter, step, limit) => [...get(counter), ...i32(step), ADD, ...tee(counter), ...get(limit), LT_U, 0x0d, 0];
  // params 0 Lp, 1 A, 2 lev, 3 kp, 4 mp; i32 locals 5 t, 6 q, 7 j, 8 pa, 9 jEnd, 10 row bytes, 11 i0;
  // v128 locals 12..19 the 4 x 2 accumulators, 20-21 two column pairs of A, 22-23 the leverages, 24 a splat of Li
  const [A, LEV, KP, MP, T, Q, J, PA, JE, RB, I0, ACC, X, LV, L] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 20, 22, 24];
  const inner = [...get(PA), ...load(0), ...set(X), ...get(PA), ...load(16), ...set(X + 1)];
  for (let r = 0; r < 4; r++) {
    inner.push(...get(Q), ...splat(8 * r), ...set(L));
    for (let c = 0; c < 2; c++) inner.push(...get(ACC + 2 * r + c), ...get(L), ...get(X + c), ...FMUL, ...FADD, ...set(ACC + 2 * r + c));
  }
  inner.push(...get(PA), ...get(RB), ADD, ...set(PA), ...get(Q), ...i32(32), ADD, ...set(Q), ...again(J, 1, JE));
  const tile = [];
  for (let a = 0; a < 8; a++) tile.push(...ZERO, ...set(ACC + a));
  tile.push(...get(I0), ...i32(4), ADD, ...set(JE), ...i32(0), ...set(J), ...get(A), ...get(T), ...i32(3), SHL, ADD, ...set(PA), ...loop(inner));
  for (let r = 0; r < 4; r++) for (let c = 0; c < 2; c++) tile.push(...get(LV + c), ...get(ACC + 2 * r + c), ...get(ACC + 2 * r + c), ...FMUL, ...FADD, ...set(LV + c));
  tile.push(...again(I0, 4, KP));
  const col = [...ZERO, ...set(LV), ...ZERO, ...set(LV + 1), ...i32(0), ...set(I0), ...get(0), ...set(Q), ...loop(tile)];
  for (let c = 0; c < 2; c++) col.push(...get(LEV), ...get(T), ...i32(3), SHL, ADD, ...get(LV + c), ...store(16 * c));
  col.push(...again(T, 4, MP));
  const body = [...wVec([[...wUleb(7), 0x7f], [...wUleb(13), 0x7b]]), ...get(MP), ...i32(3), SHL, ...set(RB), ...i32(0), ...set(T), ...loop(col), 0x0b];
  // upd(y, yStride, x, xStride, alpha, n0, count): for u < count, with n = n0 + u and alpha_u the f64 at
  // alpha + 8u: y_u[0..n) -= alpha_u * x_u[0..n), where y_u = y + u yStride, x_u = x + u xStride (bytes)
  const [Y, YS, XP, XS, AP, N0, CNT, U, YP, XQ, NN] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  const SA = 11; const AL = 12;  // f64 alpha, v128 its splat
  const SUB = 0x6b; const GE_S = 0x4e; const EQZ = 0x45; const F64SUB = 0xa1; const F64MUL = 0xa2;
  const f64load = [0x2b, 3, 0]; const f64store = [0x39, 3, 0];
  const pair = [...get(YP), ...get(YP), ...load(0), ...get(AL), ...get(XQ), ...load(0), ...FMUL, ...simd(0xf1), ...store(0),
    ...get(YP), ...i32(16), ADD, ...set(YP), ...get(XQ), ...i32(16), ADD, ...set(XQ),
    ...get(NN), ...i32(2), SUB, ...tee(NN), ...i32(2), GE_S, 0x0d, 0];
  const row = [...get(Y), ...get(U), ...get(YS), 0x6c, ADD, ...set(YP), ...get(XP), ...get(U), ...get(XS), 0x6c, ADD, ...set(XQ),
    ...get(AP), ...get(U), ...i32(3), SHL, ADD, ...f64load, ...tee(SA), ...simd(0x14), ...set(AL),
    ...get(N0), ...get(U), ADD, ...set(NN),
    0x02, 0x40, ...get(NN), ...i32(2), 0x48, 0x0d, 0, ...loop(pair), 0x0b,  // block: if n < 2 skip the pairs
    0x02, 0x40, ...get(NN), EQZ, 0x0d, 0, ...get(YP), ...get(YP), ...f64load, ...get(SA), ...get(XQ), ...f64load, F64MUL, F64SUB, ...f64store, 0x0b,
    ...get(U), ...i32(1), ADD, ...tee(U), ...get(CNT), 0x48, 0x0d, 0];
  const upd = [...wVec([[...wUleb(4), 0x7f], [...wUleb(1), 0x7c], [...wUleb(1), 0x7b]]),
    0x02, 0x40, ...get(CNT), ...i32(1), 0x48, 0x0d, 0, ...i32(0), ...set(U), ...loop(row), 0x0b, 0x0b];
  // dots(z, w, idx, out, n, count): for u < count, o = the i32 at idx + 4u: out[u] = ((a0 + a1) + (a2 + a3)) with
  // a_r = sum over i = r mod 4 of z[i] w[o n + i] in i order, the tail (n mod 4) added to a0 (the JS first layer's sums)
  let dots;
  {
    const [Z, W, IDX, OUT, N, CT] = [0, 1, 2, 3, 4, 5];
    const [UU, WP, I, N4, NB] = [6, 7, 8, 9, 10]; const [A0, A1, A2, A3] = [11, 12, 13, 14]; const [V01, V23] = [15, 16];
    const F64ADD = 0xa0; const F64MUL = 0xa2; const lane = (v, l) => [...get(v), ...simd(0x21, l)];
    const quad = [...get(V01), ...get(Z), ...get(I), ADD, ...load(0), ...get(WP), ...get(I), ADD, ...load(0), ...FMUL, ...FADD, ...set(V01),
      ...get(V23), ...get(Z), ...get(I), ADD, ...load(16), ...get(WP), ...get(I), ADD, ...load(16), ...FMUL, ...FADD, ...set(V23),
      ...get(I), ...i32(32), ADD, ...tee(I), ...get(N4), LT_U, 0x0d, 0];
    const tail = [...get(I), ...get(NB), 0x4f, 0x0d, 1,
      ...get(A0), ...get(Z), ...get(I), ADD, 0x2b, 3, 0, ...get(WP), ...get(I), ADD, 0x2b, 3, 0, F64MUL, F64ADD, ...set(A0),
      ...get(I), ...i32(8), ADD, ...set(I), 0x0c, 0];
    const one = [...get(W), ...get(IDX), ...get(UU), ...i32(2), SHL, ADD, 0x28, 2, 0, ...get(NB), 0x6c, ADD, ...set(WP),
      ...ZERO, ...set(V01), ...ZERO, ...set(V23), ...i32(0), ...set(I),
      0x02, 0x40, ...get(N4), 0x45, 0x0d, 0, ...loop(quad), 0x0b,
      ...lane(V01, 0), ...set(A0), ...lane(V01, 1), ...set(A1), ...lane(V23, 0), ...set(A2), ...lane(V23, 1), ...set(A3),
      0x02, 0x40, ...loop(tail), 0x0b,
      ...get(OUT), ...get(UU), ...i32(3), SHL, ADD, ...get(A0), ...get(A1), F64ADD, ...get(A2), ...get(A3), F64ADD, F64ADD, 0x39, 3, 0,
      ...get(UU), ...i32(1), ADD, ...tee(UU), ...get(CT), 0x48, 0x0d, 0];
    dots = [...wVec([[...wUleb(5), 0x7f], [...wUleb(4), 0x7c], [...wUleb(2), 0x7b]]),
      ...get(N), ...i32(3), SHL, ...set(NB), ...get(N), ...i32(-4), 0x71, ...i32(3), SHL, ...set(N4),
      0x02, 0x40, ...get(CT), ...i32(1), 0x48, 0x0d, 0, ...i32(0), ...set(UU), ...loop(one), 0x0b, 0x0b];
  }
  return new Uint8Array([0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0,
    ...wSection(1, wVec([[0x60, ...wVec([0x7f, 0x7f, 0x7f, 0x7f, 0x7f]), 0], [0x60, ...wVec([0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f]), 0],
      [0x60, ...wVec([0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f]), 0]])),
    ...wSection(3, wVec([wUleb(0), wUleb(1), wUleb(2)])), ...wSection(5, wVec([[0, ...wUleb(1)]])),
    ...wSection(7, wVec([[...wName("mem"), 2, 0], [...wName("lev"), 0, 0], [...wName("upd"), 0, 1], [...wName("dots"), 0, 2]])),
    ...wSection(10, wVec([[...wUleb(body.length), ...body], [...wUleb(upd.length), ...upd], [...wUleb(dots.length), ...dots]]))]);
}

// Below this many multiply-adds per call (a layer's O x n, a certificate's k^2 m / 16) the plain loops are as fast
// and no WebAssembly is compiled at all: a small model on a page whose CSP forbids it logs no violation.
const SIMD_MIN_WORK = 65536;
let simdModule;  // undefined: not tried yet; null: no WebAssembly SIMD here (or a CSP that forbids compiling it)
let simdKernel = null;  // the instance the certificates share (a device's first layer has its own: its weights stay in it)
let simdWanted = true;

/** A new instance of the kernels, ``{mem, lev, upd, dots}``, or null (no SIMD here, or switched off). */
function newKernel() {
  if (!simdWanted) return null;
  if (simdModule === undefined) {
    simdModule = null;
    try {
      const bytes = leverageModuleBytes();
      if (typeof WebAssembly === "object" && WebAssembly.validate(bytes)) simdModule = new WebAssembly.Module(bytes);
    } catch {
      simdModule = null;
    }
  }
  if (simdModule === null) return null;
  try {
    const { exports } = new WebAssembly.Instance(simdModule, {});
    return { mem: exports.mem, lev: exports.lev, upd: exports.upd, dots: exports.dots };
  } catch {
    return null;
  }
}

/** The certificates' shared instance, or null. */
function leverageKernel() {
  if (!simdWanted) return null;
  return simdKernel || (simdKernel = newKernel());
}

/** ``kernel`` with at least ``doubles`` float64 of memory, and a view of it. */
function kernelMemory(kernel, doubles) {
  const need = doubles * 8;
  if (kernel.mem.buffer.byteLength < need) kernel.mem.grow(Math.ceil((need - kernel.mem.buffer.byteLength) / 65536));
  return new Float64Array(kernel.mem.buffer);
}

/**
 * Use the WebAssembly SIMD kernels (dense first layer and certificate) where the engine has them (the default),
 * or not (``false``: plain JavaScript; the same bits, only slower). Returns whether the kernels are in use.
 */
export function useWasmSimd(enabled = true) {
  simdWanted = Boolean(enabled);
  return leverageKernel() !== null;
}

/**
 * ``lev[t] = sum_i (Li A)_it^2`` (rows added in order) for a lower-triangular ``Li`` (k x k) and dense ``A``
 * (k x m), without storing ``Li A``: 4 x 2 tiles of it held in registers (the plain-JS twin of the ``lev`` kernel).
 */
function leveragesJs(Li, a, k, m) {
  const lev = new Float64Array(m);
  const m2 = m - (m % 2);
  let i0 = 0;
  for (; i0 + 4 <= k; i0 += 4) {
    const r0 = i0 * k; const r1 = r0 + k; const r2 = r1 + k; const r3 = r2 + k;
    for (let t = 0; t < m2; t += 2) {
      let b00 = 0; let b01 = 0; let b10 = 0; let b11 = 0; let b20 = 0; let b21 = 0; let b30 = 0; let b31 = 0;
      for (let j = 0, at = t; j <= i0 + 3; j++, at += m) {
        const x0 = a[at]; const x1 = a[at + 1];
        const l0 = Li[r0 + j]; const l1 = Li[r1 + j]; const l2 = Li[r2 + j]; const l3 = Li[r3 + j];
        b00 += l0 * x0; b01 += l0 * x1; b10 += l1 * x0; b11 += l1 * x1;
        b20 += l2 * x0; b21 += l2 * x1; b30 += l3 * x0; b31 += l3 * x1;
      }
      lev[t] = (((lev[t] + b00 * b00) + b10 * b10) + b20 * b20) + b30 * b30;
      lev[t + 1] = (((lev[t + 1] + b01 * b01) + b11 * b11) + b21 * b21) + b31 * b31;
    }
    for (let t = m2; t < m; t++) {
      for (let i = i0; i < i0 + 4; i++) { let s = 0; for (let j = 0; j <= i; j++) s += Li[i * k + j] * a[j * m + t]; lev[t] += s * s; }
    }
  }
  for (let i = i0; i < k; i++) {
    for (let t = 0; t < m; t++) { let s = 0; for (let j = 0; j <= i; j++) s += Li[i * k + j] * a[j * m + t]; lev[t] += s * s; }
  }
  return lev;
}

/**
 * The Cholesky factor of the lower triangle ``G`` (k x k, row-major) whose row ``i`` is zero left of ``env[i]``:
 * no fill outside that envelope, so only its entries are computed; null where a pivot is not above ``minPivot``.
 */
function envelopeCholesky(G, env, k, minPivot) {
  const L = new Float64Array(k * k);
  for (let i = 0; i < k; i++) {
    const fi = env[i]; const ri = i * k;
    for (let j = fi; j <= i; j++) {
      const rj = j * k;
      let s = G[ri + j];
      for (let t = Math.max(fi, env[j]); t < j; t++) s -= L[ri + t] * L[rj + t];
      if (i === j) {
        if (!(s > minPivot)) return null;
        L[ri + i] = Math.sqrt(s);
      } else {
        L[ri + j] = s / L[rj + j];
      }
    }
  }
  return L;
}

/**
 * Leverages and ``||P d||^2`` of a system of sparse rows (overlapping convolutions: each row touches one
 * receptive field) whose Gram matrix is well conditioned, without any k x k x k work: rows ordered by their
 * first column, so ``G`` (and its Cholesky factor) lives in a narrow envelope; the entries of ``G^-1`` inside
 * it by the Takahashi recurrence; ``lev[t] = a_t^T G^-1 a_t`` over the few rows that touch input t, and the
 * energy ``||L^-1 A d||^2`` by one sparse forward substitution. Null when a pivot is small (then the SVD).
 */
function envelopeStats(a, k, m, d, cols, colStart) {
  const first = new Int32Array(k);
  for (let i = 0; i < k; i++) first[i] = colStart[i] < colStart[i + 1] ? cols[colStart[i]] : m;
  const order = Array.from({ length: k }, (_, i) => i).sort((x, y) => first[x] - first[y] || x - y);
  // the rows touching each input, in the new order
  const cCount = new Int32Array(m + 1);
  for (let q = 0; q < cols.length; q++) cCount[cols[q] + 1]++;
  for (let t = 0; t < m; t++) cCount[t + 1] += cCount[t];
  const cRow = new Int32Array(cols.length); const cVal = new Float64Array(cols.length);
  const fill = cCount.slice(0, m);
  for (let r = 0; r < k; r++) {
    const i = order[r];
    for (let q = colStart[i]; q < colStart[i + 1]; q++) { const t = cols[q]; cRow[fill[t]] = r; cVal[fill[t]++] = a[i * m + t]; }
  }
  const G = new Float64Array(k * k);  // lower triangle, new order; sums in input order as the dense Gram
  const env = Int32Array.from({ length: k }, (_, r) => r);  // first column of row r's envelope
  for (let t = 0; t < m; t++) {
    for (let p = cCount[t]; p < cCount[t + 1]; p++) {
      const rp = cRow[p]; const vp = cVal[p];
      for (let q = cCount[t]; q <= p; q++) { G[rp * k + cRow[q]] += vp * cVal[q]; if (cRow[q] < env[rp]) env[rp] = cRow[q]; }
    }
  }
  let maxDiag = 0;
  for (let r = 0; r < k; r++) maxDiag = Math.max(maxDiag, G[r * k + r]);
  if (!(maxDiag > 0)) return null;
  const L = envelopeCholesky(G, env, k, 1e-6 * maxDiag);
  if (L === null) return null;
  // Z = G^-1 inside the envelope (Z[i][j], i >= j), columns from the last: L^T Z = L^-1 (upper part zero)
  const Z = new Float64Array(k * k);
  const below = new Int32Array(k);  // rows t > j with env[t] <= j: the structure of column j of L
  for (let j = k - 1; j >= 0; j--) {
    let nb = 0;
    for (let t = j + 1; t < k; t++) if (env[t] <= j) below[nb++] = t;
    const ljj = L[j * k + j];
    for (let u = nb - 1; u >= 0; u--) {
      const i = below[u];
      let s = 0;
      for (let v = 0; v < nb; v++) { const t = below[v]; s += L[t * k + j] * (t >= i ? Z[t * k + i] : Z[i * k + t]); }
      Z[i * k + j] = -s / ljj;
    }
    let s = 0;
    for (let v = 0; v < nb; v++) { const t = below[v]; s += L[t * k + j] * Z[t * k + j]; }
    Z[j * k + j] = (1 / ljj - s) / ljj;
  }
  const lev = new Float64Array(m);
  for (let t = 0; t < m; t++) {
    let s = 0;
    for (let p = cCount[t]; p < cCount[t + 1]; p++) {
      const rp = cRow[p]; const vp = cVal[p];
      let c = 0;
      for (let q = cCount[t]; q < p; q++) c += cVal[q] * Z[rp * k + cRow[q]];
      s += vp * (vp * Z[rp * k + rp] + 2 * c);
    }
    lev[t] = s;
  }
  let e = 0;
  const y = new Float64Array(k);
  for (let r = 0; r < k; r++) {
    const i = order[r];
    let ad = 0;
    for (let q = colStart[i]; q < colStart[i + 1]; q++) ad += a[i * m + cols[q]] * d[cols[q]];
    const rr = r * k;
    for (let j = env[r]; j < r; j++) ad -= L[rr + j] * y[j];
    y[r] = ad / L[rr + r];
    e += y[r] * y[r];
  }
  return { lev, e };
}

const SCRATCH = [];  // choleskyStats' work arrays, reused across the many small systems of one request

/** A work array of ``n`` float64 in slot ``slot`` (grown as needed; its contents are whatever was left there). */
function scratch(slot, n) {
  if (!(SCRATCH[slot] && SCRATCH[slot].length >= n)) SCRATCH[slot] = new Float64Array(Math.max(n, 2 * (SCRATCH[slot]?.length || 0)));
  return SCRATCH[slot].subarray(0, n);
}

/**
 * Leverages and ``||P d||^2`` of ``a`` (k x m) when its rows are well conditioned (``{lev, e}``, rank k), else
 * null. Cholesky of the k x k Gram matrix: ``L^-1 A`` has orthonormal rows, so ``lev[t] = ||L^-1 a_t||^2`` and
 * ``||P d||^2 = ||L^-1 (A d)||^2``; sparse rows take the envelope route (``envelopeStats``).
 */
function choleskyStats(a, k, m, d, gram) {
  if (k > m) return null;
  let nnzTotal = 0;  // a dense layer (its Gram given) has dense rows; others may be sparse
  if (gram === null) for (let t = 0; t < k * m; t++) if (a[t] !== 0) nnzTotal++;
  if (gram === null && nnzTotal * 4 < k * m) {
    const cols = new Int32Array(nnzTotal); const colStart = new Int32Array(k + 1);
    for (let i = 0, at = 0; i < k; i++) {
      colStart[i] = at;
      for (let t = 0; t < m; t++) if (a[i * m + t] !== 0) cols[at++] = t;
    }
    colStart[k] = nnzTotal;
    return envelopeStats(a, k, m, d, cols, colStart);
  }
  let G = gram;
  if (G === null) {
    G = scratch(0, k * k);  // every entry is written below
    const m4 = m - (m % 4);
    for (let i = 0; i < k; i++) {
      const ai = i * m;
      for (let j = 0; j <= i; j++) {
        const aj = j * m;
        let s0 = 0; let s1 = 0; let s2 = 0; let s3 = 0;  // four accumulators: the dot products dominate
        for (let t = 0; t < m4; t += 4) {
          s0 += a[ai + t] * a[aj + t]; s1 += a[ai + t + 1] * a[aj + t + 1];
          s2 += a[ai + t + 2] * a[aj + t + 2]; s3 += a[ai + t + 3] * a[aj + t + 3];
        }
        for (let t = m4; t < m; t++) s0 += a[ai + t] * a[aj + t];
        const s = (s0 + s1) + (s2 + s3);
        G[i * k + j] = s; G[j * k + i] = s;
      }
    }
  }
  let maxDiag = 0;
  for (let i = 0; i < k; i++) maxDiag = Math.max(maxDiag, G[i * k + i]);
  if (!(maxDiag > 0)) return null;
  // large systems: L, L^-1 and the leverages in the WebAssembly kernel's memory (the same operations either way)
  const K = k >= 8 && k * k * m >= SIMD_MIN_WORK * 16 ? leverageKernel() : null;
  const kp = (k + 3) & ~3; const mp = (m + 3) & ~3;
  const oA = 2 * kp * (kp + 4); const oLev = oA + kp * mp; const oL = oLev + mp; const oLi = oL + k * k; const oC = oLi + k * k;
  let f = null;
  if (K !== null) f = kernelMemory(K, oC + k);
  // Cholesky, right-looking: each entry gets G_ij - L_i0 L_j0 - L_i1 L_j1 - ... in that order (as the dot-product
  // form), but the updates of a step are independent contiguous row updates instead of one dependent chain
  const L = f ? f.subarray(oL, oL + k * k) : scratch(1, k * k);  // its lower triangle becomes L
  L.set(G);
  const c = f ? f.subarray(oC, oC + k) : scratch(2, k);
  for (let j = 0; j < k; j++) {
    const rj = j * k;
    const s = L[rj + j];
    if (!(s > 1e-6 * maxDiag)) return null;
    const ljj = Math.sqrt(s);
    L[rj + j] = ljj;
    for (let i = j + 1; i < k; i++) c[i] = L[i * k + j] = L[i * k + j] / ljj;
    if (K !== null) {
      K.upd(8 * (oL + (j + 1) * k + j + 1), 8 * k, 8 * (oC + j + 1), 0, 8 * (oC + j + 1), 1, k - j - 1);
      continue;
    }
    for (let i = j + 1; i < k; i++) {
      const lij = c[i];
      const ri = i * k;
      for (let l = j + 1; l <= i; l++) L[ri + l] -= lij * c[l];
    }
  }
  // L^-1 explicitly (k^3/6): row i = -(sum_{t<i} L_it Li_t) / L_ii, contiguous row updates
  const Li = (f ? f.subarray(oLi, oLi + k * k) : scratch(3, k * k)).fill(0);
  for (let i = 0; i < k; i++) {
    const ri = i * k;
    if (K !== null) {
      K.upd(8 * (oLi + ri), 0, 8 * oLi, 8 * k, 8 * (oL + ri), 1, i);
    } else {
      for (let t = 0; t < i; t++) {
        const l = L[ri + t];
        const rt = t * k;
        for (let j = 0; j <= t; j++) Li[ri + j] -= l * Li[rt + j];
      }
    }
    const inv = 1 / L[ri + i];
    for (let j = 0; j < i; j++) Li[ri + j] *= inv;
    Li[ri + i] = inv;
  }
  const ad = scratch(4, k);
  const m4 = m - (m % 4);
  for (let i = 0; i < k; i++) {
    const ai = i * m;
    let s0 = 0; let s1 = 0; let s2 = 0; let s3 = 0;
    for (let t = 0; t < m4; t += 4) { s0 += a[ai + t] * d[t]; s1 += a[ai + t + 1] * d[t + 1]; s2 += a[ai + t + 2] * d[t + 2]; s3 += a[ai + t + 3] * d[t + 3]; }
    for (let t = m4; t < m; t++) s0 += a[ai + t] * d[t];
    ad[i] = (s0 + s1) + (s2 + s3);
  }
  let e = 0;  // ||P d||^2 = ||L^-1 (A d)||^2
  for (let i = 0; i < k; i++) { let s = 0; for (let j = 0; j <= i; j++) s += Li[i * k + j] * ad[j]; e += s * s; }
  // leverages: lev[t] = sum_i (Li A)_it^2, rows in order
  if (K === null) return { lev: leveragesJs(Li, a, k, m), e };
  let at = 0;  // Li packed by tiles of 4 rows, zeros above the diagonal and past row k
  for (let q = 0; q < kp; q += 4) {
    for (let j = 0; j < q + 4; j++) {
      for (let i = q; i < q + 4; i++) f[at++] = i < k && j <= i ? Li[i * k + j] : 0;
    }
  }
  if (mp === m) {
    f.set(a.subarray(0, k * m), oA);
  } else {
    for (let i = 0; i < k; i++) { f.set(a.subarray(i * m, (i + 1) * m), oA + i * mp); f.fill(0, oA + i * mp + m, oA + (i + 1) * mp); }
  }
  f.fill(0, oA + k * mp, oA + kp * mp);
  K.lev(0, oA * 8, oLev * 8, kp, mp);
  return { lev: f.slice(oLev, oLev + m), e };
}

/**
 * Orthonormal basis (rows) of the row space of ``a`` (k x m) by an exact one-sided Jacobi SVD with numpy's
 * rank tolerance, so the rank agrees with the Python runtime (ill-conditioned or tall systems).
 */
function rowSpaceBasis(a, k, m) {
  const tolScale = Math.max(k, m) * EPS64;
  if (k <= m) {  // columns of a^T = rows of a; after Jacobi they are U_j sigma_j
    const M = new Float64Array(m * k);
    for (let i = 0; i < k; i++) for (let t = 0; t < m; t++) M[t * k + i] = a[i * m + t];
    jacobiColumns(M, m, k);
    const sig = Array.from({ length: k }, (_, j) => { let s = 0; for (let t = 0; t < m; t++) s += M[t * k + j] ** 2; return Math.sqrt(s); });
    const tol = Math.max(...sig) * tolScale;
    const keep = sig.map((s, j) => [s, j]).filter(([s]) => s > tol);
    const B = new Float64Array(keep.length * m);
    keep.forEach(([s, j], r) => { for (let t = 0; t < m; t++) B[r * m + t] = M[t * k + j] / s; });
    return { basis: B, r: keep.length };
  }
  const M = Float64Array.from(a);  // k x m, columns of a; V's columns are a's right singular vectors
  const V = jacobiColumns(M, k, m);
  const sig = Array.from({ length: m }, (_, j) => { let s = 0; for (let t = 0; t < k; t++) s += M[t * m + j] ** 2; return Math.sqrt(s); });
  const tol = Math.max(...sig) * tolScale;
  const keep = sig.map((s, j) => [s, j]).filter(([s]) => s > tol);
  const B = new Float64Array(keep.length * m);
  keep.forEach(([, j], r) => { for (let t = 0; t < m; t++) B[r * m + t] = V[t * m + j]; });
  return { basis: B, r: keep.length };
}

const FULL_RANK_MARGIN = 1e-10;  // as numpy's _FULL_RANK_MARGIN: tr(M) tr(M^-1) below 1e10 proves rank m

/**
 * A system with at least as many rows as inputs (``_batched_stats_tall``): where ``M = A^T A`` on the inputs its
 * rows touch is proven full rank (``tr(M) tr(M^-1) < 1e10``; the others are outside the row space), ``P`` is the
 * identity on them: ``{r, lev, e}``; else null (the SVD decides). ``M`` from each row's non-zeros, its Cholesky
 * factor within its envelope (a convolution's ``M`` is banded), the diagonal of ``M^-1`` from one forward
 * substitution per input: no k x m x m or m^3 work for a convolution.
 */
function tallStats(a, k, m, d) {
  const M = new Float64Array(m * m);  // lower triangle
  const nz = new Int32Array(m);
  for (let i = 0; i < k; i++) {
    const ai = i * m;
    let c = 0;
    for (let t = 0; t < m; t++) if (a[ai + t] !== 0) nz[c++] = t;
    for (let p = 0; p < c; p++) {
      const tp = nz[p]; const vp = a[ai + tp]; const row = tp * m;
      for (let q = 0; q <= p; q++) M[row + nz[q]] += vp * a[ai + nz[q]];
    }
  }
  const cov = [];
  for (let t = 0; t < m; t++) if (M[t * m + t] > 0) cov.push(t);
  const mc = cov.length;
  if (mc === 0) return null;
  const G = new Float64Array(mc * mc);  // M on the covered inputs
  const env = new Int32Array(mc);
  let trace = 0;
  for (let i = 0; i < mc; i++) {
    const row = cov[i] * m;
    let fi = i;
    for (let j = 0; j < i; j++) if (M[row + cov[j]] !== 0) { fi = j; break; }
    env[i] = fi;
    for (let j = fi; j <= i; j++) G[i * mc + j] = M[row + cov[j]];
    trace += M[row + cov[i]];
  }
  const L = envelopeCholesky(G, env, mc, 0);
  if (L === null) return null;
  let traceInv = 0;
  const x = new Float64Array(mc);
  for (let j = 0; j < mc; j++) {  // column j of L^-1; (M^-1)_jj is its squared norm
    x[j] = 1 / L[j * mc + j];
    let vd = x[j] * x[j];
    for (let i = j + 1; i < mc; i++) {
      const ri = i * mc;
      let s = 0;
      for (let t = Math.max(env[i], j); t < i; t++) s += L[ri + t] * x[t];
      x[i] = -s / L[ri + i];
      vd += x[i] * x[i];
    }
    if (!(vd * M[cov[j] * m + cov[j]] >= 1 - 1e-9)) return null;
    traceInv += vd;
  }
  if (!(trace * traceInv * FULL_RANK_MARGIN < 1)) return null;
  const lev = new Float64Array(m);
  let e = 0;
  for (const t of cov) { lev[t] = 1; e += d[t] * d[t]; }
  return { r: mc, lev, e };
}

/** (rank, identifiable, max leverage, ||P d||^2) of one system (``_system_stats``). */
function systemStats(a, k, m, d, idTol, gram = null) {
  if (k === 0) return { r: 0, ident: 0, maxLev: 0, e: 0 };
  let r = k;
  let lev; let e;
  const tall = k >= m ? tallStats(a, k, m, d) : null;
  const fast = tall ?? choleskyStats(a, k, m, d, gram);
  if (fast !== null) {
    ({ lev, e } = fast);
    if (tall) r = tall.r;
  } else {
    const { basis, r: rank } = rowSpaceBasis(a, k, m);
    r = rank; lev = new Float64Array(m); e = 0;
    for (let i = 0; i < r; i++) {
      let pr = 0;
      const bi = i * m;
      for (let t = 0; t < m; t++) { const v = basis[bi + t]; lev[t] += v * v; pr += v * d[t]; }
      e += pr * pr;
    }
  }
  let ident = 0;
  let maxLev = 0;
  for (let t = 0; t < m; t++) { if (lev[t] >= 1 - idTol) ident++; if (lev[t] > maxLev) maxLev = lev[t]; }
  return { r, ident, maxLev, e };
}

const dot = (a, b) => { let s = 0; for (let i = 0; i < a.length; i++) s += a[i] * b[i]; return s; };

/** The request's certificate (``_certificate``); field names as in ``Certificate.to_dict``. */
function certificateOf(system, indices, d, idTol, kBefore, policy) {
  const total = dot(d, d);
  let rank = 0; let ident = 0; let energy = 0; let maxLev = 0;
  let worstPatch = null;
  const blocks = system.blocks(indices);
  if (system.kind !== "dense" && system.patchify) {
    const pe = new Float64Array(system.nPositions);
    const pk = new Int32Array(system.nPositions); const pr = new Int32Array(system.nPositions); const pi = new Int32Array(system.nPositions);
    for (const b of blocks) {
      const db = gather(d, b.coords);
      const st = systemStats(b.rows, b.members.length, b.m, db, idTol);
      const dd = dot(db, db);
      pk[b.pos] = b.members.length; pr[b.pos] = st.r; pi[b.pos] = st.ident;
      pe[b.pos] = dd > ENERGY_EPS * Math.max(total, 1) ? st.e / dd : 0;
      rank += st.r; ident += st.ident; energy += st.e; maxLev = Math.max(maxLev, st.maxLev);
    }
    let w = 0;
    for (let p = 0; p < pe.length; p++) { pe[p] = Math.min(1, Math.max(0, pe[p])); if (pe[p] > pe[w]) w = p; }
    worstPatch = { index: w, k: pk[w], rank: pr[w], identifiable: pi[w], revealed_energy: pe[w], patch_dim: system.patchDim };
  } else {
    for (const b of blocks) {
      const st = systemStats(b.rows, b.members.length, b.m, gather(d, b.coords), idTol, b.gram || null);
      rank += st.r; ident += st.ident; energy += st.e; maxLev = Math.max(maxLev, st.maxLev);
    }
  }
  const cert = {
    k: indices.length, n: system.n, rank, identifiable: ident,
    revealed_energy: total > ENERGY_EPS ? Math.min(1, energy / total) : 0,
    max_leverage: Math.min(1, maxLev), k_before_policy: kBefore, dropped_by_policy: kBefore - indices.length,
    policy_ok: true, policy: policy ? policy.toDict() : null,
  };
  if (worstPatch) cert.worst_patch = worstPatch;
  cert.policy_ok = policy ? policy.allows(cert) : true;
  return cert;
}

const EXPLICIT_BELOW = 1e-2;  // as numpy's _EXPLICIT_BELOW: rows this close to the accepted span get explicit residuals

/**
 * Where one system's greedy keeps its basis (up to ``maxBasis`` rows of ``n``), every row's coefficients along
 * it, and its scratch vectors: in the WebAssembly SIMD kernel's memory when the work is large enough (the
 * residuals then run in its ``upd`` and ``dots``), else in a plain array. The same operations in the same order
 * either way, so the same bits.
 */
function greedyWorkspace(k, n, maxBasis) {
  const K = k * maxBasis * n >= SIMD_MIN_WORK * 16 ? leverageKernel() : null;
  const oBasis = 0; const oCoef = oBasis + maxBasis * n; const oR = oCoef + k * maxBasis; const oQ = oR + n;
  const oProj = oQ + n; const oIds = oProj + maxBasis; const size = oIds + Math.ceil(maxBasis / 2);
  const f = K !== null ? kernelMemory(K, size) : new Float64Array(size);
  if (K !== null) f.fill(0, 0, size);
  const ids = new Int32Array(f.buffer, f.byteOffset + 8 * oIds, maxBasis);
  for (let s = 0; s < maxBasis; s++) ids[s] = s;
  return { K, f, n, maxBasis, oBasis, oCoef, oR, oQ, oProj, oIds,
    basis: f.subarray(oBasis, oCoef), coef: f.subarray(oCoef, oR), r: f.subarray(oR, oQ), q: f.subarray(oQ, oProj),
    proj: f.subarray(oProj, oIds) };
}

/** ``f[y:y+n] -= sum_s f[alpha+s] basis[s]`` over the first ``nb`` basis rows, each entry's subtractions in ``s``
 * order (``y - alpha_s * b_s``); plain JavaScript does four rows per pass over ``y``, the same operations. */
function subtractCombination(ws, y, alpha, nb) {
  const { f, n, K, oBasis } = ws;
  if (K !== null) {
    for (let s = 0; s < nb; s++) K.upd(8 * y, 0, 8 * (oBasis + s * n), 0, 8 * (alpha + s), n, 1);
    return;
  }
  let s = 0;
  for (; s + 4 <= nb; s += 4) {
    const w0 = f[alpha + s]; const w1 = f[alpha + s + 1]; const w2 = f[alpha + s + 2]; const w3 = f[alpha + s + 3];
    const b0 = oBasis + s * n; const b1 = b0 + n; const b2 = b1 + n; const b3 = b2 + n;
    for (let t = 0; t < n; t++) {
      f[y + t] = (((f[y + t] - w0 * f[b0 + t]) - w1 * f[b1 + t]) - w2 * f[b2 + t]) - w3 * f[b3 + t];
    }
  }
  for (; s < nb; s++) {
    const w = f[alpha + s]; const b = oBasis + s * n;
    for (let t = 0; t < n; t++) f[y + t] -= w * f[b + t];
  }
}

/** The scratch ``q`` loses its components along the first ``nb`` basis rows: ``q -= B^T (B q)``, each product
 * summed as the ``dots`` kernel does (four sums over ``t`` mod 4, the tail in the first, then
 * ``(a0 + a1) + (a2 + a3)``). */
function projectOut(ws, nb) {
  const { f, n, K, oBasis, oQ, oProj } = ws;
  if (nb === 0) return;
  if (K !== null) {
    K.dots(8 * oQ, 8 * oBasis, 8 * ws.oIds, 8 * oProj, n, nb);
  } else {
    const n4 = n - (n % 4);
    for (let s = 0; s < nb; s++) {
      const b = oBasis + s * n;
      let a0 = 0; let a1 = 0; let a2 = 0; let a3 = 0;
      for (let t = 0; t < n4; t += 4) {
        a0 += f[oQ + t] * f[b + t]; a1 += f[oQ + t + 1] * f[b + t + 1];
        a2 += f[oQ + t + 2] * f[b + t + 2]; a3 += f[oQ + t + 3] * f[b + t + 3];
      }
      for (let t = n4; t < n; t++) a0 += f[oQ + t] * f[b + t];
      f[oProj + s] = (a0 + a1) + (a2 + a3);
    }
  }
  subtractCombination(ws, oQ, oProj, nb);
}

/**
 * ``greedyKeep`` for one system (dense, overlapping convolution), as numpy's ``_greedy_keep_single``: the same
 * choices in O(k x kernel) per accepted row instead of O(k x n). A row's gain needs only ``||r_i||^2`` and
 * ``r_i . d``; after accepting ``q`` they drop by ``c_i^2`` and ``c_i (q . d)`` with ``c_i = a_i . q`` (a
 * convolution's row against ``q`` on its receptive field). The chosen row's residual is formed from the stored
 * coefficients; rows that come within 1 % of the span keep explicit residuals from then on, updated and
 * re-orthogonalized as in the reference.
 */
function greedySingle(system, indices, d, policy, a, k, n) {
  const total = dot(d, d);
  const budget = policy.maxRevealedEnergy === null ? null : policy.maxRevealedEnergy * total;
  const limit = 1 - policy.identifiableTol;
  const forbid = policy.forbidIdentifiable;
  const sparse = system.kind !== "dense";
  const pd = sparse ? system.patchDim : n;
  const rowCoords = new Int32Array(sparse ? k * pd : 0); const rowVals = new Float64Array(sparse ? k * pd : 0);
  if (sparse) {
    for (let i = 0; i < k; i++) {
      const ch = Math.floor(indices[i] / system.nPositions); const p = indices[i] % system.nPositions;
      for (let j = 0; j < pd; j++) { rowCoords[i * pd + j] = system.patchCoords[p * pd + j]; rowVals[i * pd + j] = system.kernelRows[ch * pd + j]; }
    }
  }
  const along = (q, i) => {  // a_i . q
    let c = 0;
    if (sparse) { const o = i * pd; for (let j = 0; j < pd; j++) c += rowVals[o + j] * q[rowCoords[o + j]]; } else { const o = i * n; for (let t = 0; t < n; t++) c += a[o + t] * q[t]; }
    return c;
  };
  const keep = new Uint8Array(k); const alive = new Uint8Array(k).fill(1); const explicit = new Uint8Array(k);
  const norm = new Float64Array(k); const rn2 = new Float64Array(k); const rd = new Float64Array(k);
  const depBelow = new Float64Array(k); const closeBelow = new Float64Array(k);
  for (let i = 0; i < k; i++) {
    let s = 0; let sd = 0;
    for (let t = 0; t < n; t++) { const v = a[i * n + t]; s += v * v; sd += v * d[t]; }
    norm[i] = Math.sqrt(s); rn2[i] = s; rd[i] = sd;
    depBelow[i] = (DEPENDENT_RTOL * norm[i]) ** 2; closeBelow[i] = EXPLICIT_BELOW * s;
  }
  const maxBasis = Math.min(k, n);
  const ws = greedyWorkspace(k, n, maxBasis);
  const { basis, coef, r, q } = ws;
  const res = new Float64Array(k * n);
  let nb = 0;
  let lev = new Float64Array(n);
  let energy = 0;
  const residual = (i) => {  // the stored coefficients' residual of row i (into res at i)
    const o = i * n;
    r.set(a.subarray(o, o + n));
    subtractCombination(ws, ws.oR, ws.oCoef + i * maxBasis, nb);
    res.set(r, o);
    let s2 = 0; let sd = 0;
    for (let t = 0; t < n; t++) { const v = res[o + t]; s2 += v * v; sd += v * d[t]; }
    rn2[i] = s2; rd[i] = sd;
  };
  for (;;) {
    let j = -1; let best = Infinity;
    for (let i = 0; i < k; i++) {
      if (!alive[i]) continue;
      const g = rn2[i] <= depBelow[i] ? 0 : (rd[i] * rd[i]) / rn2[i];
      if (g < best || j < 0) { best = g; j = i; }
    }
    if (j < 0 || !(best < Infinity)) break;
    alive[j] = 0; closeBelow[j] = -Infinity;
    if (explicit[j]) {
      r.set(res.subarray(j * n, (j + 1) * n));
    } else {
      r.set(a.subarray(j * n, (j + 1) * n));
      subtractCombination(ws, ws.oR, ws.oCoef + j * maxBasis, nb);
    }
    const rn = Math.sqrt(dot(r, r));
    if (rn <= DEPENDENT_RTOL * norm[j]) { keep[j] = 1; continue; }  // reveals nothing new
    for (let t = 0; t < n; t++) q[t] = r[t] / rn;
    if (explicit[j]) projectOut(ws, nb);  // re-orthogonalize against the accepted basis
    const qn = Math.sqrt(dot(q, q));
    if (qn < 0.5) { keep[j] = 1; continue; }  // lost to cancellation: numerically dependent
    let maxLev = 0;
    const newLev = new Float64Array(n);
    for (let t = 0; t < n; t++) { q[t] /= qn; newLev[t] = lev[t] + q[t] * q[t]; if (newLev[t] > maxLev) maxLev = newLev[t]; }
    const qd = dot(q, d);
    if (forbid && maxLev >= limit) continue;
    if (budget !== null && energy + qd * qd > budget) continue;
    keep[j] = 1;
    energy += qd * qd;
    lev = newLev;
    basis.set(q, nb * n);
    for (let i = 0; i < k; i++) {
      const c = along(q, i);
      coef[i * maxBasis + nb] = c;
      if (!alive[i]) continue;
      if (explicit[i]) {  // explicit residuals lose their component along q and are summed again
        const o = i * n;
        let cr = 0;
        for (let t = 0; t < n; t++) cr += res[o + t] * q[t];
        let s2 = 0; let sd = 0;
        for (let t = 0; t < n; t++) { const v = res[o + t] - cr * q[t]; res[o + t] = v; s2 += v * v; sd += v * d[t]; }
        rn2[i] = s2; rd[i] = sd;
      } else {
        rn2[i] -= c * c;
        rd[i] -= c * qd;
      }
    }
    nb++;
    for (let i = 0; i < k; i++) {
      if (rn2[i] < closeBelow[i]) { residual(i); explicit[i] = 1; closeBelow[i] = -Infinity; }
    }
  }
  return keep;
}

/** Forward selection of the least revealing rows (``_greedy_keep``): a keep flag per index. */
function greedyKeep(system, indices, d, policy) {
  if (system.kind === "dense" || !system.patchify) {  // one system: the incremental form
    const [b] = system.blocks(indices);
    return greedySingle(system, indices, d, policy, b.rows, indices.length, b.m);
  }
  const total = dot(d, d);
  const budget = policy.maxRevealedEnergy === null ? null : policy.maxRevealedEnergy * total;
  const keep = new Uint8Array(indices.length);
  const state = system.blocks(indices).map((b) => {
    const k = b.members.length;
    const norm = new Float64Array(k);
    for (let i = 0; i < k; i++) { let s = 0; for (let t = 0; t < b.m; t++) s += b.rows[i * b.m + t] ** 2; norm[i] = Math.sqrt(s); }
    return { members: b.members, res: Float64Array.from(b.rows), m: b.m, k, norm, basis: [], lev: new Float64Array(b.m), d: gather(d, b.coords), alive: new Uint8Array(k).fill(1) };
  });
  const gainOf = (st, i, rn2, rd) => (rn2 <= (DEPENDENT_RTOL * st.norm[i]) ** 2 ? 0 : (rd * rd) / rn2);
  const gains = (st) => {
    const g = new Float64Array(st.k);
    for (let i = 0; i < st.k; i++) {
      let rn2 = 0; let rd = 0;
      const ri = i * st.m;
      for (let t = 0; t < st.m; t++) { const v = st.res[ri + t]; rn2 += v * v; rd += v * st.d[t]; }
      g[i] = st.alive[i] ? gainOf(st, i, rn2, rd) : Infinity;
    }
    return g;
  };
  const cur = state.map(gains);
  const bMin = new Float64Array(cur.length); const bArg = new Int32Array(cur.length);  // each block's first smallest gain
  const refresh = (b) => {
    const g = cur[b];
    let i = 0;
    for (let j = 1; j < g.length; j++) if (g[j] < g[i]) i = j;
    bMin[b] = g.length ? g[i] : Infinity; bArg[b] = i;
  };
  for (let b = 0; b < cur.length; b++) refresh(b);
  let energy = 0;
  for (;;) {
    let bestB = -1; let bestI = -1; let bestG = Infinity;
    for (let b = 0; b < cur.length; b++) if (bMin[b] < bestG) { bestB = b; bestI = bArg[b]; bestG = bMin[b]; }
    if (bestB < 0) break;
    const st = state[bestB];
    st.alive[bestI] = 0;
    const r = st.res.subarray(bestI * st.m, (bestI + 1) * st.m);
    const rn = Math.sqrt(dot(r, r));
    if (rn <= DEPENDENT_RTOL * st.norm[bestI]) { keep[st.members[bestI]] = 1; cur[bestB][bestI] = Infinity; refresh(bestB); continue; }
    const q = new Float64Array(st.m);
    for (let t = 0; t < st.m; t++) q[t] = r[t] / rn;
    for (const qb of st.basis) { const c = dot(qb, q); for (let t = 0; t < st.m; t++) q[t] -= c * qb[t]; }
    const qn = Math.sqrt(dot(q, q));
    if (qn < 0.5) { keep[st.members[bestI]] = 1; cur[bestB][bestI] = Infinity; refresh(bestB); continue; }
    for (let t = 0; t < st.m; t++) q[t] /= qn;
    const lev = new Float64Array(st.m);
    let identifiable = false;
    for (let t = 0; t < st.m; t++) { lev[t] = st.lev[t] + q[t] * q[t]; if (lev[t] >= 1 - policy.identifiableTol) identifiable = true; }
    const gain = dot(q, st.d) ** 2;
    let ok = !(policy.forbidIdentifiable && identifiable);
    ok = ok && (budget === null || energy + gain <= budget);
    if (ok) {
      keep[st.members[bestI]] = 1;
      energy += gain;
      st.lev = lev;
      st.basis.push(q);
      // every undecided row's residual loses its component along q, and its gain is recomputed from it (the sums
      // in the order gains() takes them); decided rows are never read again, so they are left as they are
      const res = st.res; const m = st.m; const g = cur[bestB];
      for (let i = 0; i < st.k; i++) {
        if (!st.alive[i]) { g[i] = Infinity; continue; }
        const ri = i * m;
        let c = 0;
        for (let t = 0; t < m; t++) c += res[ri + t] * q[t];
        let rn2 = 0; let rd = 0;
        for (let t = 0; t < m; t++) { const v = res[ri + t] - c * q[t]; res[ri + t] = v; rn2 += v * v; rd += v * st.d[t]; }
        g[i] = gainOf(st, i, rn2, rd);
      }
    } else {
      cur[bestB][bestI] = Infinity;
    }
    refresh(bestB);
  }
  return keep;
}

// -- masks (daonet.device.masks) -------------------------------------------------------------------------------
const dropThreshold = (rate) => roundHalfEven(rate * 2 ** 32);

/** Fresh Bernoulli keep-masks from ``crypto.getRandomValues`` (``RandomMasks``). */
export class RandomMasks {
  async masks(x, nOutputs, dropRate) {
    const u = new Uint32Array(nOutputs);
    for (let i = 0; i < nOutputs; i += 16384) crypto_().getRandomValues(u.subarray(i, Math.min(nOutputs, i + 16384)));
    const thr = dropThreshold(dropRate);
    return Uint8Array.from(u, (v) => (v >= thr ? 1 : 0));
  }

  /**
   * Fresh standard Gaussian noise at ``where`` (``RandomMasks.noise``): Box-Muller on 53-bit uniforms from
   * ``crypto.getRandomValues``, new for every request (Float64Array, zero elsewhere).
   */
  async noise(x, where, nOutputs) {
    const out = new Float64Array(nOutputs);
    const idx = [];
    where.forEach((w, i) => { if (w) idx.push(i); });
    const u = new Uint32Array(4 * Math.ceil(idx.length / 2));
    for (let i = 0; i < u.length; i += 16384) crypto_().getRandomValues(u.subarray(i, Math.min(u.length, i + 16384)));
    const uniform = (j) => ((u[2 * j] >>> 5) * 67108864 + (u[2 * j + 1] >>> 6) + 1) / 9007199254740992;  // (0, 1]
    for (let t = 0; t < idx.length; t += 2) {
      const r = Math.sqrt(-2 * Math.log(uniform(t)));
      const a = 2 * Math.PI * uniform(t + 1);
      out[idx[t]] = r * Math.cos(a);
      if (t + 1 < idx.length) out[idx[t + 1]] = r * Math.sin(a);
    }
    return out;
  }

  /** Fresh exact discrete Gaussian noise (gaussian_ldp): the keyed derivation under a fresh random PRK. */
  async ldpNoise(x, where, nOutputs, dropRate, noiseSteps) {
    return ldpNoiseAt(where, nOutputs, crypto_().getRandomValues(new Uint8Array(32)), noiseSteps);
  }
}

/**
 * One HMAC byte stream per output (``_OutputStream`` in daonet.device.masks): block j of output i is
 * HMAC(NPRK, u32(i) || u32(j)), NPRK = HMAC(prk, "daonet-ldp-noise-v1"); a draw in [0, d) takes ceil(L/8) bytes
 * (L = bit length of d - 1), little-endian, keeps the low L bits and retries while >= d.
 */
class LdpStream {
  constructor(states, i) { this.states = states; this.i = i; this.block = 0; this.buf = new Uint8Array(0); this.pos = 0; }

  take(n) {
    while (this.buf.length - this.pos < n) {
      const [inner, outer] = this.states;
      const b = sha256Finish(outer, sha256Finish(inner, u32le(this.i, this.block++)));
      this.buf = concatBytes(this.buf.subarray(this.pos), b);
      this.pos = 0;
    }
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  uniform(d) {
    if (d === 1) return 0;
    let bits = 0;
    for (let v = d - 1; v >= 1; v = Math.floor(v / 2)) bits++;
    const nbytes = Math.ceil(bits / 8);
    const top = (1 << (bits - 8 * (nbytes - 1))) - 1;
    for (;;) {
      const b = this.take(nbytes);
      let r = b[nbytes - 1] & top;
      for (let k = nbytes - 2; k >= 0; k--) r = r * 256 + b[k];
      if (r < d) return r;
    }
  }
}

// The exact discrete Gaussian (Canonne, Kamath, Steinke 2020), one coordinate at a time; the numpy runtime runs
// the same steps in lockstep over coordinates. Every integer stays below 2^53 for noise_steps <= 256.
function bernExpLe1(rs, num, den) {  // Bernoulli(exp(-num/den)), num <= den
  let k = 1;
  while (rs.uniform(den * k) < num) k++;
  return k % 2 === 1;
}
function bernExp(rs, num, den) {  // Bernoulli(exp(-num/den)), num >= 0
  while (num > den) {
    if (!bernExpLe1(rs, 1, 1)) return false;
    num -= den;
  }
  return bernExpLe1(rs, num, den);
}
function discreteLaplace(rs, t) {
  for (;;) {
    const u = rs.uniform(t);
    if (!bernExp(rs, u, t)) continue;
    let v = 0;
    while (bernExp(rs, 1, 1)) v++;
    const x = u + t * v;
    const sign = rs.uniform(2);
    if (sign === 1 && x === 0) continue;
    return sign === 1 ? -x : x;
  }
}
function discreteGaussian(rs, s) {
  const t = s + 1;
  for (;;) {
    const y = discreteLaplace(rs, t);
    const a = Math.abs(y);
    if (a > LDP_Y_CAP * t) continue;
    if (bernExp(rs, (a * t - s * s) ** 2, 2 * s * s * t * t)) return y;
  }
}

/** Replay-safe exact N_Z(0, noiseSteps^2) for outputs ``indices`` from a mask PRK (``index_discrete_gaussian``). */
export function indexDiscreteGaussian(prk, indices, noiseSteps) {
  const states = hmacStates(hmacSha256(prk, new TextEncoder().encode(LDP_NOISE_CONTEXT)));
  return Float64Array.from(indices, (i) => discreteGaussian(new LdpStream(states, i), noiseSteps));
}

/** ``(nOutputs,)`` integer noise (as float64), zero where ``where`` is 0. */
function ldpNoiseAt(where, nOutputs, prk, noiseSteps) {
  const idx = [];
  where.forEach((w, i) => { if (w) idx.push(i); });
  const out = new Float64Array(nOutputs);
  indexDiscreteGaussian(prk, idx, noiseSteps).forEach((e, t) => { out[idx[t]] = e; });
  return out;
}

/**
 * The Gaussian mechanism's release (``ldp_release``): kept values on the grid (rint, clamped to [0, B]), the row
 * scaled down to L2 norm <= B by ``floor(q B / R)``, ``R = ceil(sqrt(sum q^2))`` (exact integers), then
 * ``(r + Y) * grid`` as float32 (exact: the grid is a power of two).
 */
function ldpRelease(h, keep, noise, spec) {
  const { grid, clipSteps: B } = spec;
  const n = h.length;
  const q = new Float64Array(n);
  let n2 = 0;
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(h[i])) throw new PayloadError("activations contain NaN/inf; check the input and the first layer's weights");
    if (!keep[i]) continue;
    const v = h[i] / grid;
    q[i] = v > B ? B : Math.max(roundHalfEven(v), 0);
    n2 += q[i] * q[i];
  }
  if (n2 > B * B) {
    let root = Math.floor(Math.sqrt(n2));
    while (root * root > n2) root--;
    while ((root + 1) * (root + 1) <= n2) root++;
    if (root * root < n2) root++;
    for (let i = 0; i < n; i++) {
      const a = q[i] * B;
      let c = Math.floor(a / root);
      if (c * root > a) c--; else if ((c + 1) * root <= a) c++;
      q[i] = c;
    }
  }
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) if (keep[i]) out[i] = (q[i] + noise[i]) * grid;
  return out;
}

/**
 * Standard noise for outputs ``indices`` from a mask PRK (``index_noise``, docs/masks.md): replay-safe and
 * bit-identical to Python. ``b_i = HMAC(HMAC(prk, "daonet-noise-v1"), uint32_le(i))``,
 * ``e_i = sum_{j<12} (u_j + 0.5) / 65536 - 6`` with ``u_j`` the first twelve little-endian uint16 of ``b_i``
 * (Irwin-Hall: mean 0, variance 1, within +-6). Every term is a multiple of 2^-17 below 12, so every sum is
 * exact in float64 whatever the order. Returns a Float64Array aligned with ``indices``.
 */
export function indexNoise(prk, indices) {
  const nprk = hmacSha256(prk, new TextEncoder().encode(NOISE_CONTEXT));
  const [inner, outer] = hmacStates(nprk);
  const ctr = new Uint8Array(4);
  return Float64Array.from(indices, (i) => {
    ctr[0] = i & 0xff; ctr[1] = (i >>> 8) & 0xff; ctr[2] = (i >>> 16) & 0xff; ctr[3] = i >>> 24;
    const b = sha256Finish(outer, sha256Finish(inner, ctr));
    let e = 0;
    for (let j = 0; j < 12; j++) e += (b[2 * j] + 256 * b[2 * j + 1] + 0.5) / 65536;
    return e - 6;
  });
}

/** ``(nOutputs,)`` noise, zero where ``where`` is 0, output ``i`` from ``indexNoise(prkOf(i), [i])``. */
function noiseAt(where, nOutputs, prkOf) {
  const out = new Float64Array(nOutputs);
  const byPrk = new Map();
  where.forEach((w, i) => {
    if (!w) return;
    const prk = prkOf(i);
    if (!byPrk.has(prk)) byPrk.set(prk, []);
    byPrk.get(prk).push(i);
  });
  for (const [prk, idx] of byPrk) indexNoise(prk, idx).forEach((e, t) => { out[idx[t]] = e; });
  return out;
}

/**
 * Replay-safe masks (``KeyedMasks``): keep_i = U_i >= p, U the HMAC-SHA256 counter-mode stream of
 * HMAC(key, context | model version | n_outputs | p | shape | quantized input). Same bytes as Python.
 */
export class KeyedMasks {
  constructor(key, modelVersion = "", quantum = 1 / 255) {
    const k = key instanceof Uint8Array ? key : new Uint8Array(key || []);
    if (k.length < 16) throw new InputError("the mask key must be at least 16 bytes");
    if (!(quantum > 0 && Number.isFinite(quantum))) throw new InputError(`quantum must be a positive number, got ${quantum}`);
    this._raw = Uint8Array.from(k);  // HMAC by hand (synchronous); the key never leaves this object
    this.modelVersion = String(modelVersion);
    this.quantum = quantum;
  }

  /** The device key kept in ``storage`` (e.g. ``localStorage``) as hex, created once; it is never sent. */
  static async fromStorage(storage, modelVersion = "", name = "daonet-device-key") {
    let text = storage.getItem(name);
    if (text === null) {
      const key = crypto_().getRandomValues(new Uint8Array(KEY_BYTES));
      text = hex(key);
      storage.setItem(name, text);
    }
    if (!/^[0-9a-f]{64}$/i.test(text.trim())) {
      throw new InputError(`the device key in storage '${name}' is not ${KEY_BYTES} hex-encoded bytes; remove it to create a new one`);
    }
    return new KeyedMasks(Uint8Array.from(text.trim().match(/../g), (h) => parseInt(h, 16)), modelVersion);
  }

  toString() { return `KeyedMasks(model_version='${this.modelVersion}', key=<hidden>)`; }

  /** The hashed bytes of one input: little-endian int32 grid values. */
  quantize(x) {
    const q = new Int32Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const v = roundHalfEven(x[i] / this.quantum);
      if (Math.abs(v) >= 2 ** 31) throw new InputError(`input values are too large for quantum ${pyFormatG(this.quantum, 6)}; use a larger quantum`);
      q[i] = v;
    }
    return q;
  }

  async seed(x, shape, nOutputs, dropRate) {
    const q = this.quantize(x);
    const enc = new TextEncoder();
    const header = enc.encode([MASK_CONTEXT, this.modelVersion, String(nOutputs), pyFloatRepr(dropRate), shape.join(",")].join("\0") + "\0");
    const msg = new Uint8Array(header.length + 4 * q.length);
    msg.set(header);
    const dv = new DataView(msg.buffer, header.length);
    for (let i = 0; i < q.length; i++) dv.setInt32(4 * i, q[i], true);
    return hmacSha256(this._raw, msg);
  }

  /** ``nOutputs`` uniform uint32 values: block i = HMAC(prk, uint32_le(i)) (``KeyedMasks.stream``). */
  static async stream(prk, nOutputs) {
    const raw = hmacStream(prk, 4 * nOutputs);
    const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const out = new Uint32Array(nOutputs);
    for (let i = 0; i < nOutputs; i++) out[i] = dv.getUint32(4 * i, true);
    return out;
  }

  async masks(x, nOutputs, dropRate, shape = [x.length]) {
    if (!(dropRate >= 0 && dropRate < 1)) throw new InputError(`drop rate must be in [0, 1), got ${dropRate}`);
    const thr = dropThreshold(dropRate);
    const u = await KeyedMasks.stream(await this.seed(x, shape, nOutputs, dropRate), nOutputs);
    const keep = new Uint8Array(nOutputs);
    for (let i = 0; i < nOutputs; i++) keep[i] = u[i] >= thr ? 1 : 0;
    return keep;
  }

  /** Replay-safe noise (``KeyedMasks.noise``): output ``i`` gets ``indexNoise(seed, i)``, the seed being the mask's PRK. */
  async noise(x, where, nOutputs, dropRate, shape = [x.length]) {
    const prk = await this.seed(x, shape, nOutputs, dropRate);
    return noiseAt(where, nOutputs, () => prk);
  }

  /** Replay-safe discrete Gaussian noise (``KeyedMasks.ldp_noise``): output ``i`` from ``indexDiscreteGaussian(seed, i)``. */
  async ldpNoise(x, where, nOutputs, dropRate, noiseSteps, shape = [x.length]) {
    return ldpNoiseAt(where, nOutputs, await this.seed(x, shape, nOutputs, dropRate), noiseSteps);
  }
}

// SHA-256 and HMAC-SHA256 by hand, synchronous: one request needs a keyed seed and up to hundreds of tiny
// counter-mode HMACs, and an async WebCrypto call each costs far more than the hashing. Checked bit for bit
// against Python's hmac/hashlib by every keyed-mask parity test.
const K256 = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
  0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
  0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
  0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
  0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
  0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
  0xc67178f2]);
const H256 = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
const W64 = new Int32Array(64);

/** One SHA-256 compression of the 64 bytes of ``bytes`` at ``off`` into ``h`` (8 words, in place). */
function sha256Block(h, bytes, off = 0) {
  const w = W64;
  for (let i = 0; i < 16; i++) {
    const j = off + 4 * i;
    w[i] = (bytes[j] << 24) | (bytes[j + 1] << 16) | (bytes[j + 2] << 8) | bytes[j + 3];
  }
  for (let i = 16; i < 64; i++) {
    const a = w[i - 15]; const b = w[i - 2];
    const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
    const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
    w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
  }
  let a = h[0]; let b = h[1]; let c = h[2]; let d = h[3]; let e = h[4]; let f = h[5]; let g = h[6]; let hh = h[7];
  for (let i = 0; i < 64; i++) {
    const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const t1 = (hh + S1 + ((e & f) ^ (~e & g)) + K256[i] + w[i]) | 0;
    const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
    hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
  }
  h[0] = (h[0] + a) | 0; h[1] = (h[1] + b) | 0; h[2] = (h[2] + c) | 0; h[3] = (h[3] + d) | 0;
  h[4] = (h[4] + e) | 0; h[5] = (h[5] + f) | 0; h[6] = (h[6] + g) | 0; h[7] = (h[7] + hh) | 0;
}

const TAIL = new Uint8Array(128);

/**
 * SHA-256 of ``msg`` after ``prefixBlocks`` 64-byte blocks already absorbed into ``state`` (copied, not
 * changed); the digest goes to ``out`` at ``outOff`` (a new 32-byte array by default).
 */
const SHA_STATE = new Int32Array(8);  // the running state of sha256From (synchronous, never re-entered)

function sha256From(state, msg, prefixBlocks = 0, out = new Uint8Array(32), outOff = 0) {
  const h = SHA_STATE;
  h.set(state);
  const full = msg.length - (msg.length % 64);
  for (let off = 0; off < full; off += 64) sha256Block(h, msg, off);
  const rest = msg.length - full;
  const tail = TAIL;
  tail.fill(0);
  for (let i = 0; i < rest; i++) tail[i] = msg[full + i];
  tail[rest] = 0x80;
  const end = rest < 56 ? 64 : 128;
  const bits = (prefixBlocks * 64 + msg.length) * 8;  // < 2^53: the high word from a division
  const hi = Math.floor(bits / 4294967296);
  tail[end - 8] = hi >>> 24; tail[end - 7] = (hi >>> 16) & 0xff; tail[end - 6] = (hi >>> 8) & 0xff; tail[end - 5] = hi & 0xff;
  tail[end - 4] = (bits >>> 24) & 0xff; tail[end - 3] = (bits >>> 16) & 0xff; tail[end - 2] = (bits >>> 8) & 0xff; tail[end - 1] = bits & 0xff;
  sha256Block(h, tail, 0);
  if (end === 128) sha256Block(h, tail, 64);
  for (let i = 0; i < 8; i++) {
    const o = outOff + 4 * i;
    out[o] = h[i] >>> 24; out[o + 1] = (h[i] >>> 16) & 0xff; out[o + 2] = (h[i] >>> 8) & 0xff; out[o + 3] = h[i] & 0xff;
  }
  return out;
}

/** SHA-256 of ``tail`` after a 64-byte prefix already absorbed into ``state``. */
const sha256Finish = (state, tail) => sha256From(state, tail, 1);

/** The SHA-256 states after HMAC's inner and outer key blocks (a key over 64 bytes is hashed first, as HMAC says). */
function hmacStates(key) {
  const k = key.length > 64 ? sha256From(H256, key) : key;
  const pad = (byte) => { const p = new Uint8Array(64).fill(byte); k.forEach((v, i) => { p[i] ^= v; }); return p; };
  const inner = Int32Array.from(H256); sha256Block(inner, pad(0x36));
  const outer = Int32Array.from(H256); sha256Block(outer, pad(0x5c));
  return [inner, outer];
}

/** HMAC-SHA256(key, msg), synchronously. */
function hmacSha256(key, msg) {
  const [inner, outer] = hmacStates(key);
  return sha256Finish(outer, sha256Finish(inner, msg));
}

/** ``n`` bytes of HMAC-SHA256 counter mode under a 32-byte ``prk``: block i = HMAC(prk, uint32_le(i)). */
function hmacStream(prk, n) {
  const [inner, outer] = hmacStates(prk);
  const blocks = Math.ceil(n / 32);
  const raw = new Uint8Array(blocks * 32);
  const ctr = new Uint8Array(4);
  const mid = new Uint8Array(32);
  for (let i = 0; i < blocks; i++) {
    ctr[0] = i & 0xff; ctr[1] = (i >>> 8) & 0xff; ctr[2] = (i >>> 16) & 0xff; ctr[3] = i >>> 24;
    sha256From(inner, ctr, 1, mid, 0);
    sha256From(outer, mid, 1, raw, 32 * i);
  }
  return raw.subarray(0, n);
}

const concatBytes = (...parts) => {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
};
const u32le = (...vs) => { const b = new Uint8Array(4 * vs.length); const dv = new DataView(b.buffer); vs.forEach((v, i) => dv.setUint32(4 * i, v, true)); return b; };
const f64le = (v) => { const b = new Uint8Array(8); new DataView(b.buffer).setFloat64(0, v, true); return b; };
const MAX_EXACT = 2 ** 53;

/**
 * Near-duplicate-safe masks (``SimilarityKeyedMasks``): the mask is keyed on a coarse, key-derived
 * locality-sensitive hash of the quantized input, so sensor-noise re-captures get the same mask. Integer
 * arithmetic + HMAC-SHA256 only: the same bits as the Python class for the same key and settings.
 */
export class SimilarityKeyedMasks {
  constructor(key, modelVersion = "", { quantum = 1 / 255, width = 0.25, groups = 32, dims = 1 } = {}) {
    const k = key instanceof Uint8Array ? key : new Uint8Array(key || []);
    if (k.length < 16) throw new InputError("the mask key must be at least 16 bytes");
    if (!(quantum > 0 && Number.isFinite(quantum))) throw new InputError(`quantum must be a positive number, got ${quantum}`);
    if (!(width > 0 && Number.isFinite(width))) throw new InputError(`width must be a positive number (input units along a unit direction), got ${width}`);
    if (!Number.isInteger(groups) || groups < 1 || groups > 4096) throw new InputError(`groups must be an integer in [1, 4096], got ${groups}`);
    if (!Number.isInteger(dims) || dims < 1 || dims > 16) throw new InputError(`dims must be an integer in [1, 16], got ${dims}`);
    if (/[^\x00-\x7f]/.test(String(modelVersion))) throw new InputError(`model_version must be ASCII, got '${modelVersion}'`);
    this._raw = Uint8Array.from(k);
    this.modelVersion = String(modelVersion);
    Object.assign(this, { quantum, width, groups, dims });
    this._params = new Map();
  }

  static async fromStorage(storage, modelVersion = "", options = {}, name = "daonet-device-key") {
    const keyed = await KeyedMasks.fromStorage(storage, modelVersion, name);
    return new SimilarityKeyedMasks(keyed._raw, modelVersion, options);
  }

  toString() { return `SimilarityKeyedMasks(model_version='${this.modelVersion}', key=<hidden>)`; }

  cellWidth(n) {
    const w = roundHalfEven(this.width * Math.sqrt(n) / this.quantum);
    if (w >= 2 ** 32) throw new InputError(`width ${pyFormatG(this.width, 6)} is too large for quantum ${pyFormatG(this.quantum, 6)}; use a smaller width`);
    return Math.max(1, w);
  }

  _geometry(n) { return concatBytes(u32le(n, this.groups, this.dims, this.cellWidth(n)), f64le(this.quantum)); }

  async _sign(msg) { return hmacSha256(this._raw, msg); }

  /** Key-derived +-1 projections (rows x n), offsets in [0, W), W (``hash_params``). */
  async hashParams(n) {
    if (this._params.has(n)) return this._params.get(n);
    const rows = this.groups * this.dims;
    const width = this.cellWidth(n);
    const geometry = this._geometry(n);
    const enc = new TextEncoder();
    let prk = await this._sign(concatBytes(enc.encode("daonet-simhash-projection-v1\0"), geometry));
    const bytes = hmacStream(prk, Math.ceil(rows * n / 8));
    const signs = new Int8Array(rows * n);
    for (let i = 0; i < rows * n; i++) signs[i] = ((bytes[i >> 3] >> (i & 7)) & 1) ? 1 : -1;
    prk = await this._sign(concatBytes(enc.encode("daonet-simhash-offset-v1\0"), geometry));
    const ob = hmacStream(prk, 4 * rows);
    const odv = new DataView(ob.buffer, ob.byteOffset, ob.byteLength);
    const offsets = Array.from({ length: rows }, (_, r) => odv.getUint32(4 * r, true) % width);
    const params = { signs, offsets, width };
    this._params.set(n, params);
    return params;
  }

  quantize(x) {
    if (!x.length) throw new InputError("input is empty");
    const q = Float64Array.from(x, (v) => roundHalfEven(v / this.quantum));
    let m = 0;
    for (const v of q) m = Math.max(m, Math.abs(v));
    if (!Number.isFinite(m) || m * q.length >= MAX_EXACT) throw new InputError(`input values are too large for quantum ${pyFormatG(this.quantum, 6)} (the projection must stay below 2**53); use a larger quantum`);
    return q;
  }

  /** Cell numbers (groups x dims): floor((s_r . q + o_r) / W), exact integers. */
  async cells(x) {
    const q = this.quantize(x);
    const n = q.length;
    const { signs, offsets, width } = await this.hashParams(n);
    return offsets.map((o, r) => {
      let a = o;
      for (let j = 0; j < n; j++) a += signs[r * n + j] * q[j];
      let c = Math.floor(a / width);
      while (c * width > a) c -= 1;
      while ((c + 1) * width <= a) c += 1;
      return c;
    });
  }

  /** The per-group PRKs of one input (``group_seed`` for every group g): HMAC(key, context | version | geometry | n_outputs | p | g | cells). */
  async groupSeeds(x, nOutputs, dropRate) {
    const cells = await this.cells(x);
    const version = new TextEncoder().encode(this.modelVersion);
    const head = concatBytes(new TextEncoder().encode("daonet-simhash-mask-v1\0"), u32le(version.length), version,
      this._geometry(x.length), u32le(nOutputs), f64le(dropRate));
    return Promise.all(Array.from({ length: this.groups }, (_, g) => {
      const cb = new Uint8Array(8 * this.dims);
      const cdv = new DataView(cb.buffer);
      for (let d = 0; d < this.dims; d++) cdv.setBigInt64(8 * d, BigInt(cells[g * this.dims + d]), true);
      return this._sign(concatBytes(head, u32le(g), cb));
    }));
  }

  async masks(x, nOutputs, dropRate) {
    if (!(dropRate >= 0 && dropRate < 1)) throw new InputError(`drop rate must be in [0, 1), got ${dropRate}`);
    const thr = dropThreshold(dropRate);
    const prks = await this.groupSeeds(x, nOutputs, dropRate);
    const perGroup = Math.ceil(nOutputs / this.groups);
    const out = new Uint8Array(nOutputs);
    prks.forEach((prk, g) => {
      const u = hmacStream(prk, 4 * perGroup);
      const dv = new DataView(u.buffer, u.byteOffset, u.byteLength);
      for (let j = 0; j < perGroup; j++) {
        const i = j * this.groups + g;
        if (i < nOutputs) out[i] = dv.getUint32(4 * j, true) >= thr ? 1 : 0;
      }
    });
    return out;
  }

  /** Noise that follows the mask (``SimilarityKeyedMasks.noise``): output ``i`` gets ``indexNoise(groupSeed(i mod groups), i)``. */
  async noise(x, where, nOutputs, dropRate) {
    const prks = await this.groupSeeds(x, nOutputs, dropRate);
    return noiseAt(where, nOutputs, (i) => prks[i % this.groups]);
  }

  /** Refused (``SimilarityKeyedMasks.ldp_noise``): near-duplicates would share noise, so their difference is noiseless. */
  async ldpNoise() { throw new InputError(LDP_SIMILARITY_REFUSAL); }
}

// -- the wire format v1 (daonet.wire) ---------------------------------------------------------------------------
/** Sparse-encode one dropped activation vector (``daonet.wire.encode``). */
export function encodeWire(activations, modelVersion, valueDtype = "float32", wireVersion = WIRE_VERSION) {
  if (valueDtype !== "float32" && valueDtype !== "float16") throw new PayloadError(`value dtype '${valueDtype}' is not supported; use 'float32' or 'float16'`);
  if (wireVersion !== WIRE_VERSION && wireVersion !== SIGNED_WIRE_VERSION) throw new PayloadError(`wire format version ${wireVersion} is not supported; use 1 or 2`);
  if (wireVersion === SIGNED_WIRE_VERSION && valueDtype !== "float32") throw new PayloadError("wire format version 2 (signed values) carries float32 values only");
  const idx = [];
  const vals = [];
  for (let i = 0; i < activations.length; i++) {
    const v = activations[i];
    if (!Number.isFinite(v)) throw new PayloadError("activations contain NaN/inf; check the input and the first layer's weights");
    if (v < 0 && wireVersion === WIRE_VERSION) throw new PayloadError("activations are negative; the payload carries ReLU outputs, which are >= 0");
    if (v === 0) continue;
    if (valueDtype === "float16") {
      const h = f32ToF16Bits(v);
      if (h === 0) continue;
      vals.push(h);
    } else {
      vals.push(v);
    }
    idx.push(i);
  }
  const version = new TextEncoder().encode(modelVersion);
  if (version.length > 255 || /[^\x00-\x7f]/.test(modelVersion)) throw new PayloadError("model version must be ASCII and at most 255 characters");
  const n = activations.length;
  const ib = n <= 0xffff ? 2 : 4;
  const vb = valueDtype === "float16" ? 2 : 4;
  const nnz = idx.length;
  const out = new Uint8Array(16 + version.length + nnz * (ib + vb));
  const dv = new DataView(out.buffer);
  out.set([0x44, 0x41, 0x4f, 0x31, wireVersion, ib, vb, version.length]);
  dv.setUint32(8, n, true);
  dv.setUint32(12, nnz, true);
  out.set(version, 16);
  let at = 16 + version.length;
  for (const i of idx) { if (ib === 2) dv.setUint16(at, i, true); else dv.setUint32(at, i, true); at += ib; }
  for (const v of vals) { if (vb === 2) dv.setUint16(at, v, true); else dv.setFloat32(at, v, true); at += vb; }
  return out;
}

/** The header of a payload (``daonet.wire.read_frame``), for display and tests. */
export function readFrame(data) {
  if (data.length < 16) throw new PayloadError(`payload is truncated: ${data.length} bytes, the header alone is 16`);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const magic = String.fromCharCode(...data.subarray(0, 4));
  if (magic !== "DAO1") throw new PayloadError("payload does not start with the magic bytes DAO1");
  const [ver, ib, vb, vlen] = [data[4], data[5], data[6], data[7]];
  if (![WIRE_VERSION, SIGNED_WIRE_VERSION].includes(ver) || ![2, 4].includes(ib) || ![2, 4].includes(vb)) throw new PayloadError("payload header is invalid");
  const nOutputs = dv.getUint32(8, true);
  const nnz = dv.getUint32(12, true);
  if (data.length !== 16 + vlen + nnz * (ib + vb)) throw new PayloadError("payload length does not match its header");
  return { modelVersion: new TextDecoder().decode(data.subarray(16, 16 + vlen)), indexWidth: ib, valueWidth: vb, nOutputs, nnz, offset: 16 + vlen, wireVersion: ver };
}

// -- the device model (daonet.device.runtime.DeviceModel) -------------------------------------------------------
const DTYPES = [
  [Uint8Array, "uint8"], [Uint8ClampedArray, "uint8"], [Int8Array, "int8"], [Int16Array, "int16"], [Uint16Array, "uint16"],
  [Int32Array, "int32"], [Uint32Array, "uint32"], [Float32Array, "float32"], [Float64Array, "float64"],
];

function typedDtype(a) {
  for (const [T, name] of DTYPES) if (a instanceof T) return name;
  return null;
}

/** ``{data, shape, dtype}`` of an input: a typed array (flat), nested arrays of numbers, or {data, shape}. */
function asArray(x) {
  if (x && typeof x === "object" && !Array.isArray(x) && !ArrayBuffer.isView(x) && "data" in x) {
    const inner = asArray(x.data);
    const shape = (x.shape || inner.shape).map(Number);
    if (prod(shape) !== inner.data.length) throw new InputError(`input cannot be read as an array: ${inner.data.length} values do not fill shape ${pyTuple(shape)}`);
    return { data: inner.data, shape, dtype: inner.dtype };
  }
  if (ArrayBuffer.isView(x)) {
    const dtype = typedDtype(x);
    if (!dtype) throw new InputError(`input has dtype ${x.constructor.name}; pass real numbers (float32, or uint8 pixels)`);
    return { data: x, shape: [x.length], dtype };
  }
  if (!Array.isArray(x)) {
    if (typeof x === "number") return { data: [x], shape: [], dtype: "float64" };
    throw new InputError(`input has dtype ${typeof x}; pass real numbers (float32, or uint8 pixels)`);
  }
  const shape = [];
  for (let a = x; Array.isArray(a); a = a[0]) shape.push(a.length);
  const flat = [];
  const walk = (a, depth) => {
    if (depth === shape.length) {
      if (Array.isArray(a)) throw new InputError("input cannot be read as an array: its nested lists are ragged");
      flat.push(a);
      return;
    }
    if (!Array.isArray(a) || a.length !== shape[depth]) throw new InputError("input cannot be read as an array: its nested lists are ragged");
    for (const v of a) walk(v, depth + 1);
  };
  walk(x, 0);
  for (const v of flat) {
    if (typeof v !== "number") throw new InputError(`input has dtype ${typeof v === "string" ? "<U" : typeof v}; pass real numbers (float32, or uint8 pixels)`);
  }
  return { data: flat, shape, dtype: "float64" };
}

const sameShape = (a, b) => a && b && a.length === b.length && a.every((v, i) => v === b[i]);

export class DeviceModel {
  constructor(manifest, tensors) {
    const { steps, noise } = checkManifest(manifest);
    this.manifest = manifest;
    const layer = manifest.layer;
    this.kind = layer.kind;
    this.inputShape = manifest.input.shape.map(Number);
    this.outputShape = layer.output_shape.map(Number);  // what is dropped and sent (the block's output)
    this.nOutputs = Number(layer.n_outputs);
    this.firstOutputShape = (steps.length ? layer.first_output_shape : layer.output_shape).map(Number);
    this.block = steps;  // the localized block after the first layer (``layer.block``), [] for the paper's form
    this.noise = noise && noise.kind === "gaussian" ? noise : null;  // {std, floor, relativeStd} (``manifest.noise``) or null
    this.ldp = noise && noise.kind === "gaussian_ldp" ? noise : null;  // the Gaussian mechanism: {clip, std, grid, clipSteps, noiseSteps, epsilon, delta, ...}
    this.wireVersion = this.ldp ? SIGNED_WIRE_VERSION : WIRE_VERSION;
    this.outChannels = this.firstOutputShape[0];
    this.kernel = (layer.kernel || []).map(Number);
    this.stride = (layer.stride || []).map(Number);
    this.dropRate = Number(manifest.drop.rate);
    this.valueDtype = (manifest.wire || {}).value_dtype || "float32";
    this.rawDtype = manifest.input.raw_dtype || "float32";
    this.valueRange = manifest.input.range || null;
    this.quantize = layer.quantize || null;
    const c = this.inputShape[0];
    const norm = manifest.normalization || {};
    const nNorm = norm.per === "feature" ? prod(this.inputShape) : c;  // one value per channel, or per input value
    this.normStride = prod(this.inputShape) / nNorm;  // input values each mean/std covers
    this.mean = Float32Array.from(norm.mean || new Array(nNorm).fill(0));
    this.std = Float32Array.from(norm.std || new Array(nNorm).fill(1));
    if (this.mean.length !== nNorm || this.std.length !== nNorm) throw new BundleError(`normalization has ${this.mean.length} means for ${nNorm} ${norm.per === "feature" ? "input values" : "channels"}; re-export the bundle`);
    this.weight = tensors.weight.data;
    this.bias = tensors.bias.data;
    const expected = this.kind === "dense" ? [this.outChannels, prod(this.inputShape)] : [this.outChannels, c, ...this.kernel];
    if (!sameShape(tensors.weight.shape, expected) || !sameShape(tensors.bias.shape, [this.outChannels])) {
      throw new BundleError(`first-layer weight has shape ${pyTuple(tensors.weight.shape)}, manifest implies ${pyTuple(expected)}; the bundle is inconsistent, re-export it`);
    }
    this._blockTensors = checkBlockTensors(steps, tensors);
    const mu = tensors.public_mean;
    const n = prod(this.inputShape);
    this.publicMean = mu && mu.data.length === n ? Float64Array.from(mu.data) : Float64Array.from({ length: n }, (_, j) => this.mean[Math.floor(j / this.normStride)]);
    this.policy = PrivacyPolicy.fromManifest(manifest.privacy);
    this._system = null;
  }

  get modelId() { return this.manifest.model_id; }
  get version() { return this.manifest.version; }
  get classes() { return [...(this.manifest.classes || [])]; }
  /** Bytes of one raw input as the device holds it (uint8 pixels, float32 samples). */
  get rawInputBytes() { return prod(this.inputShape) * (this.rawDtype === "uint8" ? 1 : 4); }
  /** True for the paper's single linear layer + ReLU (the algebraic certificate applies); false for a block. */
  get isLinear() { return this.block.length === 0; }

  /** The first layer's equations (``DeviceModel.system``); a block has none that describe what is sent. */
  get system() {
    if (!this.isLinear) throw new BundleError(`${BLOCK_NOTE_REFUSAL}; check DeviceModel.isLinear first`);
    return this._system || (this._system = new FirstLayerSystem(this));
  }

  /** The device computation in words (``describe_block``), e.g. "dense 784->800 + ReLU, dense 800->800 + ReLU". */
  describeBlock() {
    const [o, i] = [this.outChannels, this.kind === "dense" ? prod(this.inputShape) : this.inputShape[0]];
    const first = this.kind === "dense" ? `dense ${i}->${o} + ReLU`
      : `${this.kind} ${i}->${o} kernel ${pyList(this.kernel)} stride ${pyList(this.stride)} + ReLU`;
    return [first, ...this.block.map(describeStep)].join(", ");
  }

  /** ``BlockCertificate.to_dict()`` (plus the policy fields every certificate has): only what is sent. */
  _blockCertificate(sent) {
    let k = 0;
    for (const v of sent) if (v !== 0) k++;
    return { k, n: prod(this.inputShape), n_outputs: this.nOutputs, applies: false, note: BLOCK_NOTE, block: this.describeBlock(),
      k_before_policy: k, dropped_by_policy: 0, policy_ok: true, policy: null };
  }

  _markNoise(cert) { return this.noise ? { ...cert, exact: false, note: NOISE_NOTE } : cert; }

  /** ``LdpCertificate.to_dict()`` (plus the policy fields every certificate has): the request's (epsilon, delta). */
  _ldpCertificate(sent) {
    let k = 0;
    for (const v of sent) if (v !== 0) k++;
    const { epsilon, delta, clip, std } = this.ldp;
    return { k, n: prod(this.inputShape), n_outputs: this.nOutputs, applies: false, note: LDP_NOTE, epsilon, delta, clip, std,
      exact: false, k_before_policy: k, dropped_by_policy: 0, policy_ok: true, policy: null };
  }

  /** Check and batch an input (``DeviceModel.validate``): ``{n, data: Float32Array(n * size)}``. */
  validate(x) {
    const arr = asArray(x);
    const shape = this.inputShape;
    const size = prod(shape);
    const squeezed = shape[0] === 1 ? shape.slice(1) : null;
    const fits = (s) => sameShape(s, shape) || sameShape(s, [size]) || sameShape(s, squeezed);
    let n;
    if (fits(arr.shape)) n = 1;
    else if (arr.shape.length >= 1 && fits(arr.shape.slice(1))) n = arr.shape[0];
    else throw new InputError(`input has shape ${pyTuple(arr.shape)}; this model takes ${pyTuple(shape)} (or a batch (N, ${shape.join(", ")}), or ${size} flat values)`);
    if (n === 0) throw new InputError("input batch is empty");
    const data = new Float32Array(n * size);
    if (arr.dtype === "uint8") {
      for (let i = 0; i < data.length; i++) data[i] = arr.data[i] / 255;
    } else if (arr.dtype !== "float32" && arr.dtype !== "float64" && this.rawDtype === "uint8") {
      throw new InputError(`integer input of dtype ${arr.dtype}: pass uint8 pixels or floats in [0, 1]`);
    } else {
      for (let i = 0; i < data.length; i++) data[i] = arr.data[i];
    }
    let lo = Infinity; let hi = -Infinity;
    for (let i = 0; i < data.length; i++) {
      const v = data[i];
      if (!Number.isFinite(v)) throw new InputError("input contains NaN or inf; clean the signal/image before sending it");
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (this.valueRange) {
      const [rlo, rhi] = this.valueRange;
      if (lo < rlo - RANGE_TOLERANCE || hi > rhi + RANGE_TOLERANCE) {
        throw new InputError(`input values span [${pyFormatG(lo)}, ${pyFormatG(hi)}]; this model expects [${pyFloatRepr(rlo)}, ${pyFloatRepr(rhi)}] (scale 8-bit pixels by 1/255 or pass them as uint8)`);
      }
    }
    return { n, data };
  }

  _one(x, what) {
    const v = this.validate(x);
    if (v.n !== 1) throw new InputError(`${what} takes one input; got a batch of ${v.n}${what === "encode" ? " (use encode_many)" : ""}`);
    return v.data;
  }

  /** ReLU outputs before dropping: float64 accumulation, one rounding to float32 (as DeviceModel). */
  activations(x) { return this._activations(this._one(x, "activations")); }

  /** ``keep``: compute only these outputs (the mask is drawn first; a dropped output is 0 either way). */
  _activations(x, keep = null) {
    if (this.block.length) keep = null;  // a block needs every output of the first layer
    const shape = this.inputShape;
    const c = shape[0];
    const z = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const ch = Math.floor(i / this.normStride);  // the mean/std entry of value i: its channel, or i itself
      z[i] = Math.fround(Math.fround(x[i] - this.mean[ch]) / this.std[ch]);
    }
    let out = new Float32Array(prod(this.firstOutputShape));
    const W = this.weight;
    const O = this.outChannels;
    if (this.kind === "dense") {
      const n = z.length;
      const W64 = this._weight64 || (this._weight64 = Float64Array.from(W));  // no float32 -> float64 per use
      const n4 = n - (n % 4);
      const live = this._screenDense(x);  // outputs <= 0 are 0 after the ReLU, block or not
      const kern = this._denseKernel();
      if (kern !== null) {  // the same sums in the WebAssembly SIMD kernel
        const { f, idx } = kern;
        f.set(z, kern.oZ);
        let count = 0;
        for (let o = 0; o < O; o++) if ((keep === null || keep[o]) && (live === null || live[o])) idx[count++] = o;
        kern.K.dots(8 * kern.oZ, 8 * kern.oW, 8 * kern.oIdx, 8 * kern.oOut, n, count);
        for (let u = 0; u < count; u++) out[idx[u]] = f[kern.oOut + u] + this.bias[idx[u]];
      }
      for (let o = 0; kern === null && o < O; o++) {
        if ((keep !== null && !keep[o]) || (live !== null && !live[o])) continue;
        const wo = o * n;
        let a0 = 0; let a1 = 0; let a2 = 0; let a3 = 0;  // four sums in flight; one float32 rounding at the end
        for (let i = 0; i < n4; i += 4) {
          a0 += z[i] * W64[wo + i]; a1 += z[i + 1] * W64[wo + i + 1];
          a2 += z[i + 2] * W64[wo + i + 2]; a3 += z[i + 3] * W64[wo + i + 3];
        }
        for (let i = n4; i < n; i++) a0 += z[i] * W64[wo + i];
        out[o] = ((a0 + a1) + (a2 + a3)) + this.bias[o];
      }
    } else if (this.kind === "conv1d") {
      const L = shape[1]; const [k] = this.kernel; const [s] = this.stride; const Lo = this.firstOutputShape[1];
      for (let o = 0; o < O; o++) {
        for (let l = 0; l < Lo; l++) {
          if (keep !== null && !keep[o * Lo + l]) continue;
          let acc = 0;
          for (let ci = 0; ci < c; ci++) {
            const wb = (o * c + ci) * k; const zb = ci * L + l * s;
            for (let j = 0; j < k; j++) acc += z[zb + j] * W[wb + j];
          }
          out[o * Lo + l] = acc + this.bias[o];
        }
      }
    } else {
      const [H, Wd] = [shape[1], shape[2]]; const [kh, kw] = this.kernel; const [sh, sw] = this.stride;
      const [Ho, Wo] = [this.firstOutputShape[1], this.firstOutputShape[2]];
      for (let o = 0; o < O; o++) {
        for (let r = 0; r < Ho; r++) {
          for (let q = 0; q < Wo; q++) {
            if (keep !== null && !keep[(o * Ho + r) * Wo + q]) continue;
            let acc = 0;
            for (let ci = 0; ci < c; ci++) {
              for (let i = 0; i < kh; i++) {
                const zb = ci * H * Wd + (r * sh + i) * Wd + q * sw; const wb = ((o * c + ci) * kh + i) * kw;
                for (let j = 0; j < kw; j++) acc += z[zb + j] * W[wb + j];
              }
            }
            out[(o * Ho + r) * Wo + q] = acc + this.bias[o];
          }
        }
      }
    }
    for (let i = 0; i < out.length; i++) if (!(out[i] > 0)) out[i] = 0;
    for (const step of this.block) out = runStep(out, step, this._blockTensors);
    if (out.length !== this.nOutputs) throw new BundleError(`the device layers produced ${out.length} outputs, manifest says ${this.nOutputs}`);
    if (this.quantize) {  // LocalizedFirstLayer.quantize: float32 arithmetic, round half to even
      const clip = Math.fround(Math.abs(this.quantize.clip) + 1e-6);
      const step = Math.fround(clip / Math.fround(this.quantize.levels));
      for (let i = 0; i < out.length; i++) out[i] = Math.fround(roundHalfEven(Math.fround(Math.min(out[i], clip) / step)) * step);
    }
    return out;
  }

  /**
   * Which outputs of a dense first layer can be positive (numpy's ``_drop_one_dense`` screen): with the
   * normalization folded in (``a = w / std``, ``c = b - a . mean``), ``c + x[nz] . a[nz]`` over the input's
   * non-zero values only (most pixels are 0), and the same error bound as numpy's, so no output the reference
   * recipe makes positive is skipped: a skipped one is <= 0 there, i.e. 0 after the ReLU, the same bytes.
   */
  _screenDense(x) {
    const O = this.outChannels;
    const n = x.length;
    const { at, c, l1, mMax } = this._screenTables();
    const kern = this._denseKernel();
    let approx;
    let nz = 0; let xMax = 0;
    if (kern !== null) {  // approx += v * a_j as approx -= (-v) * a_j in the kernel: the same bits
      const { f } = kern;
      approx = f.subarray(kern.oApprox, kern.oApprox + O);
      approx.set(c);
      for (let j = 0; j < n; j++) {
        const v = x[j];
        if (v === 0) continue;
        nz++;
        xMax = Math.max(xMax, Math.abs(v));
        f[kern.oAlpha] = -v;
        kern.K.upd(8 * kern.oApprox, 0, 8 * (kern.oAt + j * O), 0, 8 * kern.oAlpha, O, 1);
      }
    } else {
      approx = Float64Array.from(c);
      for (let j = 0; j < n; j++) {
        const v = x[j];
        if (v === 0) continue;
        nz++;
        xMax = Math.max(xMax, Math.abs(v));
        const row = j * O;
        for (let o = 0; o < O; o++) approx[o] += v * at[row + o];
      }
    }
    const live = new Uint8Array(O);
    const scale = (nz + 8) * 2 ** -23;
    for (let o = 0; o < O; o++) live[o] = approx[o] > -(scale * (l1[o] * (xMax + mMax) + Math.abs(c[o])) + 1e-30) ? 1 : 0;
    return live;
  }

  /** The dense screen's tables: ``a`` transposed (one row of O per input), ``c``, ``||a_o||_1``, ``max |mean|``. */
  _screenTables() {
    const O = this.outChannels;
    const n = prod(this.inputShape);
    if (!this._screen) {
      const at = new Float64Array(n * O);  // a transposed: one row of O per input coordinate
      const c = new Float64Array(O); const l1 = new Float64Array(O);
      let mMax = 0;
      for (let j = 0; j < n; j++) mMax = Math.max(mMax, Math.abs(this.mean[Math.floor(j / this.normStride)]));
      for (let o = 0; o < O; o++) {
        let co = this.bias[o]; let lo = 0;
        for (let j = 0; j < n; j++) {
          const ch = Math.floor(j / this.normStride);
          const a = this.weight[o * n + j] / this.std[ch];
          at[j * O + o] = a; co -= a * this.mean[ch]; lo += Math.abs(a);
        }
        c[o] = co; l1[o] = lo;
      }
      this._screen = { at, c, l1, mMax };
    }
    return this._screen;
  }

  /**
   * A dense first layer's WebAssembly SIMD instance, its weights (float64) and screen table copied in once, or
   * null (no SIMD here, or ``useWasmSimd(false)``): ``{K, f, idx, oW, oAt, oZ, oApprox, oOut, oAlpha, oIdx}``.
   */
  _denseKernel() {
    if (!simdWanted || this.kind !== "dense" || this.outChannels * prod(this.inputShape) < SIMD_MIN_WORK) return null;
    if (this._kernel === undefined) {
      this._kernel = null;
      const K = newKernel();
      if (K !== null) {
        const O = this.outChannels; const n = prod(this.inputShape);
        const W64 = this._weight64 || (this._weight64 = Float64Array.from(this.weight));
        const oW = 0; const oAt = O * n; const oZ = 2 * O * n; const oApprox = oZ + n; const oOut = oApprox + O;
        const oAlpha = oOut + O; const oIdx = oAlpha + 1;
        const f = kernelMemory(K, oIdx + Math.ceil(O / 2));
        f.set(W64, oW);
        f.set(this._screenTables().at, oAt);
        this._kernel = { K, f, idx: new Int32Array(K.mem.buffer, oIdx * 8, O), oW, oAt, oZ, oApprox, oOut, oAlpha, oIdx };
      }
    }
    return this._kernel;
  }

  /** What the wire will carry (float16 can underflow tiny values to zero: those are not sent). */
  _asSent(row) {
    if (this.valueDtype !== "float16") return row;
    return row.map((v) => (v > 0 && f32ToF16Bits(v) !== 0 ? v : 0));
  }

  _centered(x) {
    const mu = this.publicMean;
    const out = new Float64Array(x.length);
    for (let j = 0; j < x.length; j++) out[j] = x[j] - mu[j];
    return out;
  }

  /** Certificate of one input and the dropped activation vector that would be sent for it. */
  certify(x, sent) {
    const xv = this._one(x, "certify");
    const s = this._asSent(Float32Array.from(sent));
    if (s.length !== this.nOutputs) throw new InputError(`activation vector has ${s.length} values; the first layer has ${this.nOutputs}`);
    if (this.ldp) return this._ldpCertificate(s);
    if (!this.isLinear) return this._blockCertificate(s);
    const indices = [];
    s.forEach((v, i) => { if (v !== 0) indices.push(i); });
    return this._markNoise(certificateOf(this.system, indices, this._centered(xv), IDENTIFIABLE_TOL, indices.length, null));
  }

  /** Enforce ``policy`` on one request (``apply_policy``): ``{sent, certificate}``. */
  applyPolicy(x, sent, policy = this.policy) {
    const system = this.system;
    const d = this._centered(x);
    const indices = [];
    sent.forEach((v, i) => { if (v !== 0) indices.push(i); });
    const k0 = indices.length;
    let cert = certificateOf(system, indices, d, policy.identifiableTol, k0, policy);
    if (cert.policy_ok || !policy.active) return { sent, certificate: this._markNoise(cert) };
    const keep = greedyKeep(system, indices, d, policy);
    let kept = indices.filter((_, i) => keep[i]);
    cert = certificateOf(system, kept, d, policy.identifiableTol, k0, policy);
    while (!cert.policy_ok && kept.length) {
      let worst = 0; let worstA = -Infinity;
      kept.forEach((idx, i) => { const a = system.alignment(idx, d); if (a > worstA) { worstA = a; worst = i; } });
      kept = kept.filter((_, i) => i !== worst);
      cert = certificateOf(system, kept, d, policy.identifiableTol, k0, policy);
    }
    const out = new Float32Array(sent.length);
    for (const i of kept) out[i] = sent[i];
    return { sent: out, certificate: this._markNoise(cert) };
  }

  /**
   * One input -> the payload (``encode`` / ``encode_certified``): ``{data, nnz, nOutputs, activations,
   * certificate}``. ``masks``: RandomMasks (default), KeyedMasks or SimilarityKeyedMasks (they also draw the
   * manifest's noise); ``mask``: an explicit keep-mask; ``certify`` (default true) enforces the manifest's
   * privacy policy and returns the certificate (for a block: what is sent, ``applies: false``).
   */
  async encode(x, { masks = null, mask = null, certify = true, policy = null } = {}) {
    return this._encodeOne(this._one(x, "encode"), { masks, mask, certify, policy });
  }

  /**
   * Batch form of ``encode`` for devices that buffer readings (``encode_many`` / ``encode_many_certified``):
   * one payload per input, the same bytes as encoding them one by one. ``xs``: a batch ``(N, *inputShape)``
   * (nested arrays, or ``{data, shape: [N, ...]}``), or an array of single inputs (typed arrays); ``mask``: null
   * or one keep-mask per input.
   */
  async encodeMany(xs, { masks = null, mask = null, certify = true, policy = null } = {}) {
    let rows;
    if (Array.isArray(xs) && xs.length && xs.every((x) => ArrayBuffer.isView(x) || (x && typeof x === "object" && "data" in x))) {
      rows = xs.map((x, i) => {
        try {
          return this._one(x, "encodeMany");
        } catch (exc) {
          throw exc instanceof InputError ? new InputError(`input ${i}: ${exc.message}`) : exc;
        }
      });
    } else {
      const { n, data } = this.validate(xs);
      const size = data.length / n;
      rows = Array.from({ length: n }, (_, i) => data.subarray(i * size, (i + 1) * size));
    }
    if (mask !== null && (!Array.isArray(mask) || mask.length !== rows.length)) {
      throw new InputError(`mask must be one keep-mask per input (${rows.length}), got ${Array.isArray(mask) ? mask.length : typeof mask}`);
    }
    const out = [];
    for (let i = 0; i < rows.length; i++) out.push(await this._encodeOne(rows[i], { masks, mask: mask ? mask[i] : null, certify, policy }));
    return out;
  }

  async _encodeOne(xv, { masks, mask, certify, policy }) {
    let keepMask = mask;  // drawn first (it never depends on the activations): only kept outputs are computed
    if (keepMask === null && this.dropRate !== 0) keepMask = await (masks || new RandomMasks()).masks(xv, this.nOutputs, this.dropRate, this.inputShape);
    if (keepMask !== null && keepMask.length !== this.nOutputs) throw new InputError(`mask has ${keepMask.length} values; the first layer has ${this.nOutputs}`);
    const h = this._activations(xv, keepMask);
    if (this.ldp) return this._encodeLdp(xv, h, keepMask, { masks, certify, policy });
    let row = h;
    if (keepMask !== null) row = h.map((v, i) => (keepMask[i] ? v : 0));
    if (this.noise) row = await this._addNoise(xv, row, masks || new RandomMasks());
    let certificate = null;
    if (certify) {
      policy = policy || this.policy;
      if (this.isLinear) {
        ({ sent: row, certificate } = this.applyPolicy(xv, this._asSent(row), policy));
      } else {
        if (policy.maxRevealedEnergy !== null) throw new InputError(`a revealed-energy policy cannot be enforced for this device block: ${BLOCK_NOTE_REFUSAL}`);
        row = this._asSent(row);
        certificate = this._blockCertificate(row);
      }
    }
    const data = encodeWire(row, this.version, this.valueDtype);
    return { data, nnz: readFrame(data).nnz, nOutputs: this.nOutputs, activations: row, certificate };
  }

  /** The Gaussian mechanism (``DeviceModel._drop_ldp``): every kept output clipped on the grid, exact discrete Gaussian noise. */
  async _encodeLdp(xv, h, keepMask, { masks, certify, policy }) {
    const keep = keepMask !== null ? keepMask : new Uint8Array(this.nOutputs).fill(1);
    const source = masks || new RandomMasks();
    if (typeof source.ldpNoise !== "function") {
      throw new InputError(`this bundle runs the Gaussian mechanism (gaussian_ldp) but the mask source ${source.constructor.name} cannot draw its noise; use RandomMasks or KeyedMasks`);
    }
    const noise = await source.ldpNoise(xv, keep, this.nOutputs, this.dropRate, this.ldp.noiseSteps, this.inputShape);
    const row = ldpRelease(h, keep, noise, this.ldp);
    let certificate = null;
    if (certify) {
      if ((policy || this.policy).maxRevealedEnergy !== null) {
        throw new InputError("a revealed-energy policy cannot be enforced with the Gaussian mechanism (gaussian_ldp): an input-dependent drop would void the (epsilon, delta) bound");
      }
      certificate = this._ldpCertificate(row);
    }
    const data = encodeWire(row, this.version, "float32", SIGNED_WIRE_VERSION);
    return { data, nnz: readFrame(data).nnz, nOutputs: this.nOutputs, activations: row, certificate };
  }

  /** Noise on the surviving values (``add_noise``): ``max(h + std * e, floor)`` in float64, one float32 rounding. */
  async _addNoise(xv, row, source) {
    if (typeof source.noise !== "function") {
      throw new InputError(`this bundle adds noise to surviving values but the mask source ${source.constructor.name} cannot draw it; use RandomMasks or KeyedMasks`);
    }
    const where = Uint8Array.from(row, (v) => (v > 0 ? 1 : 0));
    const e = await source.noise(xv, where, this.nOutputs, this.dropRate, this.inputShape);
    const { std, floor } = this.noise;
    const out = new Float32Array(row.length);
    for (let i = 0; i < row.length; i++) if (where[i]) out[i] = Math.max(row[i] + std * e[i], floor);
    return out;
  }
}

// -- the localized block (daonet.device.block) ------------------------------------------------------------------
const describeStep = (step) => (step.op === "maxpool" ? `maxpool ${step.size}`
  : step.op === "dense" ? `dense ${step.n_in}->${step.n_out} + ReLU` : `${step.op} ${step.n_in}->${step.n_out} kernel ${pyList(step.kernel)} + ReLU`);

/** Every block step's weights exist with the shapes its manifest step implies (``check_tensors``). */
function checkBlockTensors(steps, tensors) {
  const out = {};
  for (const step of steps) {
    if (step.op === "maxpool") continue;
    for (const [name, shape] of [[step.weight, [step.n_out, step.n_in, ...step.kernel]], [step.bias, [step.n_out]]]) {
      const t = Object.hasOwn(tensors, name) ? tensors[name] : null;
      if (!t) throw new BundleError(`the device bundle lacks the block tensor '${name}'; re-export the bundle`);
      if (!sameShape(t.shape, shape)) throw new BundleError(`block tensor '${name}' has shape ${pyTuple(t.shape)}, the manifest implies ${pyTuple(shape)}; the bundle is inconsistent, re-export it`);
      out[name] = t.data;
    }
  }
  return out;
}

/**
 * One block step on a float32 activation (``run_block``): dense / "same" convolutions take float32 values,
 * accumulate in float64 and round once to float32 before the ReLU (so the bits do not depend on a summation
 * order), exactly like the first layer; max pooling (window = stride = size, floor) compares float32 values.
 */
const blockTables = new WeakMap();  // a block dense step's weights -> W transposed (float64), in the kernel or in JS

/** A dense block step's ``W`` (O x n) transposed, float64: in a WebAssembly instance when SIMD is in use. */
function blockDenseTables(W, O, n) {
  const simd = simdWanted && O * n >= SIMD_MIN_WORK;
  let t = blockTables.get(W);
  if (!t || t.simd !== simd) {
    const wt = new Float64Array(n * O);
    for (let o = 0; o < O; o++) for (let i = 0; i < n; i++) wt[i * O + o] = W[o * n + i];
    const kern = simd ? newKernel() : null;
    t = { simd, wt, kern: null, oY: n * O, oAlpha: n * O + O };
    if (kern !== null) {
      const f = kernelMemory(kern, n * O + O + 1);
      f.set(wt, 0);
      t.kern = { upd: kern.upd, f };
    }
    blockTables.set(W, t);
  }
  return t;
}

const convTables = new WeakMap();  // a block conv2d step's W (O x C kh kw, float32) -> (C kh kw) x O, float64

function blockConvTable(W, O, n) {
  let t = convTables.get(W);
  if (!t) {
    t = new Float64Array(n * O);
    for (let o = 0; o < O; o++) for (let i = 0; i < n; i++) t[i * O + o] = W[o * n + i];
    convTables.set(W, t);
  }
  return t;
}

function runStep(h, step, tensors) {
  const inShape = step.inShape;
  const outShape = step.outShape;
  const out = new Float32Array(prod(outShape));
  if (step.op === "maxpool") {
    const size = step.size;
    const c = inShape[0];
    if (inShape.length === 2) {
      const [L, Lo] = [inShape[1], outShape[1]];
      for (let ch = 0; ch < c; ch++) {
        for (let l = 0; l < Lo; l++) {
          let m = -Infinity;
          for (let j = 0; j < size; j++) m = Math.max(m, h[ch * L + l * size + j]);
          out[ch * Lo + l] = m;
        }
      }
    } else {
      const [H, Wd, Ho, Wo] = [inShape[1], inShape[2], outShape[1], outShape[2]];
      for (let ch = 0; ch < c; ch++) {
        for (let r = 0; r < Ho; r++) {
          for (let q = 0; q < Wo; q++) {
            let m = -Infinity;
            for (let i = 0; i < size; i++) for (let j = 0; j < size; j++) m = Math.max(m, h[(ch * H + r * size + i) * Wd + q * size + j]);
            out[(ch * Ho + r) * Wo + q] = m;
          }
        }
      }
    }
    return out;
  }
  const W = tensors[step.weight];
  const b = tensors[step.bias];
  const [O, C] = [step.n_out, step.n_in];
  if (step.op === "dense") {
    const n = h.length;
    // after a ReLU most inputs are 0: the sums run over the non-zero ones only, input by input (float64, in input
    // order) along the rows of W transposed, in the WebAssembly kernel (y -= (-h_i) w_i: the same bits) or in JS
    const t = blockDenseTables(W, O, n);
    let acc;
    if (t.kern !== null) {
      const { f } = t.kern;
      acc = f.subarray(t.oY, t.oY + O).fill(0);
      for (let i = 0; i < n; i++) {
        if (h[i] === 0) continue;
        f[t.oAlpha] = -h[i];
        t.kern.upd(8 * t.oY, 0, 8 * i * O, 0, 8 * t.oAlpha, O, 1);
      }
    } else {
      acc = new Float64Array(O);
      for (let i = 0; i < n; i++) {
        const v = h[i];
        if (v === 0) continue;
        const wi = i * O;
        for (let o = 0; o < O; o++) acc[o] += v * t.wt[wi + o];
      }
    }
    for (let o = 0; o < O; o++) out[o] = acc[o] + b[o];
  } else if (step.op === "conv1d") {
    const [L, Lo] = [inShape[1], outShape[1]];
    const [k] = step.kernel; const [s] = step.stride; const [p] = step.padding;
    for (let o = 0; o < O; o++) {
      for (let l = 0; l < Lo; l++) {
        let acc = 0;
        const start = l * s - p;
        const j0 = Math.max(0, -start); const j1 = Math.min(k, L - start);  // zero padding adds nothing
        for (let ci = 0; ci < C; ci++) {
          const wb = (o * C + ci) * k; const hb = ci * L + start;
          for (let j = j0; j < j1; j++) acc += h[hb + j] * W[wb + j];
        }
        out[o * Lo + l] = acc + b[o];
      }
    }
  } else {
    // scattered from the non-zero inputs (after a ReLU about half are 0): for every output the float64 sum still
    // runs over (input channel, kernel row, kernel column) in that order, as a gather would, and a skipped zero
    // adds nothing, so the bits are the gather's; W is laid out (c, i, j) x O so the innermost loop is contiguous
    const [H, Wd, Ho, Wo] = [inShape[1], inShape[2], outShape[1], outShape[2]];
    const [kh, kw] = step.kernel; const [sh, sw] = step.stride; const [ph, pw] = step.padding;
    const wt = blockConvTable(W, O, C * kh * kw);
    const acc = new Float64Array(Ho * Wo * O);
    for (let ci = 0; ci < C; ci++) {
      for (let y = 0; y < H; y++) {
        for (let x = 0; x < Wd; x++) {
          const v = h[(ci * H + y) * Wd + x];
          if (v === 0) continue;
          for (let i = 0; i < kh; i++) {
            const rs = y + ph - i;
            if (rs < 0 || rs % sh !== 0 || rs / sh >= Ho) continue;
            const r = rs / sh;
            for (let j = 0; j < kw; j++) {
              const qs = x + pw - j;
              if (qs < 0 || qs % sw !== 0 || qs / sw >= Wo) continue;
              const ab = (r * Wo + qs / sw) * O; const wb = ((ci * kh + i) * kw + j) * O;
              for (let o = 0; o < O; o++) acc[ab + o] += v * wt[wb + o];
            }
          }
        }
      }
    }
    for (let o = 0; o < O; o++) for (let pos = 0; pos < Ho * Wo; pos++) out[o * Ho * Wo + pos] = acc[pos * O + o] + b[o];
  }
  for (let i = 0; i < out.length; i++) if (!(out[i] > 0)) out[i] = 0;
  return out;
}

// -- the network client (daonet.device.client.Client) -------------------------------------------------------------
export class Client {
  constructor(url, device, { apiKey = null, masks = null, certify = true, fetch: fetchFn = null } = {}) {
    url = String(url).replace(/\/+$/, "");
    if (!/^https?:\/\//.test(url)) throw new DaonetError(`server URL '${url}' must start with http:// or https://`);
    this.url = url;
    this.device = device;
    this.masks = masks || new RandomMasks();
    this.certify = certify;
    this.headers = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
    this._fetch = fetchFn || globalThis.fetch.bind(globalThis);
    this._checked = null;
  }

  async _request(method, path, init = {}) {
    try {
      return await this._fetch(this.url + path, { method, ...init, headers: { ...this.headers, ...(init.headers || {}) } });
    } catch (exc) {
      throw new DaonetError(`cannot connect to ${this.url}: ${exc.message}; is \`daonet serve\` running there?`);
    }
  }

  static async _error(r) {
    let body = {};
    try { body = await r.json(); } catch { body = {}; }
    if (!body || typeof body !== "object") body = {};
    const error = String(body.error || "http_error");
    const detail = String(body.detail || r.statusText);
    if (r.status === 409 && error === "version_mismatch") return new VersionMismatchError(detail, String(body.server_version), String(body.payload_version));
    return new ServerError(r.status, error, detail);
  }

  /** Verify once that the server serves this bundle's model id and version (before any payload is sent). */
  async checkServer() {
    if (this._checked) return this._checked;
    const r = await this._request("GET", "/v1/models");
    if (r.status !== 200) throw await Client._error(r);
    let served;
    try {
      served = Object.fromEntries((await r.json()).models.map((m) => [m.model_id, m]));
    } catch {
      throw new DaonetError(`${this.url}/v1/models did not answer a daonet model list; is it a daonet server?`);
    }
    const mid = this.device.modelId;
    const version = this.device.version;
    const info = served[mid];
    if (!info) {
      throw new VersionMismatchError(`server at ${this.url} does not serve model '${mid}' (it serves: ${Object.keys(served).sort().join(", ") || "nothing"}); start it with this model's server bundle`, "(none)", version);
    }
    if (info.version !== version) {
      throw new VersionMismatchError(`server at ${this.url} serves '${mid}' version '${info.version}', this device bundle is version '${version}'; update the device bundle or serve the matching server bundle`, String(info.version), version);
    }
    this._checked = info;
    return info;
  }

  encode(x, { mask = null } = {}) {
    return this.device.encode(x, { masks: this.masks, mask, certify: this.certify });
  }

  /** POST one payload (only these bytes leave the device) and parse the answer. */
  async send(payload) {
    await this.checkServer();
    const t0 = (globalThis.performance || Date).now();
    const r = await this._request("POST", `/v1/models/${encodeURIComponent(this.device.modelId)}/predict`, {
      body: payload.data, headers: { "Content-Type": "application/octet-stream" },
    });
    const latencyMs = (globalThis.performance || Date).now() - t0;
    if (r.status !== 200) throw await Client._error(r);
    const body = await r.json();
    return {
      label: String(body.label), index: Number(body.index), probabilities: body.probabilities.map(Number),
      bytesSent: payload.data.length, nnz: payload.nnz, nOutputs: payload.nOutputs, modelId: body.model_id,
      modelVersion: body.model_version, latencyMs, certificate: payload.certificate, payload,
    };
  }

  /** Encode here, send only the payload, return {label, probabilities, bytesSent, certificate, ...}. */
  async predict(x, { mask = null } = {}) {
    await this.checkServer();
    return this.send(await this.encode(x, { mask }));
  }
}
