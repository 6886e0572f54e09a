"use strict";
// The Photo-Rater: one image at a time; ← / → for two classes, 1-9 for more, S skip, U undo.
let state = null;

function keyFor(i, n) {
  if (n === 2) return i === 0 ? "←" : "→";
  return i < 9 ? String(i + 1) : "";
}

function render() {
  const n = state.classes.length;
  $("progress").textContent = `${state.done} of ${state.total} labeled` +
    (state.model ? " · most uncertain first (" + state.model.source + ")" : "");
  $("bar").style.width = (100 * state.done / state.total) + "%";
  $("file").textContent = state.state_file;
  $("counts").textContent = Object.entries(state.counts).map(([k, v]) => `${k}: ${v}`).join(" · ");
  $("undo").disabled = !state.can_undo;
  const cur = state.current;
  $("card").hidden = !cur;
  $("finished").hidden = !!cur;
  if (!cur) return;
  $("card").dataset.sha = cur.sha256;
  $("photo").src = "/api/image/" + cur.sha256;
  $("name").textContent = cur.name;
  $("guess").textContent = cur.guess ? `model: ${cur.guess} (${pct(cur.p_guess)})` : "";
  const box = $("choices");
  box.replaceChildren();
  state.classes.forEach((name, i) => {
    const b = el("button", "choice", name);
    b.type = "button";
    b.dataset.label = name;
    const key = keyFor(i, n);
    if (key) b.append(el("kbd", "", key));
    b.addEventListener("click", () => label(name));
    box.append(b);
  });
  $("keys").textContent = n === 2
    ? `← ${state.classes[0]} · → ${state.classes[1]} · S skip · U undo`
    : "1–9 pick a class · S skip · U undo";
}

async function refresh() {
  try {
    state = await api("GET", "/api/state");
    render();
    if (state.done) setStatus(`resumed: ${state.done} already labeled`);
  } catch (e) {
    setStatus("could not load: " + e.message, true);
  }
}

async function label(name) {
  if (!state || !state.current) return;
  const sha = state.current.sha256;
  try {
    state = await api("POST", "/api/label", { sha256: sha, label: name });
    setStatus(`saved: ${name}`);
    render();
  } catch (e) {
    setStatus("not saved: " + e.message, true);
  }
}

async function undo() {
  try {
    state = await api("POST", "/api/undo");
    setStatus("undone");
    render();
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function finish() {
  $("finish").disabled = true;
  setStatus("copying into data/ and running dvc add…");
  try {
    const out = await api("POST", "/api/finish");
    state = out.state;
    render();
    setStatus(`copied ${out.copied.length} new image(s) into data/` +
      (out.already_there ? `, ${out.already_there} already there` : "") +
      (out.dvc ? " · " + out.dvc : ""));
  } catch (e) {
    setStatus("finish failed: " + e.message, true);
  } finally {
    $("finish").disabled = false;
  }
}

$("skip").addEventListener("click", () => label("skip"));
$("undo").addEventListener("click", undo);
$("finish").addEventListener("click", finish);
document.addEventListener("keydown", (ev) => {
  const key = shortcut(ev);
  if (!key || !state) return;
  const n = state.classes.length;
  let handled = true;
  if (n === 2 && key === "ArrowLeft") label(state.classes[0]);
  else if (n === 2 && key === "ArrowRight") label(state.classes[1]);
  else if (/^[1-9]$/.test(key) && state.classes[Number(key) - 1]) label(state.classes[Number(key) - 1]);
  else if (key.toLowerCase() === "s" || key === "ArrowDown") label("skip");
  else if (key.toLowerCase() === "u" || key === "undo" || key === "Backspace") undo();
  else handled = false;
  if (handled) ev.preventDefault();
});
refresh();
