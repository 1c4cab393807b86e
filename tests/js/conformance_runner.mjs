// Runs the shared conformance corpus (tests/conformance/corpus.py) through the JavaScript device runtime.
//   node tests/js/conformance_runner.mjs MODULE CASES_JSON KEY_HEX
// Prints one JSON result per case, in order: {"name", "accepted": true, "payload": hex} (the probe input encoded
// with KeyedMasks(KEY_HEX, version)) or {"name", "accepted": false, "error": class name, "message"}.
import { readFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";

const [modulePath, casesPath, keyHex] = process.argv.slice(2);
const dn = await import(pathToFileURL(modulePath).href);
const cases = JSON.parse(await readFile(casesPath, "utf8"));
const bytesOf = (h) => Uint8Array.from(h.match(/../g), (b) => parseInt(b, 16));
const Typed = { uint8: Uint8Array, float32: Float32Array };
const results = [];
for (const c of cases) {
  const publicKeys = c.keys.map((k) => (k.startsWith("raw:") ? bytesOf(k.slice(4)) : k));
  try {
    const device = await dn.loadDevice(c.bundle, { publicKeys });
    const out = { name: c.name, accepted: true };
    if (c.probe) {
      const x = new Typed[c.probe.dtype](c.probe.input.flat(Infinity));
      const payload = await device.encode(x, { masks: new dn.KeyedMasks(bytesOf(keyHex), device.version) });
      out.payload = Buffer.from(payload.data).toString("hex");
    }
    results.push(out);
  } catch (exc) {
    results.push({ name: c.name, accepted: false, error: exc.name, message: exc.message });
  }
}
await new Promise((resolve) => process.stdout.write(JSON.stringify(results), resolve));
