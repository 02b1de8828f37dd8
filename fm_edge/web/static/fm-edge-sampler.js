// fm-edge's sampler.onnx in JavaScript, with no dependency of its own: pass in the onnxruntime-web module.
// The block between the "embed" markers is what docs/web.md shows; the page and the tests run it as is.

// --- embed: start ---
// Load an fm-edge sampler.onnx (a URL, or the file's bytes).
export async function loadSampler(ort, source, options = {}) {
  return ort.InferenceSession.create(source, options);
}

// noise: Float32Array of n * 32 * 32 N(0, 1) values; labels: n digits 0-9 (10 = any digit).
// Returns a Uint8Array of n * 28 * 28 grey levels (0 = black background), one 28x28 digit after another.
export async function sampleDigits(ort, session, noise, labels, cfgScale = 1) {
  const n = labels.length;
  const { images } = await session.run({
    noise: new ort.Tensor("float32", noise, [n, 1, 32, 32]),
    class_labels: new ort.Tensor("int64", BigInt64Array.from(labels, BigInt), [n]),
    cfg_scale: new ort.Tensor("float32", Float32Array.of(cfgScale), []),
  });
  return images.data;
}
// --- embed: end ---

export const NOISE_SIZE = 32 * 32;
export const DIGIT_SIZE = 28 * 28;

// The metadata_props of an ONNX file (ModelProto field 14: key 1, value 2) read straight from its
// protobuf bytes; null when the bytes are not a well-formed protobuf message.
export function readMetadata(bytes) {
  const text = new TextDecoder();
  function fields(start, end) {
    const out = [];
    let pos = start;
    const varint = () => {
      let value = 0;
      for (let scale = 1; ; scale *= 128) {
        if (pos >= end || scale > 2 ** 63) throw new Error("truncated varint");
        const b = bytes[pos++];
        value += (b & 127) * scale;
        if (b < 128) return value;
      }
    };
    while (pos < end) {
      const key = varint();
      const field = Math.floor(key / 8);
      const wire = key % 8;
      if (wire === 0) varint();
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else if (wire === 2) {
        const len = varint();
        if (pos + len > end) throw new Error("truncated field");
        out.push([field, pos, pos + len]);
        pos += len;
      } else throw new Error(`wire type ${wire}`);
      if (field === 0 || pos > end) throw new Error("bad field");
    }
    return out;
  }
  try {
    const meta = {};
    for (const [field, start, end] of fields(0, bytes.length)) {
      if (field !== 14) continue;
      let key = "";
      let value = "";
      for (const [f, s, e] of fields(start, end)) {
        if (f === 1) key = text.decode(bytes.subarray(s, e));
        if (f === 2) value = text.decode(bytes.subarray(s, e));
      }
      meta[key] = value;
    }
    return meta;
  } catch {
    return null;
  }
}

// Seeded N(0, 1) noise for n digits: a 32-bit counter hashed (murmur3's finalizer) gives uniforms, and
// Box-Muller turns pairs of them into normals. The same seed gives the same noise in every browser.
export function gaussianNoise(n, seed) {
  let counter = seed >>> 0;
  const uniform = () => {
    counter = (counter + 0x9e3779b9) >>> 0;
    let z = counter;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (((z ^ (z >>> 16)) >>> 0) + 0.5) / 4294967296; // in (0, 1): log() below stays finite
  };
  const out = new Float32Array(n * NOISE_SIZE);
  for (let i = 0; i < out.length; i += 2) {
    const r = Math.sqrt(-2 * Math.log(uniform()));
    const angle = 2 * Math.PI * uniform();
    out[i] = r * Math.cos(angle);
    out[i + 1] = r * Math.sin(angle);
  }
  return out;
}
