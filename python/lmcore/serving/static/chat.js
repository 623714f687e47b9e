// The chat page: the conversation lives here and is sent whole with each message to
// /v1/chat/completions (stream: true); the reply's Server-Sent Events are read from fetch's body
// as they come. Stop aborts the request (the server stops generating); Clear forgets everything.
"use strict";

const $ = (id) => document.getElementById(id);
const conversation = [];  // {role, content} of every kept turn, oldest first
let running = null;  // the AbortController of the reply being written
let epoch = 0;  // bumped by Clear: a reply that ends after it belongs to no conversation

function bubble(kind, text) {
  const div = document.createElement("div");
  div.className = "msg " + kind;
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({block: "end"});
  return div;
}

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setRunning(controller) {
  running = controller;
  document.body.dataset.state = controller ? "streaming" : "idle";
  $("send").disabled = !!controller;
  $("stop").disabled = !controller;
}

function request() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({role: "system", content: system});
  const body = {messages: messages.concat(conversation), stream: true, stream_options: {include_usage: true}};
  const t = parseFloat($("temperature").value);
  if (!Number.isNaN(t)) body.temperature = t;
  const m = parseInt($("max-tokens").value, 10);
  if (m > 0) body.max_tokens = m;
  return body;
}

// One streamed reply into `out`; resolves to {finish, usage}, or throws {code, message}.
async function stream(controller, out) {
  const response = await fetch("/v1/chat/completions", {method: "POST", headers: headers(),
    body: JSON.stringify(request()), signal: controller.signal});
  if (!response.ok) {
    let error = {message: response.status + " " + response.statusText};
    try { error = (await response.json()).error; } catch (e) { /* not JSON */ }
    throw error;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", finish = null, usage = null, chunks = 0;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") return {finish, usage};
      const doc = JSON.parse(data);
      if (doc.error) throw doc.error;
      if (doc.usage) usage = doc.usage;
      const choice = doc.choices && doc.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        out.textContent += choice.delta.content;
        out.dataset.chunks = String(++chunks);
        out.scrollIntoView({block: "end"});
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return {finish, usage};
}

async function send(text) {
  conversation.push({role: "user", content: text});
  const mine = bubble("user", text);
  const out = bubble("assistant streaming", "");
  const started = epoch;
  const controller = new AbortController();
  setRunning(controller);
  const start = performance.now();
  try {
    for (;;) {
      try {
        const {finish, usage} = await stream(controller, out);
        const seconds = (performance.now() - start) / 1000;
        $("status").textContent = usage ? `${usage.completion_tokens} tokens in ${seconds.toFixed(2)} s` +
          (finish === "length" ? " (the reply reached its length limit)" : "") : "";
        break;
      } catch (error) {
        // The window is full: drop the oldest exchange (as python -m lmcore.chat does) and ask again.
        if (error && error.code === "context_length_exceeded" && conversation.length > 1 && !out.textContent) {
          conversation.splice(0, conversation[1] && conversation[1].role === "assistant" ? 2 : 1);
          bubble("note", "(the oldest exchange was dropped: the model's window is full)");
          continue;
        }
        throw error;
      }
    }
  } catch (error) {
    if (error && error.name === "AbortError") {
      $("status").textContent = "stopped";
    } else {
      bubble("error", "error: " + ((error && error.message) || String(error)));
    }
  } finally {
    out.classList.remove("streaming");
    if (epoch !== started) {
      // cleared meanwhile: nothing to keep
    } else if (out.textContent) {
      conversation.push({role: "assistant", content: out.textContent});
    } else {  // no reply at all (stopped or refused): the message goes back to the box, as if unsent
      out.remove();
      mine.remove();
      conversation.pop();
      if (!$("input").value) $("input").value = text;
    }
    setRunning(null);
  }
}

function clearAll() {
  epoch++;
  if (running) running.abort();
  conversation.length = 0;
  $("messages").replaceChildren();
  $("status").textContent = "";
}

async function showModel() {
  try {
    const response = await fetch("/v1/models", {headers: headers()});
    const doc = await response.json();
    const m = doc.data && doc.data[0];
    $("model").textContent = m ? `${m.id}: ${m.parameters.toLocaleString()} parameters, window ${m.context_length} tokens`
                               : (doc.error ? doc.error.message : "");
  } catch (e) { $("model").textContent = ""; }
}

window.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem("lmcore-api-key") || "";
  $("api-key").addEventListener("change", () => { localStorage.setItem("lmcore-api-key", $("api-key").value); showModel(); });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value;
    if (!text.trim() || running) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => { if (running) running.abort(); });
  $("clear").addEventListener("click", clearAll);
  showModel();
});
