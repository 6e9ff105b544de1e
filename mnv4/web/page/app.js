// mnv4's page: an exported MobileNetV4 artifact classifying an image in the browser, in ONNX Runtime Web (.onnx) or
// LiteRT.js (.tflite), with mnv4's own eval preprocessing. Everything comes from the mnv4 server that serves this page
// (`mnv4 web`): the artifacts and their manifests at /api/artifacts, the runtimes from mnv4/web's npm lock file at
// /vendor; nothing is fetched from elsewhere, so the page works offline.
//
// `window.mnv4` is the same page's programmatic side, driven by mnv4/web/driver.mjs for mnv4's BrowserRunner:
//   artifacts() -> the list /api/artifacts gives
//   load(name, backend, threads) -> {library, version, backend, threads, batch, adapter, ...}
//   infer(url, shape) -> {logits, shape, ms}: a little-endian float32 NCHW batch fetched from `url`, run as it is
//   classify(imageUrl, runs) -> {top5, ms, first_ms}
//   preprocess(imageUrl) -> {shape, data}: the NCHW float32 tensor mnv4's Python preprocessing makes of the image

const VENDOR = '/vendor';
const ORT_MODULE = `${VENDOR}/onnxruntime-web/dist/ort.all.min.mjs`;
const LITERT_MODULE = `${VENDOR}/@litertjs/core/dist/index.js`;
const LITERT_WASM = `${VENDOR}/@litertjs/core/wasm/`;
// mnv4.data: an image more than this many times longer than wide is refused, as the Python side does.
const MAX_ASPECT_RATIO = 32;

let catalogue = null; // /api/artifacts, fetched once
let current = null; // the loaded artifact: {artifact, engine, info, runs: [ms...]}, and the UI's key and summary

// ------------------------------------------------------------------------------------------------ preprocessing

// mnv4/data.py's Preprocessing, which is timm's eval transform on PIL: resize the short side to
// floor(resolution / crop_pct) with PIL's resampling, centre-crop, /255, normalise. PIL's resampling is ported below
// (Pillow's src/libImaging/Resample.c for bicubic and bilinear, Geometry.c's ImagingScaleAffine for nearest) with its
// fixed-point arithmetic and its rounding to uint8 after each pass, so that the page feeds the numbers `mnv4 run` does.

const FILTERS = {
  bilinear: {support: 1.0, weight: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; }},
  bicubic: {support: 2.0, weight: bicubicWeight},
};

function bicubicWeight(x) {
  const a = -0.5; // Pillow's (and Keys') a
  x = Math.abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Pillow: 8 bits for the result, 2 for the overshoot of the filters' negative lobes.
const PRECISION_BITS = 32 - 8 - 2;

// Pillow's precompute_coeffs + normalize_coeffs_8bpc: for each output pixel, the first input pixel it reads, how many
// it reads, and their weights in fixed point.
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = filter.support * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const row = new Float64Array(ksize);
  for (let out = 0; out < outSize; out++) {
    const center = (out + 0.5) * scale;
    const first = Math.max(Math.trunc(center - support + 0.5), 0); // C's (int) cast truncates
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - first;
    let sum = 0.0;
    for (let x = 0; x < count; x++) {
      row[x] = filter.weight((x + first - center + 0.5) / filterScale);
      sum += row[x];
    }
    for (let x = 0; x < count; x++) {
      const w = sum !== 0.0 ? row[x] / sum : row[x];
      weights[out * ksize + x] = Math.trunc(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[out * 2] = first;
    bounds[out * 2 + 1] = count;
  }
  return {bounds, weights, ksize};
}

function clip8(sum) {
  return Math.min(Math.max(sum >> PRECISION_BITS, 0), 255);
}

// One separable pass over interleaved RGB: along x (`horizontal`) or along y, rounding to uint8 as Pillow does.
function resamplePass(image, outSize, filter, horizontal) {
  const {width, height, pixels} = image;
  const outWidth = horizontal ? outSize : width;
  const outHeight = horizontal ? height : outSize;
  const {bounds, weights, ksize} = coefficients(horizontal ? width : height, outSize, filter);
  const out = new Uint8Array(outWidth * outHeight * 3);
  const step = horizontal ? 3 : width * 3; // from one input pixel the filter reads to the next
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const k = horizontal ? x : y;
      const first = bounds[k * 2];
      const count = bounds[k * 2 + 1];
      let at = horizontal ? (y * width + first) * 3 : (first * width + x) * 3;
      let r = 1 << (PRECISION_BITS - 1);
      let g = r;
      let b = r;
      for (let i = 0; i < count; i++, at += step) {
        const w = weights[k * ksize + i];
        r += pixels[at] * w;
        g += pixels[at + 1] * w;
        b += pixels[at + 2] * w;
      }
      const o = (y * outWidth + x) * 3;
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
    }
  }
  return {width: outWidth, height: outHeight, pixels: out};
}

