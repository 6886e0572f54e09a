"use strict";
// The review page: one card at a time; decisions go to the server, which writes curation.csv.
let queue = null;   // {classes, cards, decided, can_undo, curation_file}
let index = 0;

function firstUndecided(from) {
  const cards = queue.cards;
  for (let k = 0; k < cards.length; k++) {
    const i = (from + k) % cards.length;
    if (!cards[i].decision) return i;
  }
  return Math.min(from, cards.length - 1);
}

function describeDecision(d) {
  if (!d) return ["", "undecided"];
  if (d.action === "relabel") return ["relabel", "decided: relabel to " + d.label];
  return [d.action, "decided: " + d.action];
}

function render() {
  const cards = queue.cards;
  $("file").textContent = queue.curation_file;
  $("progress").textContent = cards.length
    ? `${queue.decided} of ${cards.length} cards decided · classes: ${queue.classes.join(", ")}`
    : "nothing to review: no label issues, outliers or near-duplicates";
  $("bar").style.width = cards.length ? (100 * queue.decided / cards.length) + "%" : "0";
  $("undo").disabled = !queue.can_undo;
  if (!cards.length) { $("card").hidden = true; return; }
  const card = cards[index];
  $("card").hidden = false;
  $("card").dataset.id = card.id;
  $("kind").textContent = card.kind;
  $("kind").className = "kind " + card.kind.replace(" ", "-");
  $("rank").textContent = "#" + card.rank;
  $("position").textContent = `card ${index + 1} / ${cards.length}`;
  const box = $("images");
  box.replaceChildren();
  box.className = card.images.length > 2 ? "images many" : "images";
  for (const img of card.images) {
    const fig = el("figure");
    const tag = el("img");
    tag.src = "/api/image/" + img.sha256;
    tag.alt = img.path;
    fig.append(tag, el("figcaption", "", `${img.path} · ${img.label}${img.split ? " · " + img.split : ""}`));
    box.append(fig);
  }
  const labels = [...new Set(card.images.map((i) => i.label))];
  $("given").textContent = labels.join(" / ");
  $("predicted").textContent = card.predicted
    ? `${card.predicted} (${pct(card.p_predicted)})` + (card.p_label !== null ? ` · p(given) ${pct(card.p_label)}` : "")
    : "–";
  $("note").textContent = card.note;
  const [cls, text] = describeDecision(card.decision);
  $("decision").className = "decision " + cls;
  $("decision").textContent = text;
  const relabel = $("relabel");
  relabel.replaceChildren();
  queue.classes.forEach((name, i) => {
    const b = el("button", "relabel", "→ " + name);
    b.type = "button";
    b.dataset.label = name;
    if (i < 9) b.append(el("kbd", "", String(i + 1)));
    b.disabled = labels.length === 1 && labels[0] === name;
    b.addEventListener("click", () => decide("relabel", name));
    relabel.append(b, " ");
  });
}

async function load() {
  try {
    queue = await api("GET", "/api/queue");
    index = queue.cards.length ? firstUndecided(0) : 0;
    render();
    setStatus(queue.decided ? `resumed: ${queue.decided} card(s) already decided` : "");
  } catch (e) {
    setStatus("could not load the queue: " + e.message, true);
  }
}

async function decide(action, label) {
  if (!queue || !queue.cards.length) return;
  const card = queue.cards[index];
  try {
    queue = await api("POST", "/api/decide", { card: card.id, action, label: label || "" });
    setStatus(`saved: ${card.id} ${action}${label ? " → " + label : ""}`);
    index = firstUndecided(Math.min(index + 1, queue.cards.length - 1));
    render();
  } catch (e) {
    setStatus("not saved: " + e.message, true);
  }
}

async function undo() {
  try {
    const before = queue.cards.map((c) => JSON.stringify(c.decision));
    queue = await api("POST", "/api/undo");
    const changed = queue.cards.findIndex((c, i) => JSON.stringify(c.decision) !== before[i]);
    if (changed >= 0) index = changed;
    render();
    setStatus("undone");
  } catch (e) {
    setStatus(e.message, true);
  }
}

function move(step) {
  if (!queue || !queue.cards.length) return;
  index = (index + step + queue.cards.length) % queue.cards.length;
  render();
}

$("keep").addEventListener("click", () => decide("keep"));
$("exclude").addEventListener("click", () => decide("exclude"));
$("undo").addEventListener("click", undo);
$("prev").addEventListener("click", () => move(-1));
$("next").addEventListener("click", () => move(1));
document.addEventListener("keydown", (ev) => {
  const key = shortcut(ev);
  if (!key || !queue) return;
  const k = key.toLowerCase();
  let handled = true;
  if (k === "k") decide("keep");
  else if (k === "x") decide("exclude");
  else if (k === "u" || key === "undo" || key === "Backspace") undo();
  else if (key === "ArrowLeft") move(-1);
  else if (key === "ArrowRight") move(1);
  else if (/^[1-9]$/.test(key) && queue.classes[Number(key) - 1]) decide("relabel", queue.classes[Number(key) - 1]);
  else handled = false;
  if (handled) ev.preventDefault();
});
load();
