// The server's own OpenAI-compatible API, as the page uses it. With --api-key the server answers
// 401; the page then asks for the key once and keeps it in sessionStorage (this tab only).

const KEY = "edge-lora-api-key";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorOf(res) {
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    message = (body.error && (body.error.message || body.error)) || body.detail || message;
  } catch (_) { /* not JSON */ }
  return new ApiError(res.status, message);
}

// fetch with the key; a 401 asks for the key and tries once more
export async function call(path, { method = "GET", body, signal } = {}) {
  for (let attempt = 0; attempt < 2; attempt += 1) {
    const res = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body), signal });
    if (res.status === 401 && attempt === 0) {
      const key = window.prompt("This server needs its API key (kept for this tab only):");
      if (key) {
        sessionStorage.setItem(KEY, key.trim());
        continue;
      }
    }
    if (!res.ok) throw await errorOf(res);
    return res;
  }
  throw new ApiError(401, "no API key given");
}

export async function json(path, options) {
  return (await call(path, options)).json();
}

// POST a streaming chat completion; onDelta(text) per piece; resolves with
// {text, usage, finish, ttftMs, totalMs}. Aborting `signal` stops the generation on the server.
export async function streamChat(body, onDelta, signal) {
  const t0 = performance.now();
  const res = await call("/v1/chat/completions", {
    method: "POST", signal, body: { ...body, stream: true, stream_options: { include_usage: true } },
  });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let text = "";
  let usage = null;
  let finish = null;
  let ttft = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk.error.message || String(chunk.error));
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const piece = (choice.delta && choice.delta.content) || "";
          if (piece) {
            if (ttft === null) ttft = performance.now() - t0;
            text += piece;
            onDelta(piece, text);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  return { text, usage, finish, ttftMs: ttft, totalMs: performance.now() - t0 };
}
