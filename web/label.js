// The labeling page: sign in, rank the K completions of a prompt (drag and drop or keys
// 1..K), mark ties and flags, submit, next. Model text is only ever set with textContent:
// it is shown as text and never parsed as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { session: sessionStorage.getItem("rlhf.session"), labeler: sessionStorage.getItem("rlhf.labeler"),
                task: null, picks: 0, busy: false, poll: null };

function show(view) {
  for (const v of ["signin", "task", "done", "stats"]) $(`#${v}-view`).hidden = v !== view;
  $("#signout").hidden = !state.session;
  $("#who").textContent = state.labeler ? `signed in as ${state.labeler}` : "";
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.session) headers.Authorization = `Bearer ${state.session}`;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = {};
  try { data = await res.json(); } catch (e) { /* empty body */ }
  if (res.status === 401 && path !== "/api/signin") { signOut(); throw new Error(data.error || "signed out"); }
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

function signOut() {
  state.session = state.labeler = null;
  sessionStorage.removeItem("rlhf.session");
  sessionStorage.removeItem("rlhf.labeler");
  show("signin");
}

function showProgress(p) {
  if (!p) return;
  $("#progress").textContent =
    `you: ${p.mine} ranked · all: ${p.submissions} / ${p.target} rankings · prompts done: ${p.done_prompts} / ${p.prompts}`;
}

// ---- the task ------------------------------------------------------------------------
function cards() { return Array.from($("#ranking").children); }

// Each card shows its place: a card tied with the one above shares that one's number.
function renumber() {
  let place = 0;
  cards().forEach((c, i) => {
    const tied = i > 0 && c.querySelector(".tie-box").checked;
    if (!tied) place += 1;
    c.querySelector(".rank").textContent = tied ? `#${place}, tied` : `#${place}`;
    c.classList.toggle("tied", tied);
  });
}

function renderTask(task) {
  state.task = task;
  state.picks = 0;
  $("#prompt").textContent = task.prompt;
  $("#note").value = "";
  $("#task-error").textContent = "";
  const list = $("#ranking");
  list.replaceChildren();
  task.completions.forEach((c, i) => {
    const card = $("#card-template").content.firstElementChild.cloneNode(true);
    card.dataset.id = String(c.id);
    card.dataset.key = String(i + 1);
    card.querySelector(".key").textContent = String(i + 1);
    card.querySelector(".completion").textContent = c.text;   // text, never HTML
    card.querySelector(".tie-box").addEventListener("change", renumber);
    card.querySelector(".handle").addEventListener("pointerdown", (e) => startDrag(e, card));
    list.appendChild(card);
  });
  renumber();
  show("task");
}

async function loadTask() {
  clearTimeout(state.poll);
  const data = await api("GET", "/api/task");
  showProgress(data.progress);
  if (data.task) return renderTask(data.task);
  state.task = null;
  if (data.generating > 0) {
    $("#done-title").textContent = "Completions are being generated";
    $("#done-text").textContent = `${data.generating} prompts still need their completions; this page checks again shortly.`;
    state.poll = setTimeout(() => loadTask().catch(() => {}), 2000);
  } else {
    $("#done-title").textContent = "Nothing left to rank";
    $("#done-text").textContent = "Every prompt has its rankings, or you have ranked all of them. Thank you!";
  }
  show("done");
}

// Tiers of completion ids, best first: a card ticked "tied" joins the tier above.
function currentRanking() {
  const tiers = [];
  cards().forEach((c, i) => {
    const id = Number(c.dataset.id);
    if (i > 0 && c.querySelector(".tie-box").checked) tiers[tiers.length - 1].push(id);
    else tiers.push([id]);
  });
  return tiers;
}

function currentFlags() {
  const flags = {};
  for (const c of cards()) {
    const f = Array.from(c.querySelectorAll(".flags input:checked")).map((x) => x.value);
    if (f.length) flags[c.dataset.id] = f;
  }
  return flags;
}

async function submit() {
  if (!state.task || state.busy) return;
  state.busy = true;
  $("#submit").disabled = true;
  const body = { prompt_id: state.task.prompt_id, ranking: currentRanking(), flags: currentFlags(), note: $("#note").value };
  try {
    const data = await api("POST", "/api/submit", body);
    showProgress(data.progress);
    await loadTask();
  } catch (e) {
    $("#task-error").textContent = e.message;
  } finally {
    state.busy = false;
    $("#submit").disabled = false;
  }
}

