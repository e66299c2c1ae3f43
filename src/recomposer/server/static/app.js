// recomposer's web app: one page per task family over the HTTP API (server/app.py). No build step, no framework.
// A page is one entry in PAGES: the task it submits, the request fields shown first, and how each input is given
// (an upload, a drawing over another input, or lines on paper). Every other request field is built from the
// task's own field list (GET /api/tasks), so a new method's panel is one entry here and one task on the server.

const PAGES = {
  generate: {title: "Generate", task: "generate", main: ["prompt", "negative"],
             inputs: {image: "upload", mask: "mask:image", control_image_1: "lines"},
             hint: "Text to image; give an image for img2img, and draw a mask over it to inpaint. A ControlNet " +
                   "needs its settings under “controls” and its hint (control_image_1)."},
  compose: {title: "Compose", task: "compose", special: "compose"},
  instruct: {title: "Instruct", task: "instruct", main: ["instruction"], inputs: {image: "upload"},
             hint: "Edit an image by an instruction (InstructPix2Pix), or by an edit learnt from a before/after " +
                   "pair (Visii).", extra: visiiSection},
  composite: {title: "Composite", task: "composite", main: ["prompt", "application"],
              inputs: {background: "paint", mask: "mask:background", object: "upload"},
              hint: "Cross-domain compositing: paste an object on a background (or paint scribbles over it, with " +
                    "the scribble application), mark the region, and let masked ILVR blend it in."},
  interpolate: {title: "Interpolate", task: "interpolate", main: ["caption", "frames"],
                inputs: {first: "upload", last: "upload", sketch: "upload"},
                hint: "Frames between two images' semantics/style and palettes (Composer), from one seed; the sketch " +
                      "of a third image keeps every frame's layout."},
  p2p: {title: "Prompt-to-Prompt", task: "p2p", main: ["source", "edited"], inputs: {},
        hint: "Two prompts that differ by a word: the second image keeps the first one's layout. To edit a real " +
              "image, invert it first (under the source prompt).", extra: inversionSection},
};
const PREPARED_ON = {decompose: "compose", visii: "instruct", invert: "p2p"};  // jobs that prepare another's input
const COMMON = ["steps", "guidance", "seed", "batch"];  // shown on every page beside its main fields
const COMPOSE_KINDS = ["image_embedding", "palette", "sketch", "instances", "depth", "intensity"];
const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) if (child != null) node.append(child);
  return node;
};
let TASKS = {}, current = null, running = null, source = null;

// --- the API ---------------------------------------------------------------------------------------------
async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const e = body?.error || {message: response.statusText};
    const retry = response.headers.get("retry-after");
    const named = e.field && !e.message.startsWith(e.field) ? e.field + ": " : "";
    throw new Error(named + e.message + (retry ? ` (retry after ${retry} s)` : ""));
  }
  return body;
}
const post = (path, data) => api(path, {method: "POST", headers: {"content-type": "application/json"},
                                        body: JSON.stringify(data)});

