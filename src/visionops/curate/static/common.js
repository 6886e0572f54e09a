"use strict";
// Helpers shared by review.js and label.js (loaded first). No framework, no CDN.
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// JSON in, JSON out; throws Error(detail) on an HTTP error so callers can show it.
// Every write carries a JSON body: the server refuses writes that are not application/json.
async function api(method, path, body) {
  const init = { method, headers: {} };
  if (method !== "GET" && body === undefined) body = {};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.detail || res.status + " " + res.statusText);
  return data;
}

function pct(p) {
  return p === null || p === undefined ? "–" : (100 * p).toFixed(1) + " %";
}

// Keys typed into a text field, or with Alt/Meta, are not shortcuts.
function shortcut(ev) {
  if (ev.altKey || ev.metaKey) return null;
  if (ev.target && ["INPUT", "TEXTAREA", "SELECT"].includes(ev.target.tagName)) return null;
  if (ev.ctrlKey) return ev.key.toLowerCase() === "z" ? "undo" : null;
  return ev.key;
}
