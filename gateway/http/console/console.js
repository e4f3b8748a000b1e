// The gateway's admin console (issue 16, item 3): a client of the public
// API, signed in with an API key kept in this tab's sessionStorage. Every
// value from the API reaches the page as text (textContent), never as HTML.
"use strict";

const KEY_SLOT = "gateway-console-key";
const state = { key: null, me: null, numbers: [], users: new Map(), board: new Map(), stream: null };

const $ = (selector) => document.querySelector(selector);

// -- talking to the API ------------------------------------------------------

class Problem extends Error {
  constructor(status, doc) {
    super(doc.detail || doc.title || `HTTP ${status}`);
    this.status = status;
    this.doc = doc;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.key}`, Accept: "application/json" };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new Problem(0, { title: "Network error", detail: "the gateway did not answer" });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let doc = {};
  try { doc = text ? JSON.parse(text) : {}; } catch (error) { doc = { title: response.statusText }; }
  if (!response.ok) throw new Problem(response.status, doc);
  return doc;
}

// -- what the person sees ------------------------------------------------------

function showError(error, form) {
  const box = $("#alert");
  const doc = error instanceof Problem ? error.doc : { title: "Error", detail: String(error) };
  box.textContent = "";
  const title = document.createElement("strong");
  title.textContent = `${doc.title || "Error"}${error.status ? ` (${error.status})` : ""}`;
  box.append(title, document.createTextNode(doc.detail ? `: ${doc.detail}` : ""));
  box.hidden = false;
  if (form) markFields(form, doc.errors || []);
}

function clearError(form) {
  $("#alert").hidden = true;
  $("#alert").textContent = "";
  if (form) markFields(form, []);
}

function markFields(form, errors) {
  for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
  for (const note of form.querySelectorAll(".field-error")) note.remove();
  for (const error of errors) {
    const field = form.elements.namedItem(error.field);
    if (!field || !field.id) continue;
    field.setAttribute("aria-invalid", "true");
    const note = document.createElement("span");
    note.className = "field-error";
    note.id = `${field.id}-error`;
    note.textContent = error.message;
    field.after(note);
    field.setAttribute("aria-describedby", note.id);
  }
}

function say(message) {
  $("#status").textContent = message;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined || text === "" ? "—" : String(text);
  row.append(td);
  return td;
}

function button(label, onClick, accessibleName) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (accessibleName) b.setAttribute("aria-label", accessibleName);
  b.addEventListener("click", onClick);
  return b;
}

// A table row whose first cell is its header (a screen reader names the row by it).
function headedRow(key, value, heading) {
  const tr = document.createElement("tr");
  tr.dataset[key] = value;
  const th = document.createElement("th");
  th.scope = "row";
  th.textContent = heading;
  tr.append(th);
  return tr;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function fill(tbody, rows, emptyText, columns) {
  tbody.textContent = "";
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(tr, emptyText);
    td.colSpan = columns;
    tbody.append(tr);
  }
  return tbody;
}

// -- signing in ------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  const me = await api("GET", "/v1/me");
  if (me.role !== "owner" && me.role !== "admin") {
    state.key = null;
    throw new Problem(403, { title: "Forbidden", detail: "the console is for the account's owner and admins" });
  }
  state.me = me;
  sessionStorage.setItem(KEY_SLOT, key);
  $("#whoami").textContent = `Signed in as ${userName(me)} (${me.role})`;
  $("#whoami").hidden = false;
  $("#sign-out").hidden = false;
  $("#sign-in").hidden = true;
  $("#console").hidden = false;
  await loadNumbers();  // the others name numbers and users by what it loads
  await Promise.all([loadNotifications(), loadDeliveries(), loadUsage()]);
  watchLiveCalls();
  say("Signed in.");
}

function signOut() {
  sessionStorage.removeItem(KEY_SLOT);
  state.key = null;
  state.me = null;
  if (state.stream) state.stream.abort();
  state.stream = null;
  $("#console").hidden = true;
  $("#sign-in").hidden = false;
  $("#whoami").hidden = true;
  $("#sign-out").hidden = true;
  $("#api-key").value = "";
  $("#api-key").focus();
  say("Signed out.");
}

// -- numbers -----------------------------------------------------------------------

function userName(user) {
  return user ? user.name || user.email : "";
}

const ROUTES = { user: "the number's user", ring_all: "all at once", round_robin: "in turn", sequential: "one after another" };

function hours(h) {
  if (!h) return "always open";
  const days = Object.keys(h.weekly || {}).join(", ");
  return `${h.time_zone}: ${days || "no weekly hours"}`;
}

async function loadNumbers() {
  const [numbers, users] = await Promise.all([api("GET", "/v1/numbers"), api("GET", "/v1/users")]);
  state.numbers = numbers.numbers;
  state.users = new Map(users.users.map((u) => [u.id, u]));
  const tbody = fill($("#numbers-table tbody"), state.numbers, "No numbers yet.", 8);
  for (const n of state.numbers) {
    const tr = headedRow("numberId", n.id, n.e164);
    cell(tr, n.description);
    const names = n.route_user_ids.map((id) => userName(state.users.get(id)) || `user ${id}`).join(", ");
    cell(tr, `${ROUTES[n.unknown_route] || n.unknown_route}${names ? `: ${names}` : ""}`);
    cell(tr, n.max_concurrent_calls);
    cell(tr, [n.source, n.tag].filter(Boolean).join(" / "));
    cell(tr, n.overflow === "forward" ? `forward to ${n.overflow_target}` : n.overflow);
    cell(tr, hours(n.business_hours));
    const actions = cell(tr, "");
    actions.textContent = "";
    actions.append(button("Edit", () => editNumber(n), `Edit ${n.e164}`));
    tbody.append(tr);
  }
  renderBoard();
}

const NUMBER_FIELDS = ["description", "unknown_route", "max_concurrent_calls", "source", "tag", "overflow", "overflow_target", "business_hours"];

function editNumber(n) {
  const form = $("#number-form");
  clearError(form);
  form.dataset.numberId = n.id;
  $("#number-form-legend").textContent = `Edit ${n.e164}`;
  for (const name of NUMBER_FIELDS) {
    const value = n[name];
    form.elements.namedItem(name).value =
      name === "business_hours" ? (value ? JSON.stringify(value) : "") : (value ?? "");
  }
  form.hidden = false;
  $("#nf-description").focus();
}

function numberChanges(form, n) {
  const changes = {};
  for (const name of NUMBER_FIELDS) {
    const raw = form.elements.namedItem(name).value.trim();
    let value = raw;
    if (name === "max_concurrent_calls") value = raw === "" ? null : Number(raw);
    if (name === "business_hours") {
      if (raw === "") value = null;
      else {
        try { value = JSON.parse(raw); } catch (error) {
          throw new Problem(422, { title: "Invalid request", detail: "business_hours: is not JSON",
            errors: [{ field: "business_hours", message: "is not JSON" }] });
        }
      }
      if (JSON.stringify(value) === JSON.stringify(n.business_hours ?? null)) continue;
    } else if (value === (n[name] ?? "")) continue;
    if (value === "" && (n[name] === null || n[name] === undefined)) continue;
    changes[name] = value;
  }
  return changes;
}

async function saveNumber(event) {
  event.preventDefault();
  const form = $("#number-form");
  const n = state.numbers.find((x) => String(x.id) === form.dataset.numberId);
  clearError(form);
  try {
    const changes = numberChanges(form, n);
    if (Object.keys(changes).length) await api("PATCH", `/v1/numbers/${n.id}`, changes);
    form.hidden = true;
    await loadNumbers();
    say(`Saved ${n.e164}.`);
    document.querySelector(`#numbers-table tr[data-number-id="${n.id}"] button`)?.focus();
  } catch (error) {
    showError(error, form);
  }
}