// Pillow's ImagingScaleAffine, which Image.resize uses for NEAREST: the source pixel under each output pixel's
// centre, the position accumulated in double precision as Pillow does (-1: past the edge, left black).
function nearestIndices(inSize, outSize) {
  const scale = inSize / outSize;
  const indices = new Int32Array(outSize);
  let position = scale * 0.5;
  for (let out = 0; out < outSize; out++, position += scale) {
    indices[out] = Math.trunc(position) < inSize ? Math.trunc(position) : -1;
  }
  return indices;
}

function resizeNearest(image, outWidth, outHeight) {
  const xs = nearestIndices(image.width, outWidth);
  const ys = nearestIndices(image.height, outHeight);
  const out = new Uint8Array(outWidth * outHeight * 3);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      if (xs[x] < 0 || ys[y] < 0) continue;
      const from = (ys[y] * image.width + xs[x]) * 3;
      out.set(image.pixels.subarray(from, from + 3), (y * outWidth + x) * 3);
    }
  }
  return {width: outWidth, height: outHeight, pixels: out};
}

// PIL's Image.resize: two passes, each only where that size changes, horizontal first unless the height shrinks by
// more than twice as many pixels as the width (Pillow 13, python-pillow/Pillow#9549; older Pillows always go
// horizontal first, which differs only there). The order matters: each pass rounds to uint8.
export function resize(image, outWidth, outHeight, interpolation) {
  if (interpolation === 'nearest') return resizeNearest(image, outWidth, outHeight);
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`unknown interpolation ${JSON.stringify(interpolation)}`);
  const verticalFirst = outHeight < image.height && image.height - outHeight > 2 * (image.width - outWidth);
  if (verticalFirst && outHeight !== image.height) image = resamplePass(image, outHeight, filter, false);
  if (outWidth !== image.width) image = resamplePass(image, outWidth, filter, true);
  if (outHeight !== image.height) image = resamplePass(image, outHeight, filter, false);
  return image;
}

// Python's round(), which rounds halves to even (the crop offsets are whole or halves).
function roundHalfEven(value) {
  const floor = Math.floor(value);
  const fraction = value - floor;
  if (fraction !== 0.5) return Math.round(value);
  return floor % 2 === 0 ? floor : floor + 1;
}

