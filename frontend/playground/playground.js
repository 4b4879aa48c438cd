// The playground: one page that drives this origin's img2img API (POST /predict, run events, GET /runs).
// It runs under a strict CSP: no inline code or styles, and every server-provided string reaches the DOM
// as textContent or a property, never as markup.
'use strict';

const KEY_STORAGE = 'sd-img2img.api-key';
const FINAL = new Set(['succeeded', 'failed', 'canceled', 'aborted']);
const EXTENSIONS = {png: 'png', jpeg: 'jpg', webp: 'webp'};

// The form, in order: PredictBody property -> how it is shown. Bounds, defaults and options come from
// /openapi.json; `step` is ours for floats (the schema has none). `model: true`: a field only some models
// take, shown only when the served model's card (`x-model` in the schema) lists it.
const FIELDS = {
  prompt: {label: 'Prompt', kind: 'textarea', hint: 'Ctrl+Enter (⌘+Enter) generates.'},
  negative_prompt: {label: 'Negative prompt', kind: 'textarea'},
  image: {label: 'Image', kind: 'image', hint: 'Choose a file, drop one here, or paste an image anywhere on the page.'},
  file_url: {label: 'Image URL', kind: 'url', hint: 'Used only when no image file is chosen.'},
  strength: {label: 'Strength', kind: 'range', step: 0.05},
  num_inference_steps: {label: 'Steps', kind: 'number'},
  guidance_scale: {label: 'Guidance scale', kind: 'number', step: 0.5},
  num_images_per_prompt: {label: 'Number of images', kind: 'number'},
  seed: {label: 'Seed', kind: 'seed', hint: 'Empty = random.'},
  scheduler: {label: 'Scheduler', kind: 'list', hint: "Empty = the model's default."},
  output_format: {label: 'Output format', kind: 'select'},
  aesthetic_score: {label: 'Aesthetic score', kind: 'optional', step: 0.5, model: true,
    hint: "SDXL refiner only. Empty = the model's default (6.0)."},
  negative_aesthetic_score: {label: 'Negative aesthetic score', kind: 'optional', step: 0.5, model: true,
    hint: "SDXL refiner only. Empty = the model's default (2.5)."},
};
// Schema properties the page does not show: a browser tab cannot receive a webhook, and Cancel is a button.
const OMITTED = ['webhook_endpoint', 'cancel_after'];
// What history refills (the init image itself is not stored).
const REFILLED = ['prompt', 'negative_prompt', 'strength', 'num_inference_steps', 'guidance_scale',
  'num_images_per_prompt', 'seed', 'scheduler', 'output_format', 'aesthetic_score', 'negative_aesthetic_score'];
const DEFAULT_SCHEDULER = "model's default"; // the scheduler list's first, empty choice

const $ = (id) => document.getElementById(id);
const form = $('form');
const keyInput = $('api-key');
const generateButton = $('generate');
const cancelButton = $('cancel');
const state = {
  limits: {max_image_side: Infinity, max_image_pixels: Infinity, max_image_bytes: Infinity},
  model: null, // the served model's card (x-model), when the service knows it
  image: null, // what Generate sends: {file, blob, base64, width, height, from}
  imageJob: null, // the image being prepared; Generate waits for it
  previewUrl: null,
  run: null, // the active run
  historyCursor: null,
  historyEpoch: 0, // bumped on each reload, so a late answer for an old key is dropped
};

// Builds an element from properties (never from markup).
function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

const control = (name) => $(`f-${name}`);

function setValue(name, value) {
  control(name).value = value ?? '';
  if (name === 'strength') showStrength();
}

function showStrength() {
  $('f-strength-value').value = Number(control('strength').value).toFixed(2);
}

// ---- The form, from FIELDS ----------------------------------------------------------------------------