// -- live calls, from the event stream -----------------------------------------------

function renderBoard() {
  const tbody = fill($("#live-table tbody"), state.numbers, "No numbers yet.", 3);
  for (const n of state.numbers) {
    const live = state.board.get(n.id) || { active: 0, calls: [] };
    const tr = headedRow("numberId", n.id, n.e164);
    const count = cell(tr, "");
    count.textContent = "";
    const meter = document.createElement("meter");
    meter.min = 0;
    meter.max = n.max_concurrent_calls;
    meter.value = live.active;
    meter.setAttribute("aria-label", `${n.e164} calls in progress`);
    const label = document.createElement("span");
    label.className = "count";
    label.textContent = `${live.active} of ${n.max_concurrent_calls}`;
    count.append(meter, " ", label);
    const calls = cell(tr, "");
    calls.textContent = "";
    const list = document.createElement("ul");
    list.className = "calls";
    for (const c of live.calls) {
      const li = document.createElement("li");
      li.dataset.callId = c.id;
      const since = c.answered_at || c.invited_at;
      li.textContent = `${c.caller}: ${c.state} since ${new Date(since).toLocaleTimeString()}`;
      list.append(li);
    }
    calls.append(list);
    tbody.append(tr);
  }
}

function takeBoard(board) {
  state.board = new Map(board.numbers.map((n) => [n.number_id, n]));
  renderBoard();
}

