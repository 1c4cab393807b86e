// Runs the JavaScript device runtime for the pytest parity tests: a JSON job on stdin, JSON results on stdout.
//   {"module": path, "bundle": dir, "key": hex, "cases": [{"input": [...], "dtype": "uint8"|"float32"|"float64",
//    "shape": [...]?, "mask": [0/1...]?, "certify": true,
//    "policy": {"max_revealed_energy": t}?}], "similarity": {quantum, width, groups, dims}?}
// Each result: {"payload": hex, "activations": [...], "sent": [...], "certificate": {...}} or {"error", "message"}.
// Without a bundle: {"index_noise": {"prk": hex, "indices": [...]}} -> {"noise": [...]} (the keyed derivation);
// {"fresh_noise": n} -> {"noise": [...]} (n standard normals from RandomMasks.noise, crypto.getRandomValues).
// "no_simd": true -> plain JavaScript where the WebAssembly SIMD kernel would run ("simd": whether it ran).
// "batch": true -> {"batch": {"list", "nested", "uncertified": [payload hex...], "bad_mask"}} (encodeMany).
import { pathToFileURL } from "node:url";

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const job = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const dn = await import(pathToFileURL(job.module).href);
const out = { results: [], simd: dn.useWasmSimd(!job.no_simd) };  // "no_simd": true -> the plain-JS kernels
const bytesOf = (h) => Uint8Array.from(h.match(/../g), (b) => parseInt(b, 16));
if (job.index_noise) {
  out.noise = Array.from(dn.indexNoise(bytesOf(job.index_noise.prk), job.index_noise.indices));
} else if (job.fresh_noise) {
  out.noise = Array.from(await new dn.RandomMasks().noise(null, new Uint8Array(job.fresh_noise).fill(1), job.fresh_noise));
} else if (job.policy_probe) {  // encode under an explicit revealed-energy policy
  const p = job.policy_probe;
  try {
    const dev = await dn.loadDevice(p.bundle);
    const policy = new dn.PrivacyPolicy({ maxRevealedEnergy: p.max_revealed_energy });
    await dev.encode(Uint8Array.from(p.input.flat(Infinity)), { policy });
    out.policy_probe = { ok: true };
  } catch (exc) {
    out.policy_probe = { error: exc.name, message: exc.message };
  }
}
const done = () => new Promise((resolve) => process.stdout.write(JSON.stringify(out), resolve));  // flushed before exit
if (!job.bundle) {
  await done();
  process.exit(0);
}
let device;
try {
  device = await dn.loadDevice(job.bundle);
} catch (exc) {
  out.load_error = { error: exc.name, message: exc.message };
  await done();
  process.exit(0);
}
const key = job.key ? Uint8Array.from(job.key.match(/../g), (h) => parseInt(h, 16)) : null;
const masks = !key ? null : job.similarity
  ? new dn.SimilarityKeyedMasks(key, device.version, job.similarity)
  : new dn.KeyedMasks(key, device.version);
const Typed = { uint8: Uint8Array, float32: Float32Array, float64: Float64Array, int32: Int32Array };
const hex = (b) => Buffer.from(b).toString("hex");
for (const c of job.cases) {
  try {
    let x = c.input;
    const num = (v) => (typeof v === "string" ? Number(v.replace("nan", "NaN").replace("inf", "Infinity")) : v);
    if (c.dtype) x = new Typed[c.dtype](c.input.flat(Infinity).map(num));
    if (c.shape) x = { data: x, shape: c.shape };
    const xv = device.validate(x);
    const act = device._activations(xv.data.subarray(0, xv.data.length / xv.n));
    const policy = c.policy ? new dn.PrivacyPolicy({ maxRevealedEnergy: c.policy.max_revealed_energy }) : null;
    const p = await device.encode(x, { masks, mask: c.mask ?? null, certify: c.certify ?? true, policy });
    out.results.push({ payload: hex(p.data), activations: Array.from(act), sent: Array.from(p.activations), nnz: p.nnz,
      certificate: p.certificate });
  } catch (exc) {
    out.results.push({ error: exc.name, message: exc.message });
  }
}
if (job.batch) {  // encodeMany of every case's input: as typed arrays, as one nested batch; certified or not
  const xs = job.cases.map((c) => new Typed[c.dtype](c.input.flat(Infinity)));
  const nested = { data: new Typed[job.cases[0].dtype](job.cases.flatMap((c) => c.input.flat(Infinity))),
    shape: [job.cases.length, ...device.inputShape] };
  const hexes = (ps) => ps.map((p) => hex(p.data));
  out.batch = {
    list: hexes(await device.encodeMany(xs, { masks })),
    nested: hexes(await device.encodeMany(nested, { masks })),
    uncertified: hexes(await device.encodeMany(xs, { masks, certify: false })),
  };
  try {
    await device.encodeMany(xs, { masks, mask: [] });
  } catch (exc) {
    out.batch.bad_mask = { error: exc.name, message: exc.message };
  }
}
if (job.server) {  // predictions through the JS Client against a real server
  out.answers = [];
  const client = new dn.Client(job.server, device, { masks });
  for (const c of job.cases) {
    try {
      const a = await client.predict(new Typed[c.dtype](c.input.flat(Infinity)));
      out.answers.push({ label: a.label, index: a.index, probabilities: a.probabilities, bytesSent: a.bytesSent,
        payload: hex(a.payload.data) });
    } catch (exc) {
      out.answers.push({ error: exc.name, message: exc.message });
    }
  }
}
if (job.time) {  // per-input encode(+certificate) time, for bench/js_bench.py
  const xs = job.cases.map((c) => new Typed[c.dtype](c.input.flat(Infinity)));
  for (const x of xs.slice(0, 5)) await device.encode(x, { masks });  // warm up the JIT
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < job.time * 1000) { await device.encode(xs[n % xs.length], { masks }); n++; }
  out.seconds_per_input = (performance.now() - t0) / 1000 / n;
  out.timed_inputs = n;
}
process.stdout.write(JSON.stringify(out));