// mnv4.data.Preprocessing.__call__ on decoded RGB pixels: an NCHW float32 tensor of one image, computed in float32 as
// numpy does.
export function preprocessPixels(image, spec) {
  const {resolution, crop_pct: cropPct, interpolation, mean, std} = spec;
  const shortSide = Math.floor(resolution / cropPct);
  const [width, height] = [image.width, image.height];
  const size = width <= height ? [shortSide, Math.trunc(shortSide * height / width)]
    : [Math.trunc(shortSide * width / height), shortSide];
  const resized = resize(image, size[0], size[1], interpolation);
  const left = roundHalfEven((size[0] - resolution) / 2.0);
  const top = roundHalfEven((size[1] - resolution) / 2.0);
  const plane = resolution * resolution;
  const tensor = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    const m = Math.fround(mean[c]);
    const s = Math.fround(std[c]);
    for (let y = 0; y < resolution; y++) {
      for (let x = 0; x < resolution; x++) {
        // PIL's crop pads with black where the box leaves the image.
        const [sx, sy] = [x + left, y + top];
        const inside = sx >= 0 && sy >= 0 && sx < size[0] && sy < size[1];
        const value = inside ? resized.pixels[(sy * size[0] + sx) * 3 + c] : 0;
        tensor[c * plane + y * resolution + x] = Math.fround(Math.fround(Math.fround(value / 255) - m) / s);
      }
    }
  }
  return tensor;
}

// An image file (a URL, a File or a Blob) as 8-bit RGB pixels as mnv4.data.load_image reads it: upright as its EXIF
// orientation says, transparency composited over white, no colour-space conversion.
export async function decodeImage(source) {
  const blob = typeof source === 'string' ? await (await fetchOk(source)).blob() : source;
  const bitmap = await createImageBitmap(blob, {
    colorSpaceConversion: 'none', premultiplyAlpha: 'none', imageOrientation: 'from-image'});
  const {width, height} = bitmap;
  if (!width || !height || Math.max(width, height) / Math.min(width, height) > MAX_ASPECT_RATIO) {
    throw new Error(`the image is ${width} x ${height} px, more than ${MAX_ASPECT_RATIO} times longer than wide; ` +
                    'crop it to the part to classify');
  }
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext('2d', {willReadFrequently: true});
  context.fillStyle = '#fff';
  context.fillRect(0, 0, width, height);
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = context.getImageData(0, 0, width, height).data;
  const pixels = new Uint8Array(width * height * 3);
  for (let i = 0, o = 0; i < rgba.length; i += 4, o += 3) {
    pixels[o] = rgba[i];
    pixels[o + 1] = rgba[i + 1];
    pixels[o + 2] = rgba[i + 2];
  }
  return {width, height, pixels};
}

// ------------------------------------------------------------------------------------------------------ runtimes

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`GET ${url}: HTTP ${response.status}`);
  return response;
}

// An NCHW float32 batch in the artifact's input layout.
function toLayout(data, shape, layout) {
  if (layout !== 'NHWC') return data;
  const [n, c, h, w] = shape;
  const out = new Float32Array(data.length);
  for (let b = 0; b < n; b++) {
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) out[((b * h + y) * w + x) * c + ch] = data[((b * c + ch) * h + y) * w + x];
      }
    }
  }
  return out;
}

function layoutShape(shape, layout) {
  const [n, c, h, w] = shape;
  return layout === 'NHWC' ? [n, h, w, c] : [n, c, h, w];
}

// ONNX Runtime Web: one InferenceSession on the chosen execution provider.
let ortStarted = false;

class OrtEngine {
  static async open(artifact, backend, threads) {
    const ort = await import(ORT_MODULE);
    if (!ortStarted) {
      // Read when its wasm module starts (the first session) and never again: `info().threads` says what it took.
      ort.env.wasm.wasmPaths = `${VENDOR}/onnxruntime-web/dist/`;
      ort.env.wasm.numThreads = threads;
      ortStarted = true;
    }
    const session = await ort.InferenceSession.create(artifact.url, {executionProviders: [backend]});
    return new OrtEngine(ort, session, artifact, backend);
  }

  constructor(ort, session, artifact, backend) {
    Object.assign(this, {ort, session, artifact, backend});
  }

  info() {
    const ort = this.ort;
    return {threads: ort.env.wasm.numThreads, adapter: adapterOf(this.backend, ort.env.webgpu?.adapter?.info)};
  }

