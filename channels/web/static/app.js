// threadbot's web page: reads and writes through the HTTP API, nothing else.
"use strict";

const ORDER = ["waiting_for_approval", "waiting_for_human", "waiting_for_result", "running", "failed", "cancelled", "done"];
const LABEL = {
  waiting_for_approval: "Waiting for approval",
  waiting_for_human: "Waiting for an answer",
  waiting_for_result: "Waiting for a result",
  running: "Running",
  failed: "Failed",
  cancelled: "Cancelled",
  done: "Done",
};
const ENDED = ["done", "failed", "cancelled"];
const HUMAN_INPUT = "request_human_input";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function status(text) {
  document.getElementById("status").textContent = text;
}

function when(iso) {
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

// "in 1 h 4 min", "5 min ago": how far a time is from now, for a countdown.
function span(seconds) {
  const s = Math.abs(seconds);
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function countdown(iso, before, after) {
  const left = (new Date(iso).getTime() - Date.now()) / 1000;
  return left > 0 ? `${before} in ${span(left)}` : `${after} ${span(left)} ago`;
}

// Countdowns on the page tick every second: <time data-due=ISO data-before=… data-after=…>.
function tickCountdowns() {
  document.querySelectorAll("time[data-due]").forEach((t) => {
    t.textContent = countdown(t.dataset.due, t.dataset.before, t.dataset.after);
  });
}

function dueTime(iso, before, after, cls) {
  return el("time", { class: cls, datetime: iso, title: when(iso), "data-due": iso, "data-before": before, "data-after": after },
    countdown(iso, before, after));
}

function ago(iso) {
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

// -- who is signed in ---------------------------------------------------------------

let me = null; // /auth/me: name, person, auth, admin, csrf (sessions only)
let offer = null; // when nobody is signed in: which sign-ins the server offers

function tokenHeaders() {
  const token = sessionStorage.getItem("threadbot-token");
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function loadMe() {
  const response = await fetch("/auth/me", { headers: tokenHeaders() });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  me = response.ok ? body : null;
  offer = response.ok ? null : body || {};
  if (!response.ok) sessionStorage.removeItem("threadbot-token");
  showMe();
}

function offersSignIn() {
  return Boolean(offer && (offer.email || offer.slack));
}

const HOW = {
  "session:email": "signed in by email link",
  "session:slack": "signed in with Slack",
  "admin-token": "admin token",
};

function showMe() {
  const box = document.getElementById("me");
  const signIn = document.getElementById("sign-in");
  const main = document.getElementById("main");
  signIn.hidden = true;
  main.hidden = false;
  if (me && me.auth === "operator") {
    box.replaceChildren("local operator (loopback, no sign-in)");
  } else if (me && me.csrf) {
    box.replaceChildren(`${me.name} · ${HOW[me.auth] || me.auth} · `,
      el("button", { type: "button", class: "link", onclick: signOut }, "Sign out"));
  } else if (me) {
    box.replaceChildren(`${me.name} · ${HOW[me.auth] || "API token"} · `,
      el("button", { type: "button", class: "link", onclick: forgetToken }, "Forget token"));
  } else if (offersSignIn()) {
    box.replaceChildren("not signed in");
    signIn.hidden = false;
    main.hidden = true;
    document.getElementById("email-form").hidden = !offer.email;
    document.getElementById("slack-sign-in").hidden = !offer.slack;
  } else {
    box.replaceChildren();
  }
}

async function signOut() {
  await fetch("/auth/logout", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": me.csrf },
    body: "{}",
  });
  location.reload();
}

function forgetToken() {
  sessionStorage.removeItem("threadbot-token");
  location.reload();
}

document.getElementById("email-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const address = document.getElementById("email").value.trim();
  const response = await fetch("/auth/email", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email: address }),
  });
  const sent = document.getElementById("email-sent");
  sent.hidden = false;
  sent.textContent = response.ok
    ? `If ${address} belongs to someone here, a sign-in link is on its way. It works once, within 15 minutes.`
    : `Could not ask for a link (${response.status}).`;
});

document.getElementById("use-token").addEventListener("click", async () => {
  await askForToken();
  location.reload();
});

// -- the API, with the session's CSRF token or the bearer token ----------------------

let tokenWaiters = [];