function buildField(name, spec) {
  const id = `f-${name}`;
  const field = el('div', {className: `field field-${spec.kind}`});
  const label = el('label', {htmlFor: id, textContent: spec.label});
  let input;
  if (spec.kind === 'textarea') input = el('textarea', {id, rows: name === 'prompt' ? 3 : 2});
  else if (spec.kind === 'select') input = el('select', {id});
  else if (spec.kind === 'image') input = el('input', {id, type: 'file', accept: 'image/*'});
  else if (spec.kind === 'url') input = el('input', {id, type: 'url', placeholder: 'https://…', spellcheck: false});
  else if (spec.kind === 'range') input = el('input', {id, type: 'range', required: true});
  else if (spec.kind === 'list') input = el('input', {id, type: 'text', autocomplete: 'off', spellcheck: false});
  else input = el('input', {id, type: 'number', required: spec.kind === 'number'}); // number, seed, optional

  if (spec.kind === 'range') {
    const output = el('output', {id: `${id}-value`});
    output.setAttribute('for', id);
    output.setAttribute('role', 'none'); // not a second status region: the slider announces its own value
    field.append(el('div', {className: 'label-row'}, label, output), input);
    input.addEventListener('input', showStrength);
  } else if (spec.kind === 'seed') {
    const dice = el('button', {type: 'button', textContent: 'Random'});
    dice.setAttribute('aria-label', 'Random seed');
    dice.addEventListener('click', () => {
      setValue('seed', crypto.getRandomValues(new Uint32Array(1))[0]); // 0 .. 2^32-1
      renderCode();
    });
    field.append(label, el('div', {className: 'row'}, input, dice));
  } else if (spec.kind === 'image') {
    field.append(label, buildImageField(input));
  } else {
    field.append(label, input);
  }
  if (spec.kind === 'list') {
    input.setAttribute('list', `${id}-options`);
    field.append(el('datalist', {id: `${id}-options`}));
  }
  if (spec.hint) {
    const hint = el('p', {id: `${id}-hint`, className: 'hint', textContent: spec.hint});
    (field.querySelector('.dropzone') ?? field).append(hint); // the image's hint belongs in its drop zone
    input.setAttribute('aria-describedby', spec.kind === 'image' ? `${id}-hint image-info` : `${id}-hint`);
  }
  return field;
}

function buildImageField(input) {
  const zone = el('div', {className: 'dropzone'}, input);
  const preview = el('img', {id: 'image-preview', alt: 'Init image preview', hidden: true});
  const info = el('p', {id: 'image-info', className: 'hint'});
  const remove = el('button', {type: 'button', id: 'image-remove', textContent: 'Remove image', hidden: true});
  input.addEventListener('change', () => (input.files[0] ? setImage(input.files[0]) : clearImage()));
  remove.addEventListener('click', () => {
    clearImage();
    input.focus(); // the button just vanished; keep the keyboard user in place
  });
  // Highlight only; the drop itself is handled on the whole page (see listenForImages).
  zone.addEventListener('dragenter', () => zone.classList.add('dragging'));
  zone.addEventListener('dragleave', (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove('dragging');
  });
  return el('div', {className: 'image-box'}, zone, el('div', {className: 'preview'}, preview, info, remove));
}

// Nullable fields (seed) carry their bounds inside anyOf: use the integer/number branch.
function numeric(schema) {
  const isNumber = (s) => s.type === 'integer' || s.type === 'number';
  return isNumber(schema) ? schema : (schema.anyOf || []).find(isNumber);
}

function applySchema(doc) {
  const body = doc?.components?.schemas?.PredictBody;
  if (!body?.properties) throw new Error('it has no PredictBody schema');
  const properties = body.properties;
  state.model = body['x-model'] ?? null;
  if (Array.isArray(state.model?.schedulers)) schedulerChoices(state.model);
  for (const [name, spec] of Object.entries(FIELDS)) {
    const input = control(name);
    const schema = properties[name];
    // a server without this field, or one whose model does not take it (unknown model: not offered)
    input.closest('.field').hidden = !schema || (spec.model === true && !shownForModel(name));
    if (!schema) continue;
    const number = numeric(schema);
    if (number) {
      // Bounds before the value: a range input clamps its value to them.
      const step = number.type === 'integer' ? 1 : spec.step ?? 'any';
      input.step = step;
      if (number.minimum !== undefined) input.min = number.minimum;
      else if (number.exclusiveMinimum !== undefined) input.min = number.exclusiveMinimum + (step === 'any' ? 0 : step);
      if (number.maximum !== undefined) input.max = number.maximum;
    }
    if (Array.isArray(schema.enum)) {
      input.replaceChildren(...schema.enum.map((value) => el('option', {value, textContent: value})));
    }
    if (Array.isArray(schema.examples) && input.tagName === 'INPUT') {
      $(`f-${name}-options`)?.replaceChildren(...schema.examples.map((value) => el('option', {value})));
    }
    if (schema.maxLength !== undefined) input.maxLength = schema.maxLength;
    if ((body.required || []).includes(name)) input.required = true;
    if (schema.default !== undefined && spec.kind !== 'image') setValue(name, schema.default);
  }
  const unknown = Object.keys(properties).filter((name) => !(name in FIELDS) && !OMITTED.includes(name));
  if (unknown.length) console.warn('playground: schema properties neither shown nor OMITTED:', unknown);
  Object.assign(state.limits, body['x-limits']);
}

