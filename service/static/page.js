"use strict";
// The try-it page: calls the service's own API (POST /segment, GET and POST /vocab) from the browser.

const KEY_STORAGE = "lsmseg.apiKey";

// A sentence in words for each status the API answers; the API's own message follows it.
const FRIENDLY = {
  400: "The service could not read the image or the request.",
  401: "The service needs an API key, or the key given is wrong. Enter it in the API key field.",
  404: "The service does not know that vocabulary.",
  409: "That name is already taken by a different list of classes.",
  413: "The image is too large for this service.",
  415: "That file is not an image the service reads. Use a PNG, JPEG or WebP file.",
  422: "Something in the request is not valid.",
  503: "The service is not ready or is busy right now.",
};

const $ = (id) => document.getElementById(id);
let chosenImage = null; // the File to segment
let previewUrl = null;  // object URL of chosenImage

class ApiFailure extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  // A sentence for people; the API's own message goes beside it as the detail.
  sentence() {
    if (this.status === 0) return "Could not reach the service.";
    let text = FRIENDLY[this.status] || `The service answered with an error (HTTP ${this.status}).`;
    if (this.retryAfter) text += ` Try again in ${this.retryAfter} s.`;
    return text;
  }

  describe() {
    return `${this.sentence()} ${this.message}`;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// fetch() a path of this server; resolves to the JSON body (or null), throws ApiFailure on any error.
async function callApi(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...authHeaders(), ...options.headers } });
  } catch (error) {
    throw new ApiFailure(0, "network", "Is it running? (A very large upload can also be cut off.)");
  }
  const body = await response.json().catch(() => null);
  if (response.ok) return body;
  const error = (body && body.error) || {};
  throw new ApiFailure(response.status, error.code || "error",
    error.message || response.statusText || "no details", response.headers.get("Retry-After"));
}

function splitNames(text) {
  return text.split(",").map((name) => name.trim()).filter((name) => name.length > 0);
}

// Shows an ApiFailure (a sentence, then the API's message) or a plain text in a box.
function showFailure(box, failure) {
  if (failure instanceof ApiFailure) {
    const sentence = document.createElement("strong");
    sentence.textContent = failure.sentence();
    const detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = failure.message;
    box.replaceChildren(sentence, " ", detail);
  } else {
    box.textContent = String(failure);
  }
  box.hidden = false;
}

function showError(failure) {
  showFailure($("error"), failure);
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// Image choice --------------------------------------------------------------------------------------------
function chooseImage(file) {
  chosenImage = file || null;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = chosenImage ? URL.createObjectURL(chosenImage) : null;
  $("preview").hidden = !previewUrl;
  if (previewUrl) $("preview").src = previewUrl;
  $("result").hidden = true;
  clearError();
}

function setUpDropZone() {
  const zone = $("drop-zone");
  $("image").addEventListener("change", () => chooseImage($("image").files[0]));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) chooseImage(file);
  });
}

// Examples: scenes the demo model knows (service/static/examples, written by training/demo/examples.py) ---
async function loadExamples() {
  let listed;
  try {
    const response = await fetch("/static/examples/examples.json");
    if (!response.ok) return;
    listed = (await response.json()).examples;
  } catch (error) {
    return; // no examples: the section stays hidden
  }
  const buttons = listed.map((example) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "example";
    button.dataset.example = example.name;
    button.title = example.classes.join(", ");
    const image = document.createElement("img");
    image.src = `/static/examples/${example.file}`;
    image.alt = `Example scene: ${example.classes.join(", ")}`;
    button.append(image);
    button.addEventListener("click", () => tryExample(example));
    return button;
  });
  $("example-list").replaceChildren(...buttons);
  $("examples").hidden = buttons.length === 0;
}

async function tryExample(example) {
  clearError();
  try {
    const response = await fetch(`/static/examples/${example.file}`);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    chooseImage(new File([await response.blob()], example.file, { type: "image/png" }));
  } catch (error) {
    showError(`Could not load the example (${error.message}).`);
    return;
  }
  $("vocab-select").value = "";
  vocabChanged();
  $("classes").value = example.classes.join(", ");
  $("segment-form").requestSubmit();
}

// Segmentation --------------------------------------------------------------------------------------------
function setBusy(busy) {
  const button = $("segment-button");
  button.disabled = busy;
  button.textContent = busy ? "Segmenting…" : "Segment";
  $("progress").hidden = !busy;
  $("segment-form").setAttribute("aria-busy", String(busy));
}

async function segment(event) {
  event.preventDefault();
  clearError();
  if (!chosenImage) {
    showError("Choose an image first.");
    return;
  }
  const form = new FormData();
  form.append("image", chosenImage);
  const vocab = $("vocab-select").value;
  if (vocab) form.append("vocab_id", vocab);
  else form.append("classes", JSON.stringify(splitNames($("classes").value)));
  form.append("overlay", "true");
  setBusy(true);
  try {
    showResult(await callApi("/segment", { method: "POST", body: form }));
  } catch (failure) {
    $("result").hidden = true;
    showError(failure);
  } finally {
    setBusy(false);
  }
}