function askForToken() {
  const dialog = document.getElementById("token-dialog");
  dialog.hidden = false;
  document.getElementById("token").focus();
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("threadbot-token", document.getElementById("token").value);
  document.getElementById("token-dialog").hidden = true;
  const waiters = tokenWaiters;
  tokenWaiters = [];
  waiters.forEach((resolve) => resolve());
});

async function api(path, options = {}) {
  for (;;) {
    const headers = { "Content-Type": "application/json", ...tokenHeaders(), ...(options.headers || {}) };
    if (me && me.csrf) headers["X-CSRF-Token"] = me.csrf;
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) {
      // The session ended or the token is wrong: sign in again if the
      // server offers it, else ask for the token.
      await loadMe();
      if (me) continue;
      if (offersSignIn()) return { ok: false, status: 401, body: { error: "Sign in first." } };
      await askForToken();
      await loadMe();
      continue;
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { ok: response.ok, status: response.status, body };
  }
}

// -- following the API's event streams ----------------------------------------------

// Reads Server-Sent Events with fetch rather than EventSource, which cannot
// send the bearer token a page may hold. `path()` gives the URL to (re)connect
// to; `on.open()` runs when a stream starts, `on.frame(event, data)` for each
// frame. A stream that ends or fails is opened again, a little later each
// time it fails in a row. Returns a function that stops following.
function follow(path, on) {
  const control = new AbortController();
  let delay = 1000;
  const pause = () => new Promise((resolve) => setTimeout(resolve, delay));
  (async () => {
    while (!control.signal.aborted) {
      let response = null;
      try {
        response = await fetch(path(), { headers: { Accept: "text/event-stream", ...tokenHeaders() }, signal: control.signal });
      } catch (_) {
        response = null;
      }
      if (control.signal.aborted) return;
      if (response && response.status === 401) {
        await loadMe();
        if (!me && offersSignIn()) return; // the sign-in form is showing
        if (!me) {
          await askForToken();
          await loadMe();
        } else {
          await pause(); // signed in, yet refused: not again at once
        }
        continue;
      }
      if (response && response.ok) {
        delay = 1000;
        on.open();
        try {
          await readFrames(response.body, on.frame);
        } catch (_) {
          // the connection broke: open it again
        }
        if (control.signal.aborted) return;
        status("Reconnecting…");
        continue;
      }
      if (response && response.status !== 503) {
        let body = null;
        try { body = await response.json(); } catch (_) { body = null; }
        on.refused((body && body.error) || `Refused (${response.status})`);
        return;
      }
      status("Offline? Trying again…");
      await pause();
      delay = Math.min(delay * 2, 30000);
    }
  })();
  return () => control.abort();
}

async function readFrames(stream, onFrame) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon === 0) continue; // a comment: the heartbeat
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) onFrame(event, JSON.parse(data.join("\n")));
    }
  }
}

// -- the inbox -------------------------------------------------------------------

const inbox = new Map(); // id → the thread's summary, as GET /threads lists it
let inboxDrawn = false;

function inboxQuery() {
  const filter = document.getElementById("filter").value;
  // What is due first: threads with a reminder or deadline ahead, soonest first.
  if (filter === "overdue") return "?overdue=true&order=due&limit=500";
  return filter ? `?status=${encodeURIComponent(filter)}&order=due&limit=500` : "?order=due&limit=500";
}

// Whether a thread belongs in the list as filtered: a thread that changed
// is sent whatever its status, and leaves the list when it no longer fits.
function fits(t) {
  const filter = document.getElementById("filter").value;
  if (filter === "overdue") return Boolean(t.overdue_at && new Date(t.overdue_at) <= Date.now());
  return !filter || t.status === filter;
}

// As the server orders them (order=due): those with a timer first, soonest
// due; then the most recently active.
function dueFirst(a, b) {
  const da = a.due_at ? new Date(a.due_at).getTime() : Infinity;
  const db = b.due_at ? new Date(b.due_at).getTime() : Infinity;
  if (da !== db) return da - db;
  return new Date(b.updated_at).getTime() - new Date(a.updated_at).getTime();
}

function drawInboxSoon() {
  if (inboxDrawn) return;
  inboxDrawn = true;
  queueMicrotask(() => {
    inboxDrawn = false;
    drawInbox();
  });
}