const shownForModel = (name) => Array.isArray(state.model?.fields) && state.model.fields.includes(name);

// The served model's schedulers, exactly: the free text box (any diffusers name) becomes a list of what it
// accepts, its default first.
function schedulerChoices(model) {
  const old = control('scheduler');
  const select = el('select', {id: old.id});
  select.setAttribute('aria-describedby', old.getAttribute('aria-describedby') ?? '');
  select.append(el('option', {value: '', textContent: DEFAULT_SCHEDULER}),
    ...model.schedulers.map((name) => el('option', {value: name, textContent: name})));
  $(`${old.id}-options`)?.remove();
  old.replaceWith(select);
  const hint = $(`${old.id}-hint`);
  if (hint) hint.textContent = `What the served model (${model.title ?? model.family}) accepts.`;
}

// ---- The init image -----------------------------------------------------------------------------------

// Sends the file's own bytes unless it is over the service's limits, so the same file always makes the
// same request. Over a limit: a PNG scaled to fit. Not decodable here: the bytes as they are, so that the
// server's message about them is what the user reads.
async function prepareImage(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    return {file, blob: file, width: null, height: null, from: null};
  }
  const {width, height} = bitmap;
  const {max_image_side: side, max_image_pixels: pixels, max_image_bytes: bytes} = state.limits;
  let scale = Math.min(1, side / Math.max(width, height), Math.sqrt(pixels / (width * height)));
  if (scale === 1 && file.size <= bytes) {
    bitmap.close();
    return {file, blob: file, width, height, from: null};
  }
  let blob, w, h;
  for (let attempt = 0; attempt < 8; attempt++) { // a PNG can outweigh the original: shrink until it fits
    w = Math.max(1, Math.floor(width * scale));
    h = Math.max(1, Math.floor(height * scale));
    const canvas = el('canvas', {width: w, height: h});
    const context = canvas.getContext('2d');
    context.imageSmoothingQuality = 'high';
    context.drawImage(bitmap, 0, 0, w, h);
    blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
    if (blob.size <= bytes) break;
    scale *= 0.75;
  }
  bitmap.close();
  return {file, blob, width: w, height: h, from: {width, height}};
}

function toBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(',') + 1)); // drop "data:…;base64,"
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function setImage(file) {
  const input = control('image');
  if (input.files[0] !== file) { // dropped, pasted or a result: it becomes the Image field's file too
    const transfer = new DataTransfer();
    transfer.items.add(file);
    input.files = transfer.files;
  }
  const job = (state.imageJob = (async () => {
    const prepared = await prepareImage(file);
    const base64 = await toBase64(prepared.blob);
    if (job !== state.imageJob) return; // a newer image won
    state.image = {...prepared, base64};
    showPreview();
    renderCode();
  })().catch((error) => {
    if (job !== state.imageJob) return;
    clearImage();
    showAlert(`Could not read the image: ${error.message}`);
  }));
  return job;
}

function clearImage() {
  state.image = state.imageJob = null;
  control('image').value = '';
  showPreview();
  renderCode();
}

