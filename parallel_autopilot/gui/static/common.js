// Shared by the issue and report pages: requests with the CSRF token, text-only elements.
// Every value from the server is inserted as text, never as HTML (it is agent-written).
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const TOKEN = document.querySelector('meta[name="access-token"]').content;
const $ = (id) => document.getElementById(id);

function withToken(path) {
  if (!TOKEN) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json", "X-CSRF-Token": CSRF };
  if (TOKEN) headers["X-Autopilot-Token"] = TOKEN;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new Error("the GUI server did not answer: is `inv gui` still running?");
  }
  let data = null;
  try { data = await response.json(); } catch (err) { data = null; }
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

function showError(message) {
  const banner = $("banner");
  if (!banner) return;
  banner.hidden = !message;
  $("banner-messages").replaceChildren(...(message ? [el("li", { class: "error" }, message)] : []));
}

function localTime(epoch) {
  if (epoch === null || epoch === undefined) return "";
  const d = new Date(epoch * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function tokenText(usage) {
  if (!usage) return "";
  const cost = usage.cost_usd ? ` $${Number(usage.cost_usd).toFixed(4)}` : "";
  return `${usage.input_tokens || 0} in / ${usage.output_tokens || 0} out tokens${cost}`;
}