function drawInbox() {
  const box = document.getElementById("inbox");
  const groups = {};
  for (const t of [...inbox.values()].filter(fits).sort(dueFirst)) (groups[t.status] = groups[t.status] || []).push(t);
  const parts = ORDER.filter((s) => groups[s]).map((s) =>
    el(
      "section",
      { class: "group", "aria-labelledby": `g-${s}` },
      el("h2", { id: `g-${s}` }, `${LABEL[s]} (${groups[s].length})`),
      el(
        "ul",
        {},
        groups[s].map((t) =>
          el(
            "li",
            { "data-thread": t.id },
            el("a", { class: "title", href: `/ui/threads/${encodeURIComponent(t.id)}` }, t.title || t.id),
            t.waiting ? el("span", { class: "waits" }, `Waits for ${t.waiting}`) : null,
            t.overdue_at && new Date(t.overdue_at) <= Date.now() ? el("span", { class: "late" }, "Overdue") : null,
            t.due_at ? dueTime(t.due_at, "next reminder or deadline", "due", "due") : null,
            el(
              "span",
              { class: "row-meta" },
              el("span", { class: `badge ${t.status}` }, LABEL[t.status] || t.status),
              el("span", {}, `from ${t.origin || "?"}`),
              el("time", { datetime: t.updated_at, title: when(t.updated_at) }, `updated ${ago(t.updated_at)}`),
            ),
          ),
        ),
      ),
    ),
  );
  box.replaceChildren(...(parts.length ? parts : [el("p", { class: "muted" }, "No threads yet.")]));
  status(`Live · updated ${new Date().toLocaleTimeString()}`);
}

// The list as it changes: the stream starts with the listing, then sends a
// thread's summary each time it changes.
function followInbox() {
  return follow(() => `/threads/events${inboxQuery()}`, {
    open() {},
    frame(event, data) {
      if (event === "threads") {
        inbox.clear();
        for (const t of data) inbox.set(t.id, t);
      } else if (event === "thread") {
        inbox.set(data.id, data);
      } else {
        return;
      }
      drawInboxSoon();
    },
    refused(error) {
      status(`Could not follow the threads: ${error}`);
    },
  });
}

// -- one thread ------------------------------------------------------------------

// Who, and how they were authenticated (bot/events.py Source.how).
function who_of(source) {
  if (!source) return "threadbot";
  let who = source.name || source.user || source.channel;
  if (source.by) who = `${who} (by ${source.by})`;
  return `${who} via ${source.auth || source.channel}`;
}