  async run(data, shape) {
    const dtype = this.artifact.input_dtype === 'float16' ? 'float16' : 'float32';
    const values = dtype === 'float16' ? Float16Array.from(data) : data;
    const feeds = {[this.session.inputNames[0]]: new this.ort.Tensor(dtype, values, shape)};
    const outputs = await this.session.run(feeds);
    const logits = outputs[this.session.outputNames[0]];
    const result = {data: Float32Array.from(logits.data), shape: logits.dims};
    for (const tensor of Object.values(outputs)) tensor.dispose();
    return result;
  }

  close() {
    return this.session.release();
  }
}

// LiteRT.js: one CompiledModel on the chosen accelerator. Its wasm module is loaded once per page with the options it
// is loaded with (threads, or JSPI, which WebGPU needs to hand the operators it lacks to the CPU): another choice
// loads it again.
let liteRtLoaded = null; // {litert, options: JSON}

async function liteRt(options) {
  const litert = await import(LITERT_MODULE);
  const key = JSON.stringify(options);
  if (liteRtLoaded?.options !== key) {
    if (liteRtLoaded) litert.unloadLiteRt();
    liteRtLoaded = null;
    await litert.loadLiteRt(LITERT_WASM, options);
    liteRtLoaded = {litert, options: key};
  }
  return litert;
}

class LiteRtEngine {
  static async open(artifact, backend, threads) {
    if (!['float32', 'uint8'].includes(artifact.input_dtype)) {
      // Its Tensor holds float32, int32 or uint8 only (@litertjs/core's DATATYPES): an int8 input cannot be fed.
      throw new Error(`LiteRT.js cannot feed an ${artifact.input_dtype} input tensor (its tensors are float32, int32 ` +
                      'or uint8): export the artifact without --int8-io');
    }
    const options = backend === 'webgpu' ? {jspi: true} : (threads > 1 ? {threads: true} : {});
    const litert = await liteRt(options);
    const model = await litert.loadAndCompile(artifact.url, {
      accelerator: backend, cpuOptions: {numThreads: threads},
      // Float32 on the GPU too, which may otherwise compute in float16: the arithmetic the artifact was verified in.
      gpuOptions: {precision: 'fp32'}});
    const shape = Array.from(model.getInputDetails()[0].shape);
    if (shape.some((size) => size < 1)) {
      model.delete();
      // Its CompiledModel has no resize: it takes exactly the shape the file declares, -1 included.
      throw new Error(`LiteRT.js cannot run an input of shape [${shape}] (a dynamic axis: it cannot resize inputs); ` +
                      'export the artifact with a fixed --batch');
    }
    return new LiteRtEngine(litert, model, backend, threads);
  }

  constructor(litert, model, backend, threads) {
    Object.assign(this, {litert, model, backend, threads});
  }

  info() {
    const device = this.litert.getWebGpuDevice();
    return {
      threads: this.backend === 'wasm' ? this.threads : null,
      // WebGPU may not take every operator; those left run on the CPU, and the numbers are partly WASM's.
      fully_accelerated: this.model.isFullyAccelerated,
      batch: this.model.getInputDetails()[0].shape[0],
      adapter: adapterOf(this.backend, device?.adapterInfo),
    };
  }

  async run(data, shape) {
    const input = new this.litert.Tensor(data, shape);
    let outputs = [];
    try {
      outputs = await this.model.run(input);
      return {data: Float32Array.from(await outputs[0].data()), shape: Array.from(outputs[0].type.layout.dimensions)};
    } finally {
      input.delete();
      for (const tensor of outputs) tensor.delete();
    }
  }

  close() {
    this.model.delete();
  }
}

// The GPU a backend computes on, as the browser names it (null on the CPU backends).
function adapterOf(backend, info) {
  if (backend === 'webgl') {
    const gl = document.createElement('canvas').getContext('webgl2');
    const debug = gl?.getExtension('WEBGL_debug_renderer_info');
    return gl ? gl.getParameter(debug ? debug.UNMASKED_RENDERER_WEBGL : gl.RENDERER) : null;
  }
  if (backend !== 'webgpu' || !info) return null;
  return [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' ');
}