async function upload(blob, filename = "drawing.png") {
  const form = new FormData();
  form.append("file", blob, filename);
  return api("/api/uploads", {method: "POST", body: form});
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// --- form fields from the task's request fields ----------------------------------------------------------
function fieldInput(f, value) {
  const type = f.type;
  let input;
  if (f.choices) {  // a field with a fixed list of values
    input = el("select", {}, ...f.choices.map((c) => el("option", {value: c, textContent: c})));
    input.value = value ?? f.choices[0];
  } else if (type.includes("bool")) {
    input = el("input", {type: "checkbox", checked: !!value});
  } else if (/\b(int|float)\b/.test(type) && !type.includes("tuple") && !type.includes("Mapping")) {
    input = el("input", {type: "number", step: type.includes("int") && !type.includes("float") ? "1" : "any",
                         value: value ?? ""});
  } else if (type.includes("str") && !type.includes("tuple") && !type.includes("Mapping")) {
    input = f.name === "prompt" || f.name === "caption" || f.name === "instruction"
      ? el("textarea", {value: value ?? ""}) : el("input", {type: "text", value: value ?? ""});
  } else {
    input = el("textarea", {value: JSON.stringify(value ?? null)});
    input.dataset.json = "1";
  }
  input.name = f.name;
  input.dataset.type = type;
  return el("label", {className: "field"}, el("span", {textContent: f.name.replaceAll("_", " ")}), input);
}

function readField(input) {
  const type = input.dataset.type;
  if (input.type === "checkbox") return input.checked;
  if (input.dataset.json) {
    try { return JSON.parse(input.value || "null"); } catch { throw new Error(`${input.name}: not valid JSON`); }
  }
  if (input.type === "number") {
    if (input.validity.badInput) throw new Error(`${input.name}: must be a number`);
    if (input.value === "") return type.includes("None") ? null : undefined;
    return Number(input.value);
  }
  if (input.value === "" && type.includes("None")) return null;
  return input.value;
}

function fieldsBlock(task, main, values = {}, skip = []) {
  const all = TASKS[task].fields.filter((f) => !skip.includes(f.name));
  const first = el("div", {className: "grid"}), rest = el("div", {className: "grid"});
  for (const name of [...main, ...COMMON]) {
    const f = all.find((x) => x.name === name);
    if (f) first.append(fieldInput(f, name in values ? values[name] : f.default));
  }
  for (const f of all) {
    if (!main.includes(f.name) && !COMMON.includes(f.name)) {
      rest.append(fieldInput(f, f.name in values ? values[f.name] : f.default));
    }
  }
  return el("div", {}, first, el("details", {}, el("summary", {textContent: "settings"}), rest));
}

function readRequest(container) {
  const request = {};
  for (const input of container.querySelectorAll("[data-type]")) {
    const value = readField(input);
    if (value !== undefined) request[input.name] = value;
  }
  return request;
}

// --- image slots: upload, draw, show ------------------------------------------------------------------------
function fileUrl(name) {
  if (!name) return null;
  const m = name.match(/results\/([0-9a-f]{32})\/(.+)$/) || name.match(/^([0-9a-f]{32})\/(.+)$/);
  if (m) return `/api/jobs/${m[1]}/files/${m[2].replace(/\.json$/, ".png")}`;
  if (/\/uploads\/[0-9a-f]{32}\.png$/.test(name) || !name.includes("/")) {
    return `/api/uploads/${name.split("/").pop()}`;
  }
  return `/api/inputs/${encodeURIComponent(name)}`;  // a file of an --inputs folder (a reused job's)
}

function slot(name, how, slots) {
  const state = {name: null, drawn: false, dropped: false};
  const picture = el("img", {alt: name, hidden: true});
  const box = el("div", {className: "slot"}, el("div", {className: "name", textContent: name.replaceAll("_", " ")}),
                 picture);
  const set = (uploaded, drawn = false) => {
    Object.assign(state, {name: uploaded, drawn, dropped: false});
    picture.src = fileUrl(uploaded) + "?" + Date.now();
    picture.hidden = !uploaded;
    box.classList.toggle("filled", !!uploaded);
    box.classList.remove("dropped");
  };
  const file = el("input", {type: "file", accept: "image/*"});
  file.dataset.slot = name;
  file.onchange = async () => {
    showError("");
    try { set((await upload(file.files[0], file.files[0].name)).name); } catch (e) { showError(e.message); }
    file.value = "";
  };
  box.append(el("label", {className: "upload"}, "upload", file));
  if (how.startsWith("mask:") || how === "lines" || how === "paint") {
    const under = how.startsWith("mask:") ? how.slice(5) : how === "paint" ? name : null;
    box.append(el("button", {type: "button", textContent: "draw", onclick: async () => {
      const background = under ? slots[under]?.state.name : null;
      if (under && !background) {
        return showError(how === "paint" ? `${name}: upload it first, then paint over it`
                                         : `${name}: give the ${under} first, then draw the mask over it`);
      }
      const mode = how.startsWith("mask:") ? "mask" : how === "paint" ? "paint" : "lines";
      const blob = await draw(name, mode, background && fileUrl(background));
      if (blob) {
        try { set((await upload(blob)).name, how === "lines"); } catch (e) { showError(e.message); }
      }
    }}));
  }
  box.append(el("button", {type: "button", textContent: "clear", onclick: () => {
    Object.assign(state, {name: null, drawn: false}); picture.hidden = true; box.classList.remove("filled");
  }}));
  box.dataset.slot = name;
  return {box, state, set, picture};
}

// --- the drawing dialog: masks (white = change) over an image, black lines on paper, or colours over a picture ---
function draw(title, mode, backgroundUrl) {
  return new Promise(async (resolve) => {
    const dialog = $("drawing"), canvas = $("canvas"), ctx = canvas.getContext("2d");
    $("drawing-title").textContent = {mask: `${title}: paint the region to change`, lines: `${title}: draw lines`,
                                      paint: `${title}: paint over it (scribbles in the colour chosen)`}[mode];
    $("colour").hidden = mode !== "paint";
    let background = null;
    if (backgroundUrl) {
      background = new Image();
      background.src = backgroundUrl;
      await background.decode();
    }
    const side = background ? Math.max(background.width, background.height) : 256;
    const scale = Math.max(1, Math.round(384 / side));
    canvas.width = background ? background.width : 256;
    canvas.height = background ? background.height : 256;
    canvas.style.width = canvas.width * scale + "px";
    canvas.style.height = canvas.height * scale + "px";
    const strokes = document.createElement("canvas");  // what is exported: the strokes alone
    strokes.width = canvas.width; strokes.height = canvas.height;
    const sctx = strokes.getContext("2d");
    let erasing = false, down = false, last = null;
    const paint = () => {
      ctx.imageSmoothingEnabled = false;
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      if (background) ctx.drawImage(background, 0, 0);
      else { ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height); }
      ctx.globalAlpha = mode === "mask" ? 0.55 : 1;
      ctx.drawImage(strokes, 0, 0);
      ctx.globalAlpha = 1;
    };
    const at = (e) => {
      const r = canvas.getBoundingClientRect();
      return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
    };
    const line = (a, b) => {
      sctx.globalCompositeOperation = erasing ? "destination-out" : "source-over";
      sctx.strokeStyle = mode === "mask" ? "#ff3030" : mode === "paint" ? $("colour").value : "#000";
      sctx.lineWidth = Number($("brush").value) / scale * (mode === "mask" ? 2 : 1);
      sctx.lineCap = sctx.lineJoin = "round";
      sctx.beginPath(); sctx.moveTo(...a); sctx.lineTo(...b); sctx.stroke();
      paint();
    };
    canvas.onpointerdown = (e) => { down = true; last = at(e); line(last, last); canvas.setPointerCapture(e.pointerId); };
    canvas.onpointermove = (e) => { if (down) { const p = at(e); line(last, p); last = p; } };
    canvas.onpointerup = () => { down = false; };
    $("erase").onclick = () => { erasing = !erasing; $("erase").textContent = erasing ? "Brush" : "Eraser"; };
    $("clear").onclick = () => { sctx.clearRect(0, 0, strokes.width, strokes.height); paint(); };
    paint();
    dialog.onclose = () => {
      if (dialog.returnValue !== "ok") return resolve(null);
      const out = document.createElement("canvas");
      out.width = strokes.width; out.height = strokes.height;
      const octx = out.getContext("2d");
      octx.fillStyle = mode === "mask" ? "#000" : "#fff";
      octx.fillRect(0, 0, out.width, out.height);
      if (mode === "paint") octx.drawImage(background, 0, 0);  // the picture with the scribbles on it
      if (mode === "mask") {  // every painted pixel white
        const data = sctx.getImageData(0, 0, out.width, out.height), o = octx.getImageData(0, 0, out.width, out.height);
        for (let i = 0; i < data.data.length; i += 4) if (data.data[i + 3] > 0) o.data.fill(255, i, i + 3);
        octx.putImageData(o, 0, 0);
      } else {
        octx.drawImage(strokes, 0, 0);
      }
      out.toBlob(resolve, "image/png");
    };
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// --- running a job: submit, follow its events, show the result ---------------------------------------------
async function submit(job) {
  showError("");
  job.model = $("model").value || null;
  try {
    const queued = await post("/api/jobs", job);
    follow(queued.id);
    return queued;
  } catch (e) {
    showError(e.message);
    return null;
  }
}

function follow(id) {
  if (source) source.close();
  running = id;
  $("run").className = "run busy";
  $("cancel").hidden = false;
  $("run-state").textContent = "queued";
  delete $("run-state").dataset.state;
  $("bar-fill").style.width = "0";
  $("preview").hidden = true;
  source = new EventSource(`/api/jobs/${id}/events`);
  source.addEventListener("progress", (e) => {
    const p = JSON.parse(e.data);
    $("run-state").textContent = `running: step ${p.step} of ${p.total}`;
    $("bar-fill").style.width = (p.total ? 100 * p.step / p.total : 0) + "%";
    if (p.preview) { $("preview").src = p.preview; $("preview").hidden = false; }
  });
  source.addEventListener("state", (e) => { $("run-state").textContent = JSON.parse(e.data).state; });
  source.addEventListener("end", (e) => {
    source.close(); source = null; running = null;
    const job = JSON.parse(e.data);
    $("cancel").hidden = true;
    $("run").className = "run idle";
    $("run-state").textContent = job.state + (job.reason ? `: ${job.reason}` : "");
    $("run-state").dataset.state = job.state;
    $("preview").hidden = true;
    if (job.state === "done") { $("bar-fill").style.width = "100%"; showResults(job); }
    if (job.state === "failed") showError(job.reason);
    refreshHistory();
  });
}
// A job's final record, from its own event stream (the run panel may move on to another job meanwhile).
const whenFinished = (id) => new Promise((resolve) => {
  const stream = new EventSource(`/api/jobs/${id}/events`);
  stream.addEventListener("end", (e) => { stream.close(); resolve(JSON.parse(e.data)); });
});

function showResults(job) {
  const box = $("results");
  box.replaceChildren(...(job.result?.notes || []).map((note) => el("p", {className: "note", textContent: note})));
  for (const name of job.result?.images || []) {
    if (job.kind === "decompose" && name !== "sheet.png") continue;
    box.append(el("a", {href: `/api/jobs/${job.id}/files/${name}`, target: "_blank"},
                  el("img", {src: `/api/jobs/${job.id}/files/${name}`, alt: name,
                             className: name === "sheet.png" ? "sheet" : "result"})));
  }
}

$("cancel").onclick = async () => {
  if (!running) return;
  try { await api(`/api/jobs/${running}`, {method: "DELETE"}); } catch (e) { showError(e.message); }
};

// --- history: every job with its provenance, and "use these settings again" ---------------------------------
async function refreshHistory() {
  const jobs = await api("/api/jobs?limit=30");
  $("history").replaceChildren(...jobs.map((job) => {
    const req = job.request.request || {};
    const words = req.prompt || req.caption || req.instruction || req.edited || "";
    const thumbs = (job.result?.images || []).filter((n) => job.kind !== "decompose" || n === "input.png")
      .slice(0, 4).map((n) => el("img", {src: `/api/jobs/${job.id}/files/${n}`, alt: n}));
    const record = job.result?.provenance?.[0] || job.result?.summary || {reason: job.reason};
    return el("li", {className: "state-" + job.state}, ...thumbs,
              el("b", {textContent: job.kind}), ` ${job.state} `, el("span", {textContent: words.slice(0, 60)}),
              el("details", {}, el("summary", {textContent: "provenance"}),
                 el("pre", {textContent: JSON.stringify(record, null, 1)}),
                 el("button", {type: "button", textContent: "Use these settings again",
                               onclick: () => reuse(job)})));
  }));
}

function reuse(job) {
  const task = job.request.task;
  const page = Object.keys(PAGES).find((k) => PAGES[k].task === task) || PREPARED_ON[task];
  if (!page) return showError(`no page for ${task}`);
  $("model").value = job.request.model || "";
  if ($("model").value !== (job.request.model || "")) {
    return showError(`model: ${job.request.model} is not among this server's models any more`);
  }
  open(page, job.request);
}

// --- pages -------------------------------------------------------------------------------------------------
function open(name, from = null) {
  current = name;
  for (const b of $("tabs").children) b.classList.toggle("active", b.dataset.page === name);
  const page = PAGES[name];
  const root = $("page");
  root.replaceChildren(el("h2", {textContent: page.title}));
  if (page.special === "compose") return composePage(root, from);
  if (page.hint) root.append(el("p", {className: "hint", textContent: page.hint}));
  const slots = {};
  const holder = el("div", {className: "slots"});
  for (const [input, how] of Object.entries(page.inputs)) {
    slots[input] = slot(input, how, slots);
    holder.append(slots[input].box);
    if (from?.inputs?.[input]) slots[input].set(from.inputs[input]);
  }
  const form = fieldsBlock(page.task, page.main, from?.request || {});
  const go = el("button", {className: "primary", type: "button", textContent: "Run " + page.title});
  const prepared = {inputs: {}, request: {}};  // what an extra section (an inversion, a learnt edit) adds
  for (const [input, name] of Object.entries(from?.inputs || {})) {
    if (!(input in page.inputs) && page.task === from.task) prepared.inputs[input] = name;  // kept when reused
  }
  go.onclick = () => {
    let request;
    try { request = readRequest(form); } catch (e) { return showError(e.message); }
    const inputs = {...prepared.inputs};
    for (const [input, s] of Object.entries(slots)) if (s.state.name) inputs[input] = s.state.name;
    submit({task: page.task, request: {...request, ...prepared.request}, inputs});
  };
  root.append(holder, form);
  if (page.extra) root.append(page.extra(form, prepared));  // (after the fields it reads, e.g. the source prompt)
  root.append(go);
}

// A step that prepares a job's input by another job (a Visii instruction, an inversion): its own slots and button.
function preparation(title, slotNames, button, run, numbers = {}) {
  const slots = {}, row = el("div", {className: "slots"}), note = el("p", {className: "hint"});
  for (const name of slotNames) { slots[name] = slot(name, "upload", slots); row.append(slots[name].box); }
  const values = {}, settings = el("div", {className: "grid"});
  for (const [name, value] of Object.entries(numbers)) {
    values[name] = el("input", {type: "number", value});
    settings.append(el("label", {className: "field"}, el("span", {textContent: name}), values[name]));
  }
  const go = el("button", {type: "button", textContent: button});
  go.onclick = async () => {
    for (const name of slotNames) if (!slots[name].state.name) return showError(`${name}: upload it first`);
    const numbers = Object.fromEntries(Object.entries(values).map(([k, input]) => [k, Number(input.value)]));
    note.textContent = await run(slots, numbers) || "";
  };
  return el("details", {}, el("summary", {textContent: title}), row, settings, go, note);
}

function visiiSection(form, prepared) {
  return preparation("learn the edit from a before/after pair (Visii)", ["before", "after"], "Learn this edit",
    async (slots, numbers) => {
      const steps = Object.values(numbers)[0];
      const job = await submit({task: "visii", request: {steps},
                                inputs: {before: slots.before.state.name, after: slots.after.state.name}});
      const done = job && await whenFinished(job.id);
      if (done?.state !== "done") return "";
      prepared.inputs.learned = `${done.id}/instruction.safetensors`;
      prepared.request.learned = done.result.summary.sha256;
      return `Instruct now applies the learnt edit (${prepared.request.learned.slice(0, 12)}…); the instruction ` +
             "field adds words after it.";
    }, {"optimisation steps (the reference: 1000)": 200});
}

function inversionSection(form, prepared) {
  return preparation("edit a real image: invert it under the source prompt", ["image"], "Invert this image",
    async (slots) => {
      const request = readRequest(form);
      const job = await submit({task: "invert", inputs: {image: slots.image.state.name},
                                request: {prompt: request.source, steps: request.steps, guidance: request.guidance,
                                          method: "direct"}});
      const done = job && await whenFinished(job.id);
      if (done?.state !== "done") return "";
      prepared.inputs.inversion = `${done.id}/inversion.json`;
      return `Prompt-to-Prompt now edits the inverted image (keep the source prompt and ${request.steps} DDIM steps).`;
    });
}

function composePage(root, from) {
  root.append(el("p", {className: "hint", textContent:
    "Decompose an image into its conditions, then keep, drop, replace or redraw any of them and recompose: " +
    "each condition can come from a different image."}));
  const slots = {};
  const image = slot("image", "upload", slots);
  slots.image = image;
  const decomposeButton = el("button", {type: "button", textContent: "Decompose this image"});
  const cards = el("div", {className: "slots"});
  const kinds = {};
  for (const kind of COMPOSE_KINDS) {
    const s = slot(kind, kind === "sketch" ? "lines" : "upload", slots);
    const drop = el("button", {type: "button", textContent: "drop", onclick: () => {
      s.state.dropped = !s.state.dropped;
      s.box.classList.toggle("dropped", s.state.dropped);
      drop.textContent = s.state.dropped ? "keep" : "drop";
    }});
    s.box.append(drop);
    kinds[kind] = s;
    cards.append(s.box);
    if (from?.inputs?.[kind]) s.set(from.inputs[kind], (from.request?.drawn || []).includes(kind));
  }
  const region = el("div", {className: "slots"});
  slots.region_image = slot("region_image", "upload", slots);
  slots.mask = slot("mask", "mask:region_image", slots);
  region.append(slots.region_image.box, slots.mask.box);
  if (from?.inputs?.image) slots.region_image.set(from.inputs.image);
  if (from?.inputs?.mask) slots.mask.set(from.inputs.mask);
  decomposeButton.onclick = async () => {
    if (!image.state.name) return showError("image: upload an image to decompose");
    const job = await submit({task: "decompose", request: {}, inputs: {image: image.state.name}});
    if (!job) return;
    const done = await whenFinished(job.id);
    if (done.state !== "done") return;
    for (const kind of COMPOSE_KINDS) {
      if (done.result.summary.kinds.includes(kind)) kinds[kind].set(`${done.id}/${kind}.json`);
    }
    slots.region_image.set(`${done.id}/input.png`);
  };
  const form = fieldsBlock("compose", ["caption"], from?.request || {}, ["drawn"]);
  const go = el("button", {className: "primary", type: "button", textContent: "Recompose"});
  go.onclick = () => {
    let request;
    try { request = readRequest(form); } catch (e) { return showError(e.message); }
    const inputs = {}, drawn = [];
    for (const [kind, s] of Object.entries(kinds)) {
      if (s.state.name && !s.state.dropped) {
        inputs[kind] = s.state.name;
        if (s.state.drawn) drawn.push(kind);
      }
    }
    if (slots.mask.state.name) Object.assign(inputs, {image: slots.region_image.state.name, mask: slots.mask.state.name});
    submit({task: "compose", request: {...request, drawn}, inputs});
  };
  root.append(el("div", {className: "slots"}, image.box), decomposeButton,
              el("h2", {textContent: "Conditions"}), cards,
              el("details", {}, el("summary", {textContent: "edit a region (keep everything outside the mask)"}),
                 region),
              form, go);
}

async function start() {
  TASKS = await api("/api/tasks");
  for (const [name, page] of Object.entries(PAGES)) {
    if (page.task && !TASKS[page.task]) continue;
    const tab = el("button", {type: "button", textContent: page.title, onclick: () => {
      if (location.hash === "#" + name) open(name); else location.hash = name;
    }});
    tab.dataset.page = name;
    $("tabs").append(tab);
  }
  const models = await api("/api/models");
  $("model").replaceChildren(...models.models.map((m) => el("option", {value: m.name ?? "",
    textContent: m.label + (m.adapters.length ? ` (${m.adapters.join(", ")})` : "")})));
  const route = () => open(location.hash.slice(1) in PAGES ? location.hash.slice(1) : "generate");
  window.addEventListener("hashchange", route);
  route();
  refreshHistory();
}
start().catch((e) => showError(e.message));