function pretty(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function describe(e) {
  switch (e.type) {
    case "user_message":
      return [who_of(e.source), el("div", { class: "ev-body" }, e.text)];
    case "assistant_message":
      return ["threadbot answered", el("div", { class: "ev-body" }, e.text)];
    case "tool_call":
      if (e.ruled === false) return [`threadbot calls ${e.name} (no approval needed: its rule on the arguments)`, el("pre", {}, pretty(e.arguments))];
      if (e.name === HUMAN_INPUT) {
        const opts = e.arguments.options;
        return [
          "threadbot asks",
          el("div", { class: "ev-body" }, e.arguments.question || ""),
          opts && opts.length ? el("div", { class: "muted" }, `Options: ${opts.join(", ")}`) : null,
        ];
      }
      return [
        `threadbot calls ${e.name}${e.requires_approval ? " (needs approval)" : ""}`,
        e.text ? el("div", { class: "ev-body" }, e.text) : null,
        el("pre", {}, pretty(e.arguments)),
      ];
    case "tool_started":
      return [`${e.call_id} started`];
    case "tool_deferred":
      return [`${e.call_id} runs elsewhere; waiting for its result`, e.note ? el("div", { class: "ev-body" }, e.note) : null];
    case "tool_result":
      return [
        `${e.is_error ? "error from" : "result of"} ${e.call_id}${e.source ? ` (posted by ${who_of(e.source)})` : ""}`,
        el("pre", {}, pretty(e.output)),
      ];
    case "human_response":
      return [`${who_of(e.source)} answered`, el("div", { class: "ev-body" }, e.text)];
    case "approval":
      if (e.responded) return [`${who_of(e.source)} replied instead of deciding`, el("div", { class: "ev-body" }, e.comment || "")];
      return [
        `${e.approved ? "approved" : "rejected"} by ${who_of(e.source)}`,
        e.comment ? el("div", { class: "ev-body" }, e.comment) : null,
        e.arguments ? el("pre", {}, `ran with: ${pretty(e.arguments)}`) : null,
      ];
    case "delivered":
      return [`delivered #${e.of_seq} to ${e.channel}`];
    case "reminder":
      return [`reminded ${(e.to || []).join(", ") || "nobody"} about ${e.call_id}`];
    case "escalated":
      return [`escalated ${e.call_id} to ${(e.to || []).join(", ")}: they may decide too`];
    case "cancelled":
      return [`cancelled by ${who_of(e.source)}`, e.reason ? el("div", { class: "ev-body" }, e.reason) : null];
    case "error":
      return [`${e.fatal ? "stopped" : "error"} (${e.kind})`, el("div", { class: "ev-body" }, e.message)];
    default:
      return [e.type];
  }
}

let shownSeq = -1;
let shownPending = null;

function eventItem(threadId, e) {
  const [head, ...body] = describe(e);
  return el(
    "li",
    { class: e.type, id: `ev-${e.seq}`, "data-seq": e.seq },
    el("div", { class: "ev-head" }, el("span", {}, `#${e.seq}`), el("strong", {}, head), el("time", { datetime: e.ts }, when(e.ts))),
    ...body,
    el("details", {}, el("summary", {}, "JSON"), el("pre", {}, JSON.stringify(e, null, 2))),
    me && me.admin
      ? el(
          "div",
          { class: "ev-actions" },
          el("button", { type: "button", onclick: () => fork(threadId, e.seq), "aria-label": `Fork a new thread from event ${e.seq}` }, "Fork from here"),
        )
      : null,
  );
}

// Events after those shown, in order; the reply being written stays last.
function showEvents(threadId, events) {
  const list = document.getElementById("timeline");
  for (const e of events) {
    if (e.seq <= shownSeq) continue;
    list.insertBefore(eventItem(threadId, e), writing ? writing.item : null);
    shownSeq = e.seq;
    if (writing && e.seq >= writing.seq && REPLIES.includes(e.type)) dropWriting();
  }
}

// -- what the agent is doing, and the reply as it is written -------------------------

const REPLIES = ["assistant_message", "tool_call", "error"];
// Stored events that cannot change what the thread waits for, or its status.
const QUIET = ["delivered", "tool_started"];

let writing = null; // the reply the model is writing: { seq, item, body }
let thinking = false; // "is thinking" was seen on this stream before the reply began

function dropWriting() {
  if (writing) writing.item.remove();
  writing = null;
}

// A provisional bubble with the reply so far; the stored reply replaces it.
function showPiece(piece) {
  if (piece.done) {
    if (writing && writing.seq === piece.seq) dropWriting();
    return;
  }
  if (piece.seq <= shownSeq) return;
  if (!writing || writing.seq !== piece.seq) {
    dropWriting();
    // Joined while the reply was being written: its start came before.
    const body = el("div", { class: "ev-body" }, thinking ? "" : "… ");
    const item = el("li", { class: "assistant_message writing", id: "writing", "aria-busy": "true" },
      el("div", { class: "ev-head" }, el("strong", {}, "threadbot is writing…")), body);
    document.getElementById("timeline").append(item);
    writing = { seq: piece.seq, item, body };
  }
  writing.body.append(piece.text);
}

function showDoing(doing) {
  const box = document.getElementById("doing");
  box.hidden = !doing;
  box.textContent = doing ? `threadbot ${doing}…` : "";
  if (doing === "is thinking") thinking = true;
}

function errorBox(card, text) {
  let box = card.querySelector(".error-box");
  if (!box) {
    box = el("div", { class: "error-box", role: "alert" });
    card.append(box);
  }
  box.textContent = text;
}

async function send(card, path, payload) {
  card.querySelectorAll("button").forEach((b) => (b.disabled = true));
  const res = await api(path, { method: "POST", body: JSON.stringify(payload) });
  card.querySelectorAll("button").forEach((b) => (b.disabled = false));
  if (!res.ok) {
    errorBox(card, (res.body && res.body.error) || `Refused (${res.status})`);
    return false;
  }
  await loadThread();
  return true;
}

// The cards of what the thread waits for: one per open call (several when
// the agent asked for several things at once), each answered on its own.
function renderPending(threadId, calls, ended) {
  const box = document.getElementById("pending");
  const key = JSON.stringify([ended, calls.map((p) => [p.call_id, p.allowed, (p.approved_by || []).length, p.approvers])]);
  if (key === shownPending) return; // keep what the person is typing
  shownPending = key;
  const cards = calls.map((p) => pendingCard(threadId, p));
  if (!ended) cards.push(cancelCard(threadId));
  box.replaceChildren(...cards);
}

function timing(pending) {
  const parts = [];
  if (pending.deadline) parts.push(dueTime(pending.deadline, pending.kind === "approval" ? "Decide" : "Answer", "Deadline passed", "deadline"));
  if (pending.remind_at) parts.push(dueTime(pending.remind_at, "reminder", "reminded", "muted"));
  if (pending.approvals_required) {
    const so_far = (pending.approved_by || []).join(", ");
    parts.push(el("span", {}, `Needs ${pending.approvals_required} approvals from different people${so_far ? ` (so far: ${so_far})` : ""}.`));
  }
  return parts.length ? el("p", { class: "timing" }, ...parts) : null;
}

function pendingCard(threadId, pending) {
  const base = `/threads/${encodeURIComponent(threadId)}`;
  const id = pending.call_id.replace(/[^A-Za-z0-9_-]/g, "_");
  let card;
  if (!pending.allowed) {
    // Offer only what this person may do; say who may.
    const deciders = (pending.deciders || []).join(", ");
    const what = pending.kind === "question" ? "The agent asks" : pending.kind === "approval" ? `Approve ${pending.tool}?` : `Waiting for the result of ${pending.tool}`;
    card = el("div", { class: "card" }, el("h2", {}, what),
      pending.kind === "question" ? el("p", { class: "ev-body" }, pending.question || "") : el("pre", {}, pretty(pending.arguments)),
      timing(pending),
      el("p", { class: "not-yours" }, deciders
        ? `Only ${deciders} may decide this; you may not.`
        : "You may not settle this: it waits for the people in this thread or an approver."));
  } else if (pending.kind === "question") {
    const area = el("textarea", { id: `answer-${id}`, name: "answer", required: true });
    card = el(
      "form",
      { class: "card", onsubmit: (ev) => { ev.preventDefault(); if (area.value.trim()) send(card, `${base}/responses`, { text: area.value.trim(), call_id: pending.call_id }); } },
      el("h2", {}, "The agent asks"),
      el("p", { class: "ev-body" }, pending.question || ""),
      timing(pending),
      (pending.options || []).length
        ? el(
            "div",
            { class: "buttons", role: "group", "aria-label": "Options" },
            pending.options.map((o) =>
              el("button", { type: "button", onclick: () => send(card, `${base}/responses`, { text: o, option: o, call_id: pending.call_id }) }, o),
            ),
          )
        : null,
      el("label", { for: `answer-${id}` }, "Your answer"),
      area,
      el("div", { class: "buttons" }, el("button", { type: "submit", class: "primary" }, "Send answer")),
    );
  } else if (pending.kind === "approval") {
    const reason = el("textarea", { id: `reason-${id}`, name: "reason" });
    const reasonBlock = el("div", { hidden: true }, el("label", { for: `reason-${id}` }, "Why reject? The agent reads this."), reason,
      el("div", { class: "buttons" }, el("button", { type: "button", class: "danger", onclick: () => {
        if (!reason.value.trim()) { errorBox(card, "Say why, so the agent can do better."); reason.focus(); return; }
        send(card, `${base}/approvals`, { approved: false, comment: reason.value.trim(), call_id: pending.call_id });
      } }, "Reject with this reason")));
    const reply = el("textarea", { id: `reply-${id}`, name: "reply" });
    const replyBlock = el("div", { hidden: true }, el("label", { for: `reply-${id}` }, "Your reply: the call does not run, and the agent reads this instead."), reply,
      el("div", { class: "buttons" }, el("button", { type: "button", class: "primary", onclick: () => {
        if (!reply.value.trim()) { errorBox(card, "Write what the agent should read."); reply.focus(); return; }
        send(card, `${base}/approvals`, { respond: reply.value.trim(), call_id: pending.call_id });
      } }, "Send reply")));
    card = el(
      "div",
      { class: "card" },
      el("h2", {}, `Approve ${pending.tool}?`),
      el("pre", {}, pretty(pending.arguments)),
      timing(pending),
      el(
        "div",
        { class: "buttons" },
        el("button", { type: "button", class: "primary", onclick: () => send(card, `${base}/approvals`, { approved: true, call_id: pending.call_id }) }, "Approve"),
        el("button", { type: "button", onclick: () => { reasonBlock.hidden = false; replyBlock.hidden = true; reason.focus(); } }, "Reject…"),
        el("button", { type: "button", onclick: () => { replyBlock.hidden = false; reasonBlock.hidden = true; reply.focus(); } }, "Reply instead…"),
      ),
      reasonBlock,
      replyBlock,
    );
  } else {
    card = el("div", { class: "card" }, el("h2", {}, `Waiting for the result of ${pending.tool}`),
      el("p", { class: "muted" }, `Post it with POST ${base}/results and call_id ${pending.call_id}.`));
  }
  return card;
}

function cancelCard(threadId) {
  const reason = el("input", { id: "cancel-reason", name: "reason", type: "text" });
  const card = el(
    "details",
    { class: "cancel" },
    el("summary", {}, "Cancel this thread…"),
    el("p", { class: "muted" }, "It stops whatever it waits for; what is open is settled as cancelled."),
    el("label", { for: "cancel-reason" }, "Why (optional)"),
    reason,
    el("div", { class: "buttons" }, el("button", { type: "button", class: "danger", onclick: () =>
      send(card, `/threads/${encodeURIComponent(threadId)}/cancel`, { reason: reason.value.trim() || null }) }, "Cancel thread")),
  );
  return card;
}

async function fork(threadId, seq) {
  const res = await api(`/threads/${encodeURIComponent(threadId)}/fork`, { method: "POST", body: JSON.stringify({ at: seq }) });
  if (res.ok) location.href = `/ui/threads/${encodeURIComponent(res.body.id)}`;
  else status((res.body && res.body.error) || `Fork refused (${res.status})`);
}

async function loadThread() {
  const threadId = document.body.dataset.thread;
  const res = await api(`/threads/${encodeURIComponent(threadId)}`);
  if (!res.ok) {
    document.getElementById("title").textContent = (res.body && res.body.error) || "Not found";
    return false;
  }
  const t = res.body;
  document.title = `${t.title || t.id} · threadbot`;
  document.getElementById("title").textContent = t.title || t.id;
  const badge = document.getElementById("state");
  badge.className = `badge ${t.status}`;
  badge.textContent = LABEL[t.status] || t.status;
  showEvents(threadId, t.events);
  renderPending(threadId, t.pending_calls || (t.pending ? [t.pending] : []), ENDED.includes(t.status));
  return true;
}

// What the thread waits for, and its status, read again once after events
// that may change them; a tab in the background waits until it is shown.
let reading = false;
let readAgain = false;
let readWhenShown = false;

async function readSoon() {
  if (document.hidden) {
    readWhenShown = true;
    return;
  }
  if (reading) {
    readAgain = true;
    return;
  }
  reading = true;
  try {
    do {
      readAgain = false;
      await loadThread();
    } while (readAgain);
  } finally {
    reading = false;
  }
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && readWhenShown) {
    readWhenShown = false;
    readSoon();
  }
});