const ENGINES = {onnx: OrtEngine, tflite: LiteRtEngine};

// ---------------------------------------------------------------------------------------------------- the API

export async function artifacts() {
  catalogue ??= await (await fetchOk('/api/artifacts')).json();
  return catalogue;
}

export async function load(name, backend, threads = 1) {
  const artifact = (await artifacts()).find((row) => row.name === name);
  if (!artifact) throw new Error(`no artifact named ${JSON.stringify(name)} here`);
  if (!artifact.runtime.backends.includes(backend)) {
    throw new Error(`${artifact.runtime.library} has no backend ${JSON.stringify(backend)} ` +
                    `(choose one of: ${artifact.runtime.backends.join(', ')})`);
  }
  if (current) await current.engine.close();
  current = null;
  const engine = await ENGINES[artifact.format].open(artifact, backend, threads);
  const info = {library: artifact.runtime.library, version: artifact.runtime.version, backend,
                batch: artifact.batch, cross_origin_isolated: self.crossOriginIsolated, ...engine.info()};
  current = {artifact, engine, info, runs: []};
  return info;
}

function loaded() {
  if (!current) throw new Error('no artifact loaded: call load() first');
  return current;
}

// Run an NCHW float32 batch as it is; the caller gives a fixed-batch artifact its own batch size.
async function runBatch(data, shape) {
  const {artifact, engine} = loaded();
  if (data.length !== shape.reduce((a, b) => a * b, 1)) {
    throw new Error(`${data.length} values are not a batch of shape [${shape}]`);
  }
  const start = performance.now();
  const output = await engine.run(toLayout(data, shape, artifact.layout), layoutShape(shape, artifact.layout));
  const ms = performance.now() - start;
  current.runs.push(ms);
  return {logits: output.data, shape: [shape[0], output.data.length / shape[0]], ms};
}

export async function infer(url, shape) {
  const data = new Float32Array(await (await fetchOk(url)).arrayBuffer());
  const {logits, shape: outShape, ms} = await runBatch(data, shape);
  return {logits: Array.from(logits), shape: outShape, ms};
}

// mnv4's Preprocessing of an artifact: its manifest's preprocessing at its resolution.
function specOf(artifact) {
  return {...artifact.preprocessing, resolution: artifact.resolution};
}

export async function preprocess(imageUrl) {
  const {artifact} = current ?? {artifact: (await artifacts())[0]};
  const data = preprocessPixels(await decodeImage(imageUrl), specOf(artifact));
  return {shape: [1, 3, artifact.resolution, artifact.resolution], data: Array.from(data)};
}

// The top-5 classes of an image (a URL or a File) as `mnv4 run` prints them, the model run `runs` times on it.
export async function classify(image, runs = 1) {
  const {artifact, info} = loaded();
  const pixels = preprocessPixels(await decodeImage(image), specOf(artifact));
  // A fixed-batch artifact takes its own batch size: the image repeated, as `mnv4 run` does.
  const batch = info.batch ?? 1;
  const data = new Float32Array(pixels.length * batch);
  for (let b = 0; b < batch; b++) data.set(pixels, b * pixels.length);
  const shape = [batch, 3, artifact.resolution, artifact.resolution];
  const first = current.runs.length === 0;
  let result = null;
  const ms = [];
  for (let i = 0; i < Math.max(1, runs); i++) {
    result = await runBatch(data, shape);
    ms.push(result.ms);
  }
  const logits = Array.from(result.logits.subarray(0, result.shape[1]));
  return {top5: topClasses(logits, 5, artifact.labels), ms, first_ms: first ? ms[0] : current.runs[0]};
}

// mnv4.artifact.summary.top_classes: softmax in double precision, most probable first.
function topClasses(logits, count, labels) {
  const max = Math.max(...logits);
  const exps = logits.map((v) => Math.exp(v - max));
  const total = exps.reduce((a, b) => a + b, 0);
  const order = logits.map((_, i) => i).sort((a, b) => exps[b] - exps[a] || a - b);
  return order.slice(0, count).map((index, rank) => ({
    rank: rank + 1, index, label: labels ? labels[index] : `class ${index}`, probability: exps[index] / total}));
}