// EventSource cannot send an Authorization header, so the stream is read with
// fetch; a dropped stream is opened again after a pause.
async function watchLiveCalls() {
  const controller = new AbortController();
  state.stream = controller;
  let pause = 1000;
  while (state.stream === controller) {
    try {
      const response = await fetch("/v1/live-calls/stream", {
        headers: { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" },
        signal: controller.signal,
      });
      if (!response.ok) {
        const doc = await response.json().catch(() => ({}));
        throw new Problem(response.status, doc);
      }
      $("#live-state").textContent = "Live: updates as calls start, are answered and end.";
      pause = 1000;
      await readEvents(response.body, (event, data) => {
        if (event === "board") takeBoard(JSON.parse(data));
      });
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof Problem && (error.status === 401 || error.status === 403)) {
        $("#live-state").textContent = "Not live: the key no longer may watch calls.";
        showError(error);
        return;
      }
    }
    if (state.stream !== controller) return;
    $("#live-state").textContent = "Reconnecting…";
    await new Promise((resolve) => setTimeout(resolve, pause));
    pause = Math.min(pause * 2, 15000);
  }
}

async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, data.join("\n"));
    }
  }
}

// -- notifications (R8) -------------------------------------------------------------

async function loadNotifications() {
  const found = await api("GET", `/v1/users/${state.me.user_id}/notifications?state=open`);
  const numbers = new Map(state.numbers.map((n) => [n.id, n.e164]));
  const tbody = fill($("#notifications-table tbody"), found.notifications, "No open notifications.", 6);
  for (const note of found.notifications) {
    const tr = headedRow("notificationId", note.id, note.caller_e164);
    cell(tr, numbers.get(note.number_id) || `number ${note.number_id}`);
    cell(tr, note.channel);
    cell(tr, [note.source, note.tag].filter(Boolean).join(" / "));
    cell(tr, when(note.created_at));
    const actions = cell(tr, "");
    actions.textContent = "";
    actions.append(button("New lead", () => settle(note, { action: "new_lead" }), `New lead from ${note.caller_e164}`));
    const leadId = document.createElement("input");
    leadId.type = "number";
    leadId.min = "1";
    leadId.inputMode = "numeric";
    leadId.id = `lead-for-${note.id}`;
    const label = document.createElement("label");
    label.htmlFor = leadId.id;
    label.textContent = "Lead id";
    actions.append(" ", label, " ", leadId, " ", button("Associate", () => {
      const raw = leadId.value.trim();
      settle(note, { action: "associate", lead_id: raw === "" ? null : Number(raw) });
    }, `Associate ${note.caller_e164} with the lead`));
    tbody.append(tr);
  }
}