function showPreview() {
  const image = state.image;
  const preview = $('image-preview');
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = image?.width ? URL.createObjectURL(image.blob) : null;
  preview.hidden = !state.previewUrl;
  if (state.previewUrl) preview.src = state.previewUrl;
  else preview.removeAttribute('src');
  $('image-remove').hidden = !image;
  const info = $('image-info');
  if (!image) info.textContent = '';
  else if (!image.width) info.textContent = 'This browser cannot decode this file; it is sent as it is.';
  else if (image.from) {
    info.textContent = `downscaled from ${image.from.width}x${image.from.height} to ${image.width}x${image.height}` +
      " (the service's limits)";
  } else info.textContent = `${image.width}x${image.height} px`;
}

// Drop anywhere (a missed drop zone must not navigate away from the page) and paste anywhere.
function listenForImages() {
  const zone = document.querySelector('.dropzone');
  const hasFiles = (event) => event.dataTransfer?.types.includes('Files');
  const imageIn = (files) => [...(files || [])].find((file) => file.type.startsWith('image/'));
  document.addEventListener('dragover', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
  });
  document.addEventListener('drop', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    zone.classList.remove('dragging');
    const file = imageIn(event.dataTransfer.files);
    if (file) setImage(file);
  });
  document.addEventListener('paste', (event) => {
    const file = imageIn(event.clipboardData?.files);
    if (!file) return;
    // Text copied from an office app also carries a picture of it: into a text field, paste the text.
    const typing = event.target.closest?.('textarea, input:not([type=file])');
    if (typing && event.clipboardData.types.includes('text/plain')) return;
    event.preventDefault();
    setImage(file);
  });
}

// ---- Talking to the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(error) {
    super(error?.message || 'the service answered with an error');
    this.code = error?.code ?? null;
    this.param = error?.param ?? null;
  }
}

async function call(path, init = {}) {
  const headers = new Headers(init.headers);
  const key = keyInput.value.trim();
  if (key) {
    try {
      headers.set('Authorization', key); // the raw key, as the hosted API takes it
    } catch {
      throw new ApiError({message: 'the API key has characters that cannot be sent in a header',
        param: 'Authorization'});
    }
  }
  try {
    return await fetch(path, {...init, headers, cache: 'no-store'});
  } catch (error) {
    throw new ApiError({code: 'network', message: `could not reach the service (${error.message})`});
  }
}