async function startThread() {
  const threadId = document.body.dataset.thread;
  if (!(await loadThread())) return;
  follow(() => `/threads/${encodeURIComponent(threadId)}/events?after=${shownSeq}`, {
    open() {
      dropWriting();
      showDoing(null);
      thinking = false;
      status("Live");
    },
    frame(event, data) {
      if (event === "delta") showPiece(data);
      else if (event === "activity") showDoing(data.doing);
      else if (data.seq > shownSeq) {
        showEvents(threadId, [data]);
        if (!QUIET.includes(data.type)) readSoon();
      }
    },
    refused(error) {
      status(`Not following this thread: ${error}`);
    },
  });
}

// -- start -------------------------------------------------------------------------

async function start() {
  await loadMe();
  if (!me && offersSignIn()) return; // the sign-in form is showing
  setInterval(tickCountdowns, 1000); // local: no requests
  if (document.body.dataset.page === "inbox") startInbox();
  else if (document.body.dataset.page === "thread") startThread();
}

function startInbox() {
  const filter = document.getElementById("filter");
  filter.value = new URLSearchParams(location.search).get("status") || "";
  let stop = followInbox();
  filter.addEventListener("change", () => {
    const url = new URL(location.href);
    if (filter.value) url.searchParams.set("status", filter.value);
    else url.searchParams.delete("status");
    history.replaceState(null, "", url);
    stop();
    drawInbox(); // at once from what is known; the new listing follows
    stop = followInbox();
  });
}

start();