async function settle(note, action) {
  clearError();
  try {
    const done = await api("POST", `/v1/notifications/${note.id}/actions`, action);
    await loadNotifications();
    say(action.action === "new_lead"
      ? `${note.caller_e164} is now lead ${done.lead_id}.`
      : `${note.caller_e164} was added to lead ${done.lead_id}.`);
    $("#notifications-refresh").focus();
  } catch (error) {
    showError(error);
  }
}

// -- usage (R9) ------------------------------------------------------------------------

function used(totals, allowance, kind) {
  const limit = allowance[kind];
  return limit === null || limit === undefined ? `${totals[kind]} (unlimited)` : `${totals[kind]} of ${limit}`;
}

async function loadUsage() {
  const now = new Date();
  const period = `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, "0")}`;
  const users = [...state.users.values()];
  const usage = await Promise.all(users.map((u) => api("GET", `/v1/users/${u.id}/usage?period=${period}`)));
  const tbody = fill($("#usage-table tbody"), users, "No users.", 4);
  users.forEach((u, i) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = `${userName(u)} (${u.role})`;
    tr.append(th);
    cell(tr, u.package);
    const minutes = cell(tr, used(usage[i].totals, usage[i].allowance, "call_minutes"));
    const segments = cell(tr, used(usage[i].totals, usage[i].allowance, "text_segments"));
    if (usage[i].over_quota.call_minutes) minutes.classList.add("over");
    if (usage[i].over_quota.text_segments) segments.classList.add("over");
    tbody.append(tr);
  });
}

// -- webhook deliveries -------------------------------------------------------------------

async function loadDeliveries() {
  const endpoints = (await api("GET", "/v1/webhook-endpoints")).endpoints;
  const lists = await Promise.all(
    endpoints.map((e) => api("GET", `/v1/webhook-endpoints/${e.id}/deliveries?limit=20`)),
  );
  const rows = endpoints.flatMap((e, i) => lists[i].deliveries.map((d) => ({ endpoint: e, delivery: d })));
  const tbody = fill($("#deliveries-table tbody"), rows, "No deliveries yet.", 7);
  for (const { endpoint, delivery } of rows) {
    const tr = document.createElement("tr");
    tr.dataset.deliveryId = delivery.id;
    cell(tr, endpoint.url);
    cell(tr, delivery.event_type);
    cell(tr, delivery.status).classList.add(`delivery-${delivery.status}`);
    cell(tr, delivery.attempts);
    const failedWith = delivery.last_status && delivery.status !== "delivered" ? `HTTP ${delivery.last_status}` : "";
    cell(tr, delivery.last_error || failedWith);
    cell(tr, when(delivery.created_at));
    const actions = cell(tr, "");
    actions.textContent = "";
    actions.append(button("Redeliver", () => redeliver(delivery), `Redeliver ${delivery.event_type} ${delivery.id}`));
    tbody.append(tr);
  }
}

async function redeliver(delivery) {
  clearError();
  try {
    await api("POST", `/v1/webhook-deliveries/${delivery.id}/redeliver`);
    say(`Delivery ${delivery.id} is queued again.`);
    await loadDeliveries();
  } catch (error) {
    showError(error);
  }
}

// -- wiring ------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    try {
      await signIn($("#api-key").value.trim());
    } catch (error) {
      state.key = null;
      showError(error);
      $("#api-key").focus();
    }
  });
  $("#sign-out").addEventListener("click", signOut);
  $("#number-form").addEventListener("submit", saveNumber);
  $("#number-cancel").addEventListener("click", () => { $("#number-form").hidden = true; clearError(); });
  $("#notifications-refresh").addEventListener("click", () => loadNotifications().catch(showError));
  $("#deliveries-refresh").addEventListener("click", () => loadDeliveries().catch(showError));
  const saved = sessionStorage.getItem(KEY_SLOT);
  if (saved) signIn(saved).catch((error) => { state.key = null; showError(error); });
  else $("#api-key").focus();
});