// ---- drag and drop (pointer events: mouse, pen and touch alike) ------------------------
function startDrag(e, card) {
  e.preventDefault();
  card.classList.add("dragging");
  const move = (ev) => {
    const others = cards().filter((c) => c !== card);
    const before = others.find((c) => {
      const r = c.getBoundingClientRect();
      return ev.clientY < r.top + r.height / 2;
    });
    const list = $("#ranking");
    if (before) list.insertBefore(card, before); else list.appendChild(card);
    renumber();
  };
  const end = () => {
    card.classList.remove("dragging");
    document.removeEventListener("pointermove", move);
    document.removeEventListener("pointerup", up);
    document.removeEventListener("pointercancel", end);
  };
  const up = (ev) => { move(ev); end(); };
  document.addEventListener("pointermove", move);
  document.addEventListener("pointerup", up);
  document.addEventListener("pointercancel", end);   // e.g. a touch taken over by the browser: keep the order so far
}

// ---- keys: 1..K pick completions in order of preference --------------------------------
function pick(key) {
  const card = cards().find((c) => c.dataset.key === String(key));
  if (!card || card.classList.contains("picked")) return;
  const list = $("#ranking");
  list.insertBefore(card, list.children[state.picks] || null);
  card.classList.add("picked");
  state.picks += 1;
  renumber();
}

document.addEventListener("keydown", (e) => {
  if ($("#task-view").hidden || !state.task || e.ctrlKey || e.altKey || e.metaKey) return;
  const tag = (e.target.tagName || "").toLowerCase();
  if (tag === "textarea" || (tag === "input" && e.target.type !== "checkbox")) return;
  if (/^[1-9]$/.test(e.key) && Number(e.key) <= state.task.completions.length) { pick(Number(e.key)); e.preventDefault(); }
  else if (e.key === "Escape") { state.picks = 0; cards().forEach((c) => c.classList.remove("picked")); }
  // Enter on a button or link is that control's own; a held-down Enter submits once, not the next prompt too.
  else if (e.key === "Enter" && tag !== "button" && tag !== "a" && !e.repeat) { e.preventDefault(); submit(); }
});

// ---- stats ---------------------------------------------------------------------------
function fmt(x) { return x === null || x === undefined ? "–" : x.toFixed(3); }

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement("td"); td.textContent = String(c); tr.appendChild(td); }
  return tr;
}

async function loadStats() {
  // /api/stats's progress counts everyone's; /api/progress has this labeler's own count too.
  const [s, mine] = await Promise.all([api("GET", "/api/stats"), api("GET", "/api/progress")]);
  showProgress(mine);
  $("#counts tbody").replaceChildren(...Object.entries(s.counts).map(([name, n]) => row([name, n])));
  $("#pairs tbody").replaceChildren(...s.pairs.map((p) => row([p.a, p.b, p.shared_prompts, fmt(p.agreement), fmt(p.kendall_tau)])));
  $("#pairs").hidden = s.pairs.length === 0;
  $("#overall").textContent = s.shared_prompts
    ? `Over ${s.shared_prompts} shared prompt comparisons: pairwise agreement ${fmt(s.agreement)}, Kendall's τ ${fmt(s.kendall_tau)}.`
    : "No prompt has been ranked by two labelers yet.";
  show("stats");
}

// ---- start ---------------------------------------------------------------------------
function route() {
  if (!state.session) return show("signin");
  const go = location.pathname === "/stats" ? loadStats : loadTask;
  go().catch((e) => { $("#task-error").textContent = e.message; });
}

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("#signin-error").textContent = "";
    try {
      const data = await api("POST", "/api/signin", { name: $("#name").value.trim(), token: $("#token").value });
      state.session = data.session;
      state.labeler = data.labeler;
      sessionStorage.setItem("rlhf.session", data.session);
      sessionStorage.setItem("rlhf.labeler", data.labeler);
      route();
    } catch (err) {
      $("#signin-error").textContent = err.message;
    }
  });
  $("#submit").addEventListener("click", submit);
  $("#signout").addEventListener("click", signOut);
  route();
});
