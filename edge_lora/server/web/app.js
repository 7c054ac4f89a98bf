// The page: a chat with any mix of the loaded adapters, a compare view that sends one conversation
// to several mixes at once, and adapter loading from the server's --adapter-dir.
import { ApiError, call, json, streamChat } from "./api.js";
import { renderMarkdown, schemaProblems } from "./render.js";

const $ = (id) => document.getElementById(id);
const state = {
  model: null,          // the base's model id
  adapters: [],         // [{name, scale (the default), enabled, value}]
  messages: [],         // the chat's conversation: {role, content}
  running: null,        // the chat's AbortController while a generation runs
  compare: { columns: [], running: [] },
};

// --- errors ------------------------------------------------------------------------------
function showError(err) {
  const box = $("error");
  box.textContent = err instanceof ApiError ? err.message : String(err && err.message ? err.message : err);
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { box.hidden = true; }, 15000);
}

// --- adapters ----------------------------------------------------------------------------
async function refreshAdapters() {
  const models = await json("/v1/models");
  const base = models.data.find((m) => !m.parent);
  state.model = base.id;
  $("model").textContent = `${base.id} · chat template: ${base.chat_template} · context ${base.n_ctx}`;
  const listed = await json("/lora-adapters");
  const old = new Map(state.adapters.map((a) => [a.name, a]));
  state.adapters = listed.map((a) => {
    const prev = old.get(a.name);
    return { name: a.name, scale: a.scale, enabled: prev ? prev.enabled : false, value: prev ? prev.value : a.scale };
  });
  drawAdapters();
  drawColumns();
  const files = await json("/v1/adapter_files");
  $("loader").hidden = !files.enabled;
  const select = $("files");
  select.replaceChildren(...files.data.map((f) => {
    const o = document.createElement("option");
    o.value = f.path;
    o.textContent = `${f.path} (${f.kind === "gguf" ? "GGUF" : "checkpoint, converted on load"}, ${(f.bytes / 1e6).toFixed(1)} MB)`;
    return o;
  }));
}

function drawAdapters() {
  const list = $("adapters");
  list.replaceChildren(...state.adapters.map((a) => {
    const li = document.createElement("li");
    li.className = "adapter";
    li.dataset.name = a.name;
    const on = document.createElement("input");
    on.type = "checkbox";
    on.checked = a.enabled;
    on.className = "enable";
    on.setAttribute("aria-label", `use ${a.name}`);
    on.addEventListener("change", () => { a.enabled = on.checked; syncBaseOnly(); });
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = a.name;
    const slider = document.createElement("input");
    slider.type = "range";
    slider.min = "-2";
    slider.max = "2";
    slider.step = "0.05";
    slider.value = String(a.value);
    slider.className = "scale";
    slider.setAttribute("aria-label", `scale of ${a.name}`);
    const shown = document.createElement("output");
    shown.textContent = Number(a.value).toFixed(2);
    slider.addEventListener("input", () => { a.value = Number(slider.value); shown.textContent = a.value.toFixed(2); });
    const unload = document.createElement("button");
    unload.textContent = "Unload";
    unload.className = "unload";
    unload.addEventListener("click", () => unloadAdapter(a.name));
    li.append(on, name, slider, shown, unload);
    return li;
  }));
  syncBaseOnly();
}

function syncBaseOnly() {
  $("base-only").checked = !state.adapters.some((a) => a.enabled);
}

function currentMix() {
  const mix = {};
  for (const a of state.adapters) if (a.enabled) mix[a.name] = a.value;
  return mix;
}

async function loadAdapter() {
  const path = $("files").value;
  const name = $("load-name").value.trim() || path.replace(/\.gguf$/, "").replace(/[^\w.-]/g, "-");
  if (!path) return;
  try {
    await call("/v1/load_lora_adapter", { method: "POST", body: { lora_name: name, lora_path: path } });
    $("load-name").value = "";
    await refreshAdapters();
  } catch (err) {
    showError(err);
  }
}

async function unloadAdapter(name) {
  try {
    await call("/v1/unload_lora_adapter", { method: "POST", body: { lora_name: name } });
    await refreshAdapters();
  } catch (err) {
    showError(err);
  }
}