async function callJSON(path, init) {
  const response = await call(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch { /* not JSON (a proxy's error page): described by the status below */ }
  if (!response.ok) throw new ApiError(data?.error ?? {message: `HTTP ${response.status}`});
  if (data === null) throw new ApiError({message: `${path} answered something that is not JSON`});
  return data;
}

// crypto.randomUUID needs a secure context; a LAN address over plain http is not one.
function idempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const hex = [...crypto.getRandomValues(new Uint8Array(16))].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20)}`; // v4
}

function requestBody() {
  const value = (name) => control(name).value;
  const body = {prompt: value('prompt'), negative_prompt: value('negative_prompt')};
  const url = value('file_url').trim();
  if (state.image) body.image = state.image.base64;
  else if (url) body.file_url = url;
  body.strength = Number(value('strength'));
  body.num_inference_steps = Number(value('num_inference_steps'));
  body.guidance_scale = Number(value('guidance_scale'));
  body.num_images_per_prompt = Number(value('num_images_per_prompt'));
  if (value('seed').trim() !== '') body.seed = Number(value('seed'));
  body.scheduler = value('scheduler').trim();
  body.output_format = value('output_format');
  for (const [name, spec] of Object.entries(FIELDS)) { // sent only when shown (the model takes it) and given
    if (spec.kind === 'optional' && !control(name).closest('.field').hidden && value(name).trim() !== '') {
      body[name] = Number(value(name));
    }
  }
  return body;
}

// ---- A run --------------------------------------------------------------------------------------------

async function generate() {
  if (generateButton.disabled) return; // before the schema is applied, or while a run is active (Ctrl+Enter)
  clearErrors();
  await state.imageJob; // an image still being read or scaled
  const body = requestBody();
  const run = (state.run = {id: null, status: 'submitting', started: performance.now(), ended: null,
    cancelRequested: false});
  showProgress(null);
  generateButton.disabled = true;
  cancelButton.disabled = false;
  $('results').setAttribute('aria-busy', 'true');
  const timer = setInterval(() => showRunState(run), 100);
  showRunState(run);
  try {
    const accepted = await callJSON('/predict', {
      method: 'POST',
      headers: {'Content-Type': 'application/json', 'Prefer': 'respond-async', 'Idempotency-Key': idempotencyKey()},
      body: JSON.stringify(body),
    });
    run.id = accepted.run_id;
    run.status = accepted.status || 'queued';
    if (run.cancelRequested) sendCancel(run); // Cancel was pressed before the run had an id
    const view = await follow(run);
    if (view.status === 'succeeded') {
      finishProgress();
      showResults(view);
    }
    else showError(new ApiError(view.error ?? {message: runMessage(view)}));
  } catch (error) {
    if (!run.id) run.status = 'not started';
    showError(error);
  } finally {
    clearInterval(timer);
    run.ended = performance.now();
    showRunState(run);
    state.run = null;
    generateButton.disabled = false;
    cancelButton.disabled = true;
    $('results').removeAttribute('aria-busy');
    loadHistory();
  }
}

// A stopped run without an error object (canceled on request) still says why in message/reason.
function runMessage(view) {
  const message = view.message || `run ${view.run_id} ${view.status}`;
  return view.reason ? `${message} (${view.reason})` : message;
}

function showRunState(run) {
  const seconds = ((run.ended ?? performance.now()) - run.started) / 1000;
  $('run-id').textContent = run.id ? `Run ${run.id} · ` : '';
  $('run-status').textContent = run.status;
  $('run-time').textContent = ` · ${seconds.toFixed(1)} s`; // aria-live=off: not announced ten times a second
}

// The events stream, or polling once it fails.
async function follow(run) {
  try {
    const view = await streamEvents(run);
    if (view) return view;
  } catch { /* the stream broke: polling takes over */ }
  for (;;) {
    const view = await callJSON(`/runs/${encodeURIComponent(run.id)}`);
    run.status = view.status;
    if (FINAL.has(view.status)) return view;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// EventSource cannot send Authorization, so read the stream with fetch and parse it here. Returns the final
// event's run view, or null when the stream is refused or ends before one.
async function streamEvents(run) {
  const response = await call(`/runs/${encodeURIComponent(run.id)}/events`, {headers: {Accept: 'text/event-stream'}});
  if (!response.ok || !response.body) return null;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let event = {type: '', data: []}; // the one being read
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return null;
      buffer += decoder.decode(value, {stream: true});
      const lines = buffer.split('\n');
      buffer = lines.pop(); // an incomplete line waits for the next chunk
      for (const raw of lines) {
        const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
        if (line === '') { // a blank line dispatches the event
          const view = event.data.length ? onEvent(run, event.type, event.data.join('\n')) : null;
          if (view) return view;
          event = {type: '', data: []};
        } else if (!line.startsWith(':')) { // ":" starts a comment (keep-alive)
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') event.type = value;
          else if (field === 'data') event.data.push(value);
          // "id:" would matter for resuming; this reader falls back to polling instead.
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function onEvent(run, type, data) {
  let view;
  try {
    view = JSON.parse(data);
  } catch {
    return null;
  }
  if (type === 'progress') { // the run's step now, and now and then a preview of its estimate
    run.status = 'processing';
    showProgress(view);
    return null;
  }
  run.status = view.status || type;
  return FINAL.has(type) || FINAL.has(view.status) ? view : null;
}

// The step bar and the live preview while a run is in the model; null hides them (a new run).
function showProgress(progress) {
  const box = $('progress');
  if (!progress) {
    box.hidden = true;
    $('progress-preview').hidden = true;
    $('progress-preview').removeAttribute('src');
    return;
  }
  box.hidden = false;
  $('progress-bar').max = progress.total;
  $('progress-bar').value = progress.step;
  $('progress-text').textContent = `step ${progress.step} of ${progress.total}`;
  if (progress.preview) {
    $('progress-preview').src = progress.preview; // a data: URI of a small JPEG, scaled up by CSS
    $('progress-preview').hidden = false;
  }
}

// A run that succeeded made every step, but its last progress may never be shown: the run can end between
// two progress polls. So the bar ends full, not at "step 36 of 41". (No progress seen: nothing to finish.)
function finishProgress() {
  const bar = $('progress-bar');
  if ($('progress').hidden) return;
  bar.value = bar.max;
  $('progress-text').textContent = `done: step ${bar.max} of ${bar.max}`;
}

async function sendCancel(run) {
  try {
    await callJSON(`/runs/${encodeURIComponent(run.id)}/cancel`, {method: 'POST'});
  } catch (error) {
    if (error.code !== 'run_finished') showError(error); // finished anyway: its final event tells how
  }
}

function cancelRun() {
  const run = state.run;
  if (!run || run.cancelRequested) return;
  run.cancelRequested = true;
  cancelButton.disabled = true;
  if (run.id) sendCancel(run);
}

// ---- Errors -------------------------------------------------------------------------------------------

function showAlert(message) {
  const alert = $('alert');
  alert.textContent = message;
  alert.hidden = false;
}

// Next to the field the error names (and in the alert box, which screen readers announce).
function showError(error) {
  const param = error.param ?? (error.code === 'unauthorized' ? 'Authorization' : null);
  const input = param === 'Authorization' ? keyInput : Object.hasOwn(FIELDS, param ?? '') ? control(param) : null;
  if (input) {
    $(`error-${param}`)?.remove();
    const note = el('p', {className: 'field-error', id: `error-${param}`, textContent: error.message});
    (input.closest('.row, .dropzone') || input).after(note);
    input.dataset.describedby ??= input.getAttribute('aria-describedby') ?? '';
    input.setAttribute('aria-invalid', 'true');
    input.setAttribute('aria-describedby', `${input.dataset.describedby} ${note.id}`.trim());
  }
  showAlert(error.message);
}

function clearErrors() {
  for (const note of form.querySelectorAll('.field-error')) note.remove();
  for (const input of form.querySelectorAll('[aria-invalid]')) {
    input.removeAttribute('aria-invalid');
    if (input.dataset.describedby) input.setAttribute('aria-describedby', input.dataset.describedby);
    else input.removeAttribute('aria-describedby');
    delete input.dataset.describedby;
  }
  $('alert').hidden = true;
  $('alert').textContent = '';
}

// ---- Results ------------------------------------------------------------------------------------------

function showResults(view) {
  const images = Array.isArray(view.result) ? view.result : [];
  const seeds = view.seeds || [];
  const format = view.output_format || 'png';
  const prefix = String(view.run_id).slice(0, 8);
  $('results').replaceChildren(...images.map((base64, i) => {
    const seed = seeds[i];
    const src = `data:image/${format};base64,${base64}`;
    const name = `sd-${prefix}-${seed}.${EXTENSIONS[format] ?? format}`;
    const caption = el('figcaption', {id: `result-${i}`, textContent: `seed ${seed}`});
    const download = el('a', {href: src, download: name, textContent: 'Download'});
    const reuse = el('button', {type: 'button', textContent: 'Use as init image'});
    reuse.addEventListener('click', () => {
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      setImage(new File([bytes], name, {type: `image/${format}`}));
    });
    const rerun = el('button', {type: 'button', textContent: 'Re-run with this seed'});
    rerun.addEventListener('click', () => {
      setValue('seed', seed);
      setValue('num_images_per_prompt', 1);
      renderCode();
      form.requestSubmit();
    });
    for (const action of [download, reuse, rerun]) action.setAttribute('aria-describedby', caption.id);
    const img = el('img', {src, alt: `Result ${i + 1} of ${images.length}, seed ${seed}`});
    if (view.width && view.height) Object.assign(img, {width: view.width, height: view.height}); // no layout jump
    return el('figure', {className: 'result'}, img, caption, el('div', {className: 'actions'}, download, reuse, rerun));
  }));
  if (!images.length) showAlert(`run ${view.run_id} succeeded, but its result is no longer stored`);
  $('warnings').replaceChildren(...(view.warnings || []).map((text) => el('li', {textContent: text})));
}

// ---- History ------------------------------------------------------------------------------------------

async function loadHistory(more = false) {
  const epoch = more ? state.historyEpoch : ++state.historyEpoch;
  const list = $('history');
  const note = $('history-note');
  const moreButton = $('more');
  if (!keyInput.value.trim()) {
    list.replaceChildren();
    moreButton.hidden = true;
    note.textContent = 'Enter an API key to see its recent runs.';
    return;
  }
  let page;
  try {
    const cursor = more ? `&cursor=${encodeURIComponent(state.historyCursor)}` : '';
    page = await callJSON(`/runs?limit=10${cursor}`);
  } catch (error) {
    if (epoch === state.historyEpoch) note.textContent = `History is unavailable: ${error.message}`;
    return;
  }
  if (epoch !== state.historyEpoch) return;
  const items = (page.runs || []).map(historyItem);
  if (more) list.append(...items);
  else list.replaceChildren(...items);
  note.textContent = list.children.length ? '' : 'No runs yet for this API key.';
  state.historyCursor = page.next_cursor ?? null;
  moreButton.hidden = !state.historyCursor;
  if (more && items.length) items[0].querySelector('button').focus(); // "Load more" may have just hidden
}

function historyItem(run) {
  const params = run.params || {};
  const button = el('button', {type: 'button', className: 'run'});
  if (typeof run.thumbnail === 'string' && run.thumbnail.startsWith('data:image/')) {
    button.append(el('img', {src: run.thumbnail, alt: ''}));
  }
  const status = el('span', {className: 'run-status', textContent: run.status});
  status.dataset.status = run.status;
  const meta = el('span', {className: 'run-meta'}, status);
  if (run.seeds?.length) meta.append(` · seed${run.seeds.length > 1 ? 's' : ''} ${run.seeds.join(', ')}`);
  if (typeof run.created_at === 'number') {
    const when = new Date(run.created_at * 1000);
    meta.append(' · ', el('time', {dateTime: when.toISOString(),
      textContent: when.toLocaleString(undefined, {dateStyle: 'medium', timeStyle: 'short'})}));
  }
  // Named by its prompt alone, described by the rest: a status like "canceled" in its name would make it
  // answer to "Cancel" too.
  const prompt = el('span', {className: 'run-prompt', id: `run-${run.run_id}`, textContent: params.prompt || '(no prompt)'});
  meta.id = `run-${run.run_id}-meta`;
  button.setAttribute('aria-labelledby', prompt.id);
  button.setAttribute('aria-describedby', meta.id);
  button.append(el('span', {className: 'run-text'}, prompt, meta));
  button.addEventListener('click', () => {
    for (const name of REFILLED) if (name in params) setValue(name, params[name]);
    if (params.image_source === 'file_url' && params.file_url) setValue('file_url', params.file_url);
    renderCode();
    $('history-note').textContent = `The form now holds the settings of run ${run.run_id}.`;
  });
  return el('li', {}, button);
}

// ---- Copy as code -------------------------------------------------------------------------------------

// Single quotes for the shell: nothing inside is expanded; a ' is closed, escaped, and reopened.
const shellQuote = (text) => `'${String(text).replaceAll("'", "'\\''")}'`;
// argparse takes a value starting with "-" for an option unless it is attached with "=".
const option = (name, text) => (String(text).startsWith('-') ? `${name}=${shellQuote(text)}` : `${name} ${shellQuote(text)}`);
// The model-specific fields a snippet may carry: (body field = client keyword, CLI option).
const MODEL_OPTIONS = [['aesthetic_score', '--aesthetic-score'], ['negative_aesthetic_score', '--negative-aesthetic-score']];
// JSON string and number literals are Python literals too (null aside).
const python = (value) => (value === undefined || value === null ? 'None' : JSON.stringify(value));

function renderCode() {
  const body = requestBody();
  const origin = location.origin;
  $('code-curl').textContent = [
    `curl -sS -X POST '${origin}/predict' \\`,
    '  -H "Authorization: $SD_API_KEY" \\',
    "  -H 'Content-Type: application/json' \\",
    "  --data-binary @- <<'JSON'",
    JSON.stringify(body), // the exact body Generate sends, image bytes included
    'JSON',
  ].join('\n');

  const file = state.image?.file.name;
  const scaled = state.image?.from ? `  # the page sends it scaled to ${state.image.width}x${state.image.height}` : '';
  const source = file ? `image=Path(${python(file)}),${scaled}`
    : body.file_url ? `file_url=${python(body.file_url)},`
      : 'image=Path("image.png"),  # no image chosen yet';
  $('code-python').textContent = [
    'import os',
    'from pathlib import Path',
    '',
    'from sd_img2img_client import Img2ImgClient, Img2ImgRequest',
    '',
    `with Img2ImgClient(${python(origin)}, os.environ["SD_API_KEY"]) as client:`,
    '    result = client.generate(Img2ImgRequest(',
    `        prompt=${python(body.prompt)},`,
    `        ${source}`,
    `        negative_prompt=${python(body.negative_prompt)},`,
    `        num_inference_steps=${python(body.num_inference_steps)},`,
    `        guidance_scale=${python(body.guidance_scale)},`,
    `        num_images_per_prompt=${python(body.num_images_per_prompt)},`,
    `        strength=${python(body.strength)},`,
    `        seed=${python(body.seed)},`,
    `        scheduler=${python(body.scheduler)},`,
    `        output_format=${python(body.output_format)},`,
    ...MODEL_OPTIONS.filter(([name]) => name in body).map(([name]) => `        ${name}=${python(body[name])},`),
    '    ))',
    'for path in result.save("."):  # <run_id>_<seed>.<ext>',
    '    print(path)',
  ].join('\n');

  let input = file ?? body.file_url ?? 'image.png';
  if (input.startsWith('-')) input = `./${input}`; // a file name, not an option
  const cli = ['img2img', shellQuote(input), option('--prompt', body.prompt),
    option('--negative-prompt', body.negative_prompt), `--strength ${body.strength}`,
    `--steps ${body.num_inference_steps}`, `--guidance ${body.guidance_scale}`,
    `--num-images ${body.num_images_per_prompt}`];
  if (body.seed !== undefined) cli.push(`--seed ${body.seed}`);
  if (body.scheduler) cli.push(option('--scheduler', body.scheduler));
  for (const [name, flag] of MODEL_OPTIONS) if (name in body) cli.push(`${flag} ${body[name]}`);
  cli.push(`--format ${body.output_format}`, `--url ${shellQuote(origin)}`, '--api-key "$SD_API_KEY"');
  $('code-cli').textContent = cli.join(' ');
}

