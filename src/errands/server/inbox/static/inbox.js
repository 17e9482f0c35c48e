// errands inbox: live updates over server-sent events, actions through the JSON API.
// No framework, no build step. Every state-changing request sends X-CSRF-Token (the
// value of the page's csrf-token meta tag, equal to the errands_csrf cookie).
"use strict";

(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const body = document.body;
  const page = body.dataset.page;

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // a request to the API (POST, PATCH, DELETE: a DELETE sends no body); the answer's
  // JSON, or an Error saying why it was refused
  async function send(method, path, data, headers = {}) {
    const response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: {
        ...(method === "DELETE" ? {} : { "Content-Type": "application/json" }),
        "X-CSRF-Token": csrf,
        "X-Errands-Channel": "inbox",
        ...headers,
      },
      body: method === "DELETE" ? undefined : JSON.stringify(data ?? {}),
    });
    let answer = null;
    try {
      answer = await response.json();
    } catch (_) {
      answer = null;
    }
    if (!response.ok) {
      const detail = answer && typeof answer.detail === "string" ? answer.detail : `HTTP ${response.status}`;
      throw new Error(detail);
    }
    return answer;
  }

  const post = (path, data, headers = {}) => send("POST", path, data, headers);

  function showError(el, message) {
    if (!el) return;
    el.textContent = message || "";
    el.hidden = !message;
  }

  function fragment(html) {
    const t = document.createElement("template");
    t.innerHTML = html;
    return t.content;
  }

  function setBadge(count) {
    const badge = document.getElementById("badge");
    if (!badge || Number.isNaN(count)) return;
    badge.textContent = String(count);
    badge.dataset.count = String(count);
    badge.classList.toggle("empty", count === 0);
    document.title = (count ? `(${count}) ` : "") + document.title.replace(/^\(\d+\) /, "");
  }

  // Replace the cards in *container* with those in *fresh*, keeping cards that are still
  // pending untouched (a half-typed edit or reason survives a live update).
  function mergeCards(container, fresh) {
    if (!container) return;
    const wanted = Array.from(fresh.querySelectorAll("article.approval"));
    const ids = new Set(wanted.map((c) => c.dataset.approvalId));
    container.querySelectorAll("article.approval").forEach((card) => {
      if (!ids.has(card.dataset.approvalId)) card.remove();
    });
    let anchor = null;
    for (const card of wanted) {
      const existing = container.querySelector(`article.approval[data-approval-id="${CSS.escape(card.dataset.approvalId)}"]`);
      const node = existing || card;
      if (anchor) anchor.after(node);
      else container.prepend(node);
      anchor = node;
    }
  }

  // -- live connection --------------------------------------------------------------------

  function listen(url, handlers) {
    const live = document.getElementById("live");
    const source = new EventSource(url);
    source.onopen = () => live && live.classList.add("on");
    source.onerror = () => live && live.classList.remove("on");
    for (const [name, fn] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => fn(JSON.parse(event.data)));
    }
    return source;
  }

  function debounce(fn, ms) {
    let timer = null;
    let running = false;
    let again = false;
    const run = async () => {
      timer = null;
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        await fn();
      } catch (err) {
        console.warn("errands: refresh failed", err);
      } finally {
        running = false;
        if (again) {
          again = false;
          schedule();
        }
      }
    };
    const schedule = () => {
      if (timer === null) timer = setTimeout(run, ms);
    };
    return schedule;
  }

  // -- the inbox page ---------------------------------------------------------------------

  async function refreshInbox() {
    const show = new URLSearchParams(window.location.search).get("show") || "all";
    const response = await fetch(`/fragments/inbox?show=${encodeURIComponent(show)}`, { credentials: "same-origin" });
    if (!response.ok) return;
    const fresh = fragment(await response.text());
    const queue = document.getElementById("queue");
    const freshQueue = fresh.getElementById("queue");
    if (queue && freshQueue) {
      const count = Number(freshQueue.dataset.count);
      queue.dataset.count = String(count);
      queue.querySelector("h2 .count").textContent = String(count);
      let cards = queue.querySelector(".cards");
      const note = queue.querySelector(".empty-note");
      if (count > 0 && !cards) {
        cards = document.createElement("div");
        cards.className = "cards";
        queue.append(cards);
      }
      if (cards) mergeCards(cards, freshQueue);
      if (note) note.hidden = count > 0;
      if (count === 0 && !note) queue.append(fresh.querySelector("#queue .empty-note") || "");
      setBadge(count);
    }
    const errands = document.getElementById("errands");
    const freshErrands = fresh.getElementById("errands");
    if (errands && freshErrands) errands.replaceWith(freshErrands);
  }

  // -- an errand's page ---------------------------------------------------------------------

  const errandId = body.dataset.errandId;
  let lastSeq = Number(body.dataset.lastSeq || 0);

  async function refreshErrand() {
    const response = await fetch(`/fragments/errands/${encodeURIComponent(errandId)}?after=${lastSeq}`, {
      credentials: "same-origin",
    });
    if (!response.ok) return;
    const fresh = fragment(await response.text());
    const head = fresh.getElementById("f-head");
    const timeline = document.getElementById("timeline");
    let callEnded = false; // a model response (or an error): the live text is done
    fresh.querySelectorAll("#f-events > li").forEach((item) => {
      const seq = Number(item.dataset.seq);
      if (seq <= lastSeq || timeline.querySelector(`li[data-seq="${seq}"]`)) return;
      if (item.classList.contains("ev-model") || item.classList.contains("ev-error")) callEnded = true;
      timeline.append(item);
    });
    if (head) {
      lastSeq = Math.max(lastSeq, Number(head.dataset.lastSeq));
      body.dataset.lastSeq = String(lastSeq);
      document.getElementById("head").replaceChildren(...head.childNodes);
      // an errand stopped at a limit: a reply cannot continue it (the head says how)
      const reply = document.getElementById("reply-section");
      if (reply) reply.hidden = head.dataset.deadEnd === "1";
      if (head.dataset.pending !== "") setBadge(Number(head.dataset.pending));
    }
    mergeCards(document.getElementById("errand-approvals"), fresh.getElementById("f-approvals"));
    if (callEnded) clearLiveText();
  }

  function clearLiveText() {
    const liveText = document.getElementById("live-text");
    liveText.hidden = true;
    liveText.querySelector(".text").textContent = "";
  }

  // -- the schedules page ---------------------------------------------------------------------

  async function refreshSchedules() {
    const response = await fetch("/fragments/schedules", { credentials: "same-origin" });
    if (!response.ok) return;
    const fresh = fragment(await response.text()).getElementById("schedules");
    const current = document.getElementById("schedules");
    if (!fresh || !current) return;
    // a row whose action failed keeps its error until its next action
    current.querySelectorAll(".schedule-row .error:not([hidden])").forEach((error) => {
      const name = error.closest(".schedule-row").dataset.name;
      const twin = fresh.querySelector(`.schedule-row[data-name="${CSS.escape(name)}"] .error`);
      if (twin) showError(twin, error.textContent);
    });
    current.replaceWith(fresh);
  }

  // pause, resume, run now, remove: through the API; the page says what happened
  async function scheduleAction(row, action) {
    const name = row.dataset.name;
    const path = `/api/schedules/${encodeURIComponent(name)}`;
    const error = row.querySelector(".error");
    showError(error, "");
    if (action === "remove-schedule" && !window.confirm(`Remove ${name}? The errands it started stay.`)) return;
    const buttons = row.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    try {
      let said;
      if (action === "pause-schedule") {
        await send("PATCH", path, { paused: true });
        said = `${name} paused: no slot starts a run until you resume it.`;
      } else if (action === "resume-schedule") {
        await send("PATCH", path, { paused: false });
        said = `${name} resumed from its next slot.`;
      } else if (action === "run-schedule") {
        said = (await post(`${path}/run`, {})).detail;
      } else {
        await send("DELETE", path);
        said = `${name} removed; the errands it started stay.`;
      }
      const note = document.getElementById("schedule-said");
      note.textContent = said;
      note.hidden = false;
      await refreshSchedules();
    } catch (err) {
      showError(error, err.message);
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  // -- actions ------------------------------------------------------------------------------

  let refresh = () => {};

  async function decide(card, action, button) {
    const id = card.dataset.approvalId;
    const error = card.querySelector(".error");
    showError(error, "");
    if (action === "edit") {
      const editor = card.querySelector(".editor");
      editor.hidden = !editor.hidden;
      card.querySelector('[data-action="approve"]').textContent = editor.hidden ? "Approve" : "Approve edited";
      if (!editor.hidden) {
        editor.querySelector(".edit-field, .pair-name, textarea.edit-args").focus();
        showDecision(card);
      }
      return;
    }
    let path;
    let data;
    if (action === "deny") {
      const denier = card.querySelector(".denier");
      const input = denier.querySelector("input");
      if (denier.hidden) {
        denier.hidden = false;
        button.textContent = "Deny with this reason";
        input.focus();
        return;
      }
      const reason = input.value.trim();
      if (!reason) {
        showError(error, "Say why: the reason goes back to the model.");
        input.focus();
        return;
      }
      path = `/api/approvals/${encodeURIComponent(id)}/deny`;
      data = { reason };
    } else {
      data = { args_hash: card.dataset.argsHash, always: card.querySelector(".always-box").checked };
      const editor = card.querySelector(".editor");
      if (!editor.hidden) {
        try {
          data.edited_arguments = JSON.parse(editor.querySelector("textarea.edit-args").value);
        } catch (err) {
          showError(error, `The arguments are not valid JSON: ${err.message}`);
          return;
        }
        if (data.edited_arguments === null || typeof data.edited_arguments !== "object" || Array.isArray(data.edited_arguments)) {
          showError(error, "The arguments must be a JSON object.");
          return;
        }
      }
      path = `/api/approvals/${encodeURIComponent(id)}/approve`;
    }
    const buttons = card.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    try {
      await post(path, data);
      card.classList.add("decided");
      card.remove();
      refresh();
    } catch (err) {
      showError(error, err.message);
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const action = button.dataset.action;
    if (action === "logout") {
      await post("/logout", {}).catch(() => null);
      window.location.href = "/login";
      return;
    }
    if (action === "delete-memory") {
      // a purge (docs/memory.md): asked once, then the row leaves the page
      if (!window.confirm(`Delete memory ${button.dataset.memoryId} for good?`)) return;
      button.disabled = true;
      try {
        await send("DELETE", `/api/memory/${encodeURIComponent(button.dataset.memoryId)}`);
        button.closest(".memory-row").remove();
      } catch (err) {
        window.alert(err.message);
        button.disabled = false;
      }
      return;
    }
    if (action === "approve-mcp") {
      // pin exactly the definition shown (its digest): a server that lists anything else
      // by now is refused, and the page shows what it lists
      const tool = button.dataset.tool;
      button.disabled = true;
      try {
        await post(`/api/mcp/${encodeURIComponent(button.dataset.server)}/approve`, {
          tool,
          digests: { [tool]: button.dataset.digest },
        });
      } catch (err) {
        window.alert(err.message);
      }
      window.location.reload();
      return;
    }
    if (action === "archive" || action === "unarchive") {
      button.disabled = true;
      try {
        await post(`/api/errands/${encodeURIComponent(button.dataset.errandId)}/archive`, { archived: action === "archive" });
        const row = button.closest(".errand-row");
        if (row) {
          row.remove(); // it leaves this list (archived ones have their own)
        } else {
          button.dataset.action = action === "archive" ? "unarchive" : "archive";
          button.textContent = action === "archive" ? "Unarchive" : "Archive";
        }
      } catch (err) {
        window.alert(err.message);
      } finally {
        button.disabled = false;
      }
      refresh();
      return;
    }
    if (action === "add-pair" || action === "remove-pair") {
      const fieldset = button.closest("fieldset.pairs");
      const card = button.closest("article.approval");
      if (action === "add-pair") {
        const row = pairRow("", "");
        fieldset.querySelector(".pair-rows").append(row);
        row.querySelector("input").focus();
      } else {
        button.closest(".pair").remove();
      }
      fieldsToJson(card);
      return;
    }
    if (action === "cancel") {
      if (!window.confirm("Cancel this errand? Its pending approvals become void.")) return;
      button.disabled = true;
      try {
        await post(`/api/errands/${encodeURIComponent(button.dataset.errandId)}/cancel`, { reason: "cancelled in the inbox" });
      } catch (err) {
        button.disabled = false;
        window.alert(err.message);
      }
      refresh();
      return;
    }
    const scheduleRow = button.closest(".schedule-row");
    if (scheduleRow) {
      await scheduleAction(scheduleRow, action);
      return;
    }
    const card = button.closest("article.approval");
    if (card) await decide(card, action, button);
  });

  function composer(form, submit) {
    if (!form) return;
    let key = randomKey(); // one key per request: a double submit creates nothing twice
    form.addEventListener("input", () => {
      key = randomKey();
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = form.querySelector(".error");
      const button = form.querySelector("button[type=submit]");
      showError(error, "");
      button.disabled = true;
      try {
        await submit(new FormData(form), key);
        key = randomKey();
      } catch (err) {
        showError(error, String(err.message).split(/\s+/).join(" ").trim()); // one line
      } finally {
        button.disabled = false;
      }
    });
  }

  composer(document.getElementById("start-form"), async (data, key) => {
    const text = String(data.get("text") || "");
    const model = String(data.get("model") || "").trim();
    const created = await post("/api/errands", { text, model: model || null }, { "Idempotency-Key": key });
    window.location.href = `/errands/${encodeURIComponent(created.id)}`;
  });

  composer(document.getElementById("reply-form"), async (data, key) => {
    const form = document.getElementById("reply-form");
    await post(`/api/errands/${encodeURIComponent(form.dataset.errandId)}/messages`, { text: String(data.get("text") || "") }, {
      "Idempotency-Key": key,
    });
    form.reset();
  });

  // -- an approval's edit form: the fields its tool declares, kept in step with the JSON -----

  function argumentsOf(card) {
    const raw = card.querySelector("textarea.edit-args");
    for (const text of [raw.value, raw.defaultValue]) {
      try {
        const value = JSON.parse(text);
        if (value && typeof value === "object" && !Array.isArray(value)) return value;
      } catch (_) {
        // not valid (yet): the fields start from what was asked
      }
    }
    return {};
  }

  // one header row of a request's editor: name, value, and a remove button
  function pairRow(name, value) {
    const row = document.createElement("div");
    row.className = "pair";
    row.innerHTML =
      '<input type="text" class="pair-name" aria-label="header name" spellcheck="false">' +
      '<input type="text" class="pair-value" aria-label="header value" spellcheck="false">' +
      '<button type="button" class="link" data-action="remove-pair" title="remove">✕</button>';
    row.querySelector(".pair-name").value = name;
    row.querySelector(".pair-value").value = value;
    return row;
  }

  function readField(el) {
    const kind = el.dataset.kind;
    const nullable = el.dataset.nullable === "1";
    if (kind === "pairs") {
      const out = {};
      el.querySelectorAll(".pair").forEach((row) => {
        const name = row.querySelector(".pair-name").value.trim();
        if (name) out[name] = row.querySelector(".pair-value").value;
      });
      return nullable && Object.keys(out).length === 0 ? null : out;
    }
    const value = el.value;
    if (kind === "list") {
      const items = value.split(",").map((v) => v.trim()).filter(Boolean);
      return nullable && items.length === 0 ? null : items;
    }
    if (kind === "number") {
      if (value.trim() === "") return null;
      const n = Number(value);
      return Number.isFinite(n) ? n : value;
    }
    return nullable && value === "" ? null : value;
  }

  function writeField(el, value) {
    const kind = el.dataset.kind;
    if (kind === "pairs") {
      const rows = el.querySelector(".pair-rows");
      const entries = value && typeof value === "object" && !Array.isArray(value) ? Object.entries(value) : [];
      rows.replaceChildren();
      for (const [name, v] of entries) {
        rows.append(pairRow(name, v === null || v === undefined ? "" : String(v)));
      }
      return;
    }
    if (kind === "list") el.value = Array.isArray(value) ? value.join(", ") : value == null ? "" : String(value);
    else if (typeof value === "string") el.value = value;
    else el.value = value == null ? "" : JSON.stringify(value);
  }

  function fieldsToJson(card) {
    if (!card) return;
    const args = argumentsOf(card);
    card.querySelectorAll(".fields [data-arg]").forEach((el) => {
      args[el.dataset.arg] = readField(el);
    });
    card.querySelector("textarea.edit-args").value = JSON.stringify(args, null, 2);
  }

  function jsonToFields(card) {
    let args;
    try {
      args = JSON.parse(card.querySelector("textarea.edit-args").value);
    } catch (_) {
      return; // half-typed: the fields wait for valid JSON
    }
    if (!args || typeof args !== "object" || Array.isArray(args)) return;
    card.querySelectorAll(".fields [data-arg]").forEach((el) => writeField(el, args[el.dataset.arg]));
  }

  // what the policy says about the edited call, shown before the yes (a deny is refused)
  async function showDecision(card) {
    const line = card.querySelector(".edit-decision");
    if (!line) return;
    let args;
    try {
      args = JSON.parse(card.querySelector("textarea.edit-args").value);
    } catch (_) {
      line.textContent = "";
      return;
    }
    try {
      const said = await post(`/api/approvals/${encodeURIComponent(card.dataset.approvalId)}/policy`, { edited_arguments: args });
      if (!said || !said.decision) {
        line.textContent = "";
        return;
      }
      line.dataset.decision = said.decision;
      const why = said.reason ? `: ${said.reason}` : "";
      line.textContent = `The policy for these arguments: ${said.decision}${why} (rule ${said.rule})`;
    } catch (err) {
      line.dataset.decision = "invalid";
      line.textContent = err.message;
    }
  }
  const decisionTimers = new WeakMap();
  function decisionSoon(card) {
    clearTimeout(decisionTimers.get(card));
    decisionTimers.set(card, setTimeout(() => showDecision(card), 300));
  }

  document.addEventListener("input", (event) => {
    const card = event.target.closest && event.target.closest("article.approval");
    if (!card) return;
    if (event.target.matches("textarea.edit-args")) jsonToFields(card);
    else if (event.target.closest(".fields")) fieldsToJson(card);
    if (card.querySelector(".edit-decision")) decisionSoon(card);
  });

  // -- an errand stopped at its step limit: continue with N more steps -----------------------

  document.addEventListener("input", (event) => {
    const form = event.target.closest && event.target.closest("form.continue-form");
    if (!form) return;
    const n = form.querySelector(".n");
    if (n) n.textContent = String(event.target.value || "?");
  });

  document.addEventListener("submit", async (event) => {
    const form = event.target.closest("form.continue-form");
    if (!form) return;
    event.preventDefault();
    const box = form.closest(".dead-end");
    const error = box ? box.querySelector(".error") : null;
    const button = form.querySelector("button[type=submit]");
    showError(error, "");
    const more = Number(new FormData(form).get("more_steps"));
    if (!Number.isInteger(more) || more < 1) {
      showError(error, "Give a whole number of steps, 1 or more.");
      return;
    }
    button.disabled = true;
    try {
      await post(`/api/errands/${encodeURIComponent(form.dataset.errandId)}/resume`, { more_steps: more });
      refresh();
    } catch (err) {
      showError(error, err.message);
      button.disabled = false;
    }
  });

  // -- the store banner: shown while the store cannot write (a full disk, a held lock) ------

  const STORE_POLL_MS = 5000;

  async function checkStore() {
    const banner = document.getElementById("store-banner");
    if (!banner) return;
    let store = null;
    try {
      const response = await fetch("/api/health", { credentials: "same-origin" });
      if (!response.ok) return;
      store = (await response.json()).store || null;
    } catch (_) {
      return; // the server is not answering: the live dot says so
    }
    if (!store) {
      banner.hidden = true;
      banner.dataset.condition = "";
      return;
    }
    if (banner.hidden || banner.dataset.condition !== store.condition) {
      banner.dataset.condition = store.condition;
      banner.querySelector(".detail").textContent = store.detail;
      banner.querySelector(".since").textContent = `(since ${new Date(store.since * 1000).toLocaleTimeString()})`;
      banner.hidden = false;
    }
  }

  if (document.getElementById("store-banner")) setInterval(checkStore, STORE_POLL_MS);

  // -- a long errand: the page before, loaded when its link scrolls into view -----------------

  // The page shows the request and the newest events; "N earlier events" links to the page
  // before (?before=SEQ), which also works without this script. Scrolled into view, the
  // link is replaced by that page's events (and its own link, for the page before that),
  // keeping what the person was reading where it was.
  function loadOlderOnScroll() {
    const timeline = document.getElementById("timeline");
    if (!timeline || !("IntersectionObserver" in window)) return;
    let loading = false;
    const observer = new IntersectionObserver(async (entries) => {
      const link = document.getElementById("older");
      if (loading || !link || !entries.some((e) => e.isIntersecting)) return;
      loading = true;
      try {
        const response = await fetch(link.href, { credentials: "same-origin" });
        if (!response.ok) return;
        const older = new DOMParser().parseFromString(await response.text(), "text/html");
        const there = older.getElementById("timeline");
        const item = link.closest("li");
        if (!there || !item) return;
        const skip = Array.from(timeline.children).indexOf(item); // (the request, on both)
        const items = Array.from(there.children).slice(skip).map((n) => document.importNode(n, true));
        observer.unobserve(item);
        const below = document.documentElement.scrollHeight - window.scrollY;
        item.replaceWith(...items);
        window.scrollTo(0, document.documentElement.scrollHeight - below);
        const next = document.getElementById("older");
        if (next) observer.observe(next.closest("li"));
      } finally {
        loading = false;
      }
    });
    const link = document.getElementById("older");
    if (link) observer.observe(link.closest("li"));
  }

  // -- wiring ---------------------------------------------------------------------------------

  const SCHEDULES_POLL_MS = 5000; // next runs, checks and errors change without an errand

  if (page === "inbox") {
    refresh = debounce(refreshInbox, 250);
    listen("/api/stream", { changed: refresh });
  } else if (page === "schedules") {
    refresh = debounce(refreshSchedules, 250);
    listen("/api/stream", { changed: refresh }); // a run started, finished, cost something
    setInterval(refresh, SCHEDULES_POLL_MS);
  } else if (page === "errand" && errandId) {
    loadOlderOnScroll();
    refresh = debounce(refreshErrand, 100);
    const liveText = document.getElementById("live-text");
    listen(`/api/errands/${encodeURIComponent(errandId)}/stream?after=${lastSeq}`, {
      event: refresh,
      view: refresh,
      text: (data) => {
        liveText.hidden = false;
        liveText.querySelector(".text").textContent += data.delta;
      },
      // a retry or the next model of a chain starts the reply over: drop the partial text
      text_reset: clearLiveText,
      // a running tool's output (static/live-output.js shows it)
      output: (data) => document.dispatchEvent(new CustomEvent("errands:output", { detail: data })),
    });
  }
})();