window.mnv4 = {artifacts, load, infer, classify, preprocess};

// -------------------------------------------------------------------------------------------------------- the UI

const $ = (id) => document.getElementById(id);

function showError(error) {
  $('status').textContent = `error: ${error?.message ?? error}`;
  $('status').className = 'error';
}

function status(text) {
  $('status').textContent = text;
  $('status').className = '';
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function fillBackends() {
  const artifact = catalogue.find((row) => row.name === $('artifact').value);
  $('backend').replaceChildren(...artifact.runtime.backends.map((name) => new Option(name, name)));
  $('about').textContent = `${artifact.format}, ${artifact.variant}, ${artifact.precision}, ` +
    `${artifact.resolution} px, ${artifact.layout}, ${artifact.num_classes} classes; ` +
    `${artifact.runtime.library} ${artifact.runtime.version}`;
}

async function loadChosen() {
  status('loading...');
  const info = await load($('artifact').value, $('backend').value, Number($('threads').value) || 1);
  const details = [info.adapter && `adapter: ${info.adapter}`, info.threads && `${info.threads} threads`,
                   info.fully_accelerated === false && 'not fully accelerated: some operators run on the CPU']
    .filter(Boolean).join('; ');
  current.summary = `${$('artifact').value}: ${info.library} ${info.version}, ${info.backend}` +
    (details ? `; ${details}` : '');
  status(`loaded ${current.summary}`);
}

async function classifyChosen(file) {
  $('top5').replaceChildren();
  $('latency').textContent = '';
  URL.revokeObjectURL($('preview').src);
  $('preview').src = URL.createObjectURL(file);
  const chosen = `${$('artifact').value}|${$('backend').value}|${$('threads').value}`;
  if (!current || current.key !== chosen) {
    await loadChosen();
    current.key = chosen;
  }
  status('running...');
  const result = await classify(file, Number($('runs').value) || 1);
  $('top5').replaceChildren(...result.top5.map((row) => {
    const line = document.createElement('tr');
    for (const text of [`${row.rank}.`, row.label, `${(row.probability * 100).toFixed(2)}%`]) {
      line.appendChild(document.createElement('td')).textContent = text;
    }
    return line;
  }));
  const steady = current.runs.slice(1);
  $('latency').textContent = `first run ${result.first_ms.toFixed(1)} ms; steady ` +
    (steady.length ? `${median(steady).toFixed(1)} ms (median of ${steady.length} runs)` : 'n/a (run it again)');
  status(current.summary);
}

let lastImage = null; // the image shown, classified again when the artifact, backend or threads change
let queue = Promise.resolve(); // one load or classification at a time, in the order asked

function classifyLater(image) {
  lastImage = image ?? lastImage;
  if (lastImage) queue = queue.then(() => classifyChosen(lastImage)).catch(showError);
}

async function startUi() {
  if (!$('artifact')) return; // the API alone
  const rows = await artifacts();
  $('artifact').replaceChildren(...rows.map((row) => new Option(row.name, row.name)));
  $('threads').value = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  fillBackends();
  $('artifact').addEventListener('change', () => { fillBackends(); classifyLater(); });
  $('backend').addEventListener('change', () => classifyLater());
  $('threads').addEventListener('change', () => classifyLater());
  $('file').addEventListener('change', () => {
    classifyLater($('file').files[0]);
    $('file').value = ''; // so that choosing the same file again classifies it again
  });
  $('drop').addEventListener('dragover', (event) => event.preventDefault());
  $('drop').addEventListener('drop', (event) => {
    event.preventDefault();
    classifyLater(event.dataTransfer.files[0]);
  });
  status(rows.length ? 'choose an image' : 'no artifacts served');
}

startUi().catch(showError);