function showResult(body) {
  const overlayUrl = `data:image/png;base64,${body.overlay.data}`;
  const image = $("overlay");
  image.dataset.overlay = overlayUrl;
  image.src = $("show-overlay").checked ? overlayUrl : previewUrl;

  const pixels = body.width * body.height;
  const rows = [...body.segments].sort((a, b) => b.area - a.area).map((segment) => {
    const row = document.createElement("tr");
    const name = document.createElement("th");
    name.scope = "row";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.backgroundColor = segment.colour;
    swatch.title = segment.colour;
    swatch.setAttribute("aria-hidden", "true");
    name.append(swatch, segment.class);
    row.append(name, cell(`${(100 * segment.area / pixels).toFixed(1)} %`), cell(segment.score.toFixed(2)));
    row.dataset.class = segment.class;
    return row;
  });
  $("legend").tBodies[0].replaceChildren(...rows);

  const stages = Object.entries(body.timings_ms).map(([stage, ms]) => {
    const row = document.createElement("tr");
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = stage;
    row.append(name, cell(ms.toFixed(1)));
    return row;
  });
  $("timings").tBodies[0].replaceChildren(...stages);
  $("result").hidden = false;
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function toggleOverlay() {
  const image = $("overlay");
  if (image.dataset.overlay) image.src = $("show-overlay").checked ? image.dataset.overlay : previewUrl;
}

// Vocabularies --------------------------------------------------------------------------------------------
async function loadVocabularies(select) {
  const picker = $("vocab-select");
  const keep = select || picker.value;
  try {
    const body = await callApi("/vocab");
    const options = body.vocabularies.map((vocab) => {
      const label = vocab.name || vocab.vocab_id;
      const kind = vocab.builtin ? "built-in, " : "";
      return new Option(`${label} (${kind}${vocab.num_classes} classes)`, vocab.name || vocab.vocab_id);
    });
    picker.replaceChildren(picker.options[0], ...options);
    picker.value = [...picker.options].some((option) => option.value === keep) ? keep : "";
    $("vocab-status").textContent = "";
  } catch (failure) {
    $("vocab-status").textContent = `Could not list the vocabularies. ${failure.describe()}`;
  }
  vocabChanged();
}

function vocabChanged() {
  // A chosen vocabulary replaces the typed class names.
  $("classes").disabled = $("vocab-select").value !== "";
}

async function registerVocabulary(event) {
  event.preventDefault();
  const message = $("vocab-message");
  const button = $("vocab-button");
  const name = $("vocab-name").value.trim();
  const body = { classes: splitNames($("vocab-classes").value) };
  if (name) body.name = name;
  button.disabled = true;
  message.className = "";
  message.textContent = "Registering…";
  try {
    const vocab = await callApi("/vocab", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    message.textContent = `Registered ${vocab.name || vocab.vocab_id} (${vocab.num_classes} classes); ` +
      "it is now chosen in the Vocabulary list.";
    await loadVocabularies(vocab.name || vocab.vocab_id);
  } catch (failure) {
    message.className = "error";
    showFailure(message, failure);
  } finally {
    button.disabled = false;
  }
}

// Service state and API key -------------------------------------------------------------------------------
async function checkService() {
  const status = $("model-status");
  try {
    const response = await fetch("/readyz");
    const body = await response.json();
    const model = body.model;
    status.classList.toggle("warning", body.status !== "ready" || Boolean(model && model.random_weights));
    if (body.status !== "ready") {
      status.textContent = `The model is ${body.status}; segmentation works once it is ready.`;
      setTimeout(checkService, 5000);
    } else if (model && model.random_weights) {
      status.textContent = `Model ${model.name} on ${model.device} has RANDOM weights: its masks are meaningless.`;
    } else {
      status.textContent = `Model ${model ? model.name : "?"} is ready${model ? ` on ${model.device}` : ""}.`;
    }
    showDomain(model);
  } catch (error) {
    status.textContent = "Could not reach the service.";
  }
}

// What the loaded model knows (its checkpoint's "domain"); for the demo, how to get a model of real photos.
function showDomain(model) {
  const domain = model && model.domain;
  $("model-notice").hidden = !domain;
  if (!domain) return;
  $("model-domain").textContent = domain;
  $("real-photos-hint").hidden = !/synthetic/i.test(domain);
}

function setUpApiKey() {
  const field = $("api-key");
  field.value = sessionStorage.getItem(KEY_STORAGE) || "";
  field.addEventListener("input", () => {
    if (field.value) sessionStorage.setItem(KEY_STORAGE, field.value);
    else sessionStorage.removeItem(KEY_STORAGE);
  });
  field.addEventListener("change", () => loadVocabularies());
}

document.addEventListener("DOMContentLoaded", () => {
  setUpDropZone();
  setUpApiKey();
  $("segment-form").addEventListener("submit", segment);
  $("vocab-form").addEventListener("submit", registerVocabulary);
  $("vocab-select").addEventListener("change", vocabChanged);
  $("show-overlay").addEventListener("change", toggleOverlay);
  checkService();
  loadVocabularies();
  loadExamples();
});