async function copyCode(button) {
  const pre = $(button.dataset.copy);
  let done = 'Copied';
  try {
    await navigator.clipboard.writeText(pre.textContent);
  } catch { // no clipboard API (plain http off localhost) or no permission: select it for Ctrl+C
    getSelection().selectAllChildren(pre);
    done = 'Press Ctrl+C';
  }
  button.textContent = done;
  setTimeout(() => { button.textContent = 'Copy'; }, 1500);
}

// ---- Start --------------------------------------------------------------------------------------------

function storeKey() {
  try {
    if (keyInput.value) sessionStorage.setItem(KEY_STORAGE, keyInput.value);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch { /* storage disabled: the key lives in the field only */ }
}

$('fields').replaceChildren(...Object.entries(FIELDS).map(([name, spec]) => buildField(name, spec)));
try {
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) ?? '';
} catch { /* storage disabled */ }

form.addEventListener('submit', (event) => {
  event.preventDefault(); // never a browser submission (CSP form-action 'none')
  generate();
});
form.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey) && event.target.matches('textarea')) {
    event.preventDefault();
    form.requestSubmit();
  }
});
form.addEventListener('input', renderCode); // every control fires input (select and file inputs too)
keyInput.addEventListener('input', storeKey);
keyInput.addEventListener('change', () => loadHistory());
cancelButton.addEventListener('click', cancelRun);
$('more').addEventListener('click', () => loadHistory(true));
for (const button of document.querySelectorAll('[data-copy]')) button.addEventListener('click', () => copyCode(button));
listenForImages();

const ready = (async () => {
  const response = await fetch('/openapi.json', {cache: 'no-cache'}); // public: no key sent
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  applySchema(await response.json());
  generateButton.disabled = false;
  renderCode();
})();
ready.catch((error) => showAlert(`Could not set up the form from /openapi.json: ${error.message}`));
window.playground = {FIELDS, OMITTED, ready};
loadHistory();