// --- a request -----------------------------------------------------------------------------
function settings() {
  const body = {
    temperature: Number($("temperature").value),
    top_p: Number($("top_p").value),
    max_tokens: Number($("max_tokens").value),
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  const schemaText = $("schema").value.trim();
  if (schemaText) {
    let schema;
    try {
      schema = JSON.parse(schemaText);
    } catch (err) {
      throw new Error(`the JSON schema is not JSON: ${err.message}`);
    }
    body.response_format = { type: "json_schema", json_schema: { name: "output", schema, strict: true } };
  }
  return body;
}

function withSystem(messages) {
  const system = $("system").value.trim();
  return system ? [{ role: "system", content: system }, ...messages] : messages;
}

function requestBody(messages, mix) {
  return { model: state.model, messages: withSystem(messages), adapters: mix, ...settings() };
}

function mixLabel(mix) {
  const names = Object.entries(mix);
  return names.length ? names.map(([n, s]) => `${n} ${s.toFixed(2)}`).join(" + ") : "base";
}

// --- messages ------------------------------------------------------------------------------
function bubble(role, text, label) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  if (label) {
    const l = document.createElement("div");
    l.className = "label";
    l.textContent = label;
    div.append(l);
  }
  const body = document.createElement("div");
  body.className = "body";
  body.append(renderMarkdown(text));
  div.append(body);
  const stats = document.createElement("div");
  stats.className = "stats muted";
  div.append(stats);
  return div;
}

function setBody(div, text) {
  div.querySelector(".body").replaceChildren(renderMarkdown(text));
}

function describe(result) {
  const u = result.usage || {};
  const n = u.completion_tokens || 0;
  const decode = result.ttftMs !== null ? (result.totalMs - result.ttftMs) / 1000 : 0;
  const rate = n > 1 && decode > 0 ? ((n - 1) / decode).toFixed(1) : "-";
  const ttft = result.ttftMs !== null ? `${result.ttftMs.toFixed(0)} ms` : "-";
  return `${u.prompt_tokens ?? "-"} prompt + ${n} tokens · first token ${ttft} · ${rate} tokens/s · ${result.finish || "stopped"}`;
}

function markSchema(div, text) {
  const schemaText = $("schema").value.trim();
  if (!schemaText) return;
  const tag = document.createElement("div");
  tag.className = "schema-check";
  try {
    const value = JSON.parse(text);
    const problems = schemaProblems(value, JSON.parse(schemaText));
    setBody(div, "```json\n" + JSON.stringify(value, null, 2) + "\n```");
    tag.textContent = problems.length ? `invalid: ${problems.join("; ")}` : "valid against the schema";
    tag.classList.add(problems.length ? "invalid" : "valid");
  } catch (err) {
    tag.textContent = `invalid: not JSON (${err.message})`;
    tag.classList.add("invalid");
  }
  div.append(tag);
}

function drawMessages() {
  const box = $("messages");
  box.replaceChildren(...state.messages.map((m, i) => {
    const div = bubble(m.role, m.content, m.label);
    if (m.stats) div.querySelector(".stats").textContent = m.stats;
    if (m.role === "user") {
      const edit = document.createElement("button");
      edit.className = "edit";
      edit.textContent = "Edit";
      edit.addEventListener("click", () => {
        if (state.running) return;
        $("input").value = m.content;
        state.messages = state.messages.slice(0, i);
        drawMessages();
        $("input").focus();
      });
      div.append(edit);
    }
    return div;
  }));
  box.scrollTop = box.scrollHeight;
}

async function generate() {
  const mix = currentMix();
  let body;
  try {
    body = requestBody(state.messages, mix);
  } catch (err) {
    showError(err);
    return;
  }
  const div = bubble("assistant", "", mixLabel(mix));
  $("messages").append(div);
  const controller = new AbortController();
  state.running = controller;
  setRunning(true);
  let text = "";
  try {
    const result = await streamChat(body, (_piece, all) => { text = all; setBody(div, all); }, controller.signal);
    state.messages.push({ role: "assistant", content: result.text, label: mixLabel(mix), stats: describe(result) });
    drawMessages();
    markSchema($("messages").lastElementChild, result.text);
  } catch (err) {
    if (err.name === "AbortError") {
      state.messages.push({ role: "assistant", content: text, label: mixLabel(mix), stats: "stopped" });
      drawMessages();
    } else {
      div.remove();
      showError(err);
    }
  } finally {
    state.running = null;
    setRunning(false);
  }
}

function setRunning(on) {
  $("send").disabled = on;
  $("regenerate").disabled = on;
  $("stop").disabled = !on;
}

function send() {
  const text = $("input").value.trim();
  if (!text || state.running) return;
  $("input").value = "";
  state.messages.push({ role: "user", content: text });
  drawMessages();
  generate();
}

function regenerate() {
  if (state.running) return;
  while (state.messages.length && state.messages[state.messages.length - 1].role === "assistant") state.messages.pop();
  if (!state.messages.length) return;
  drawMessages();
  generate();
}

function stop() {
  if (state.running) state.running.abort();
  state.compare.running.forEach((c) => c.abort());
}

// --- compare -------------------------------------------------------------------------------
function drawColumns() {
  const n = Number($("n-columns").value);
  const cols = state.compare.columns;
  while (cols.length < n) {
    const mix = {};
    const a = state.adapters[cols.length - 1];
    if (a) mix[a.name] = a.scale;  // column 1: the base; then one adapter each
    cols.push({ mix, messages: [] });
  }
  cols.length = n;
  $("columns").replaceChildren(...cols.map((col, k) => {
    const div = document.createElement("div");
    div.className = "column";
    div.dataset.column = String(k);
    const head = document.createElement("div");
    head.className = "column-head";
    for (const a of state.adapters) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = a.name in col.mix;
      box.dataset.adapter = a.name;
      box.addEventListener("change", () => {
        if (box.checked) col.mix[a.name] = a.value; else delete col.mix[a.name];
        title.textContent = mixLabel(col.mix);
      });
      label.append(box, document.createTextNode(` ${a.name}`));
      head.append(label);
    }
    const title = document.createElement("div");
    title.className = "column-title";
    title.textContent = mixLabel(col.mix);
    const use = document.createElement("button");
    use.className = "continue";
    use.textContent = "Continue in chat";
    use.addEventListener("click", () => continueWith(k));
    const answers = document.createElement("div");
    answers.className = "messages";
    for (const m of col.messages) {
      const b = bubble(m.role, m.content);
      if (m.stats) b.querySelector(".stats").textContent = m.stats;
      answers.append(b);
    }
    div.append(title, head, answers, use);
    return div;
  }));
}

async function sendCompare() {
  const text = $("input-compare").value.trim();
  if (!text || state.compare.running.length) return;
  $("input-compare").value = "";
  let settingsOk = true;
  try { settings(); } catch (err) { showError(err); settingsOk = false; }
  if (!settingsOk) return;
  $("send-compare").disabled = true;
  $("stop-compare").disabled = false;
  const cols = state.compare.columns;
  cols.forEach((c) => c.messages.push({ role: "user", content: text }));
  drawColumns();
  await Promise.all(cols.map(async (col, k) => {
    const controller = new AbortController();
    state.compare.running.push(controller);
    const box = $("columns").children[k].querySelector(".messages");
    const div = bubble("assistant", "");
    box.append(div);
    let got = "";
    try {
      const result = await streamChat(requestBody(col.messages, col.mix), (_p, all) => { got = all; setBody(div, all); },
        controller.signal);
      col.messages.push({ role: "assistant", content: result.text, stats: describe(result) });
      div.querySelector(".stats").textContent = describe(result);
    } catch (err) {
      col.messages.push({ role: "assistant", content: got, stats: "stopped" });
      if (err.name !== "AbortError") showError(err);
    }
  }));
  state.compare.running = [];
  $("send-compare").disabled = false;
  $("stop-compare").disabled = true;
}

function continueWith(k) {
  const col = state.compare.columns[k];
  state.messages = col.messages.map((m) => ({ ...m, label: m.role === "assistant" ? mixLabel(col.mix) : undefined }));
  for (const a of state.adapters) {
    a.enabled = a.name in col.mix;
    if (a.enabled) a.value = col.mix[a.name];
  }
  drawAdapters();
  show("chat");
  drawMessages();
}

// --- the page ------------------------------------------------------------------------------
function show(view) {
  for (const v of ["chat", "compare"]) {
    $(`view-${v}`).hidden = v !== view;
    $(`tab-${v}`).classList.toggle("active", v === view);
  }
  if (view === "compare") drawColumns();
}

function keys(input, onSend) {
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      onSend();
    } else if (e.key === "Escape") {
      stop();
    }
  });
}

function theme() {
  const saved = localStorage.getItem("edge-lora-theme");
  if (saved) document.documentElement.dataset.theme = saved;
  $("theme").addEventListener("click", () => {
    const dark = document.documentElement.dataset.theme
      ? document.documentElement.dataset.theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
    document.documentElement.dataset.theme = dark ? "light" : "dark";
    localStorage.setItem("edge-lora-theme", document.documentElement.dataset.theme);
  });
}

function init() {
  theme();
  $("compose").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("compose-compare").addEventListener("submit", (e) => { e.preventDefault(); sendCompare(); });
  keys($("input"), send);
  keys($("input-compare"), sendCompare);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") stop(); });
  $("stop").addEventListener("click", stop);
  $("stop-compare").addEventListener("click", stop);
  $("regenerate").addEventListener("click", regenerate);
  $("reset").addEventListener("click", () => { if (!state.running) { state.messages = []; drawMessages(); } });
  $("base-only").addEventListener("change", () => {
    if ($("base-only").checked) state.adapters.forEach((a) => { a.enabled = false; });
    drawAdapters();
  });
  $("load").addEventListener("click", loadAdapter);
  $("n-columns").addEventListener("change", drawColumns);
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => show(b.dataset.view));
  refreshAdapters().catch(showError);
}

init();
