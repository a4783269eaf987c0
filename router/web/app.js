// The router's page: models and their status (live from /models/sse), load and unload, a log
// view per model, and a chat playground. Plain script, nothing fetched but the router's API.
//
// Everything a model, a child or a client can put in front of this page (model ids, aliases,
// paths, errors, log lines, answers) is hostile text: it is written with textContent (or as
// Text nodes), never parsed as HTML. The server's Content-Security-Policy forbids inline script.
"use strict";

(() => {
  const KEY_STORAGE = "llama-router.api-key";
  const POLL_MS = 2000; // when the router has no event stream
  const POLLS_BEFORE_RETRY = 15; // then ask for the event stream again
  const MAX_LOG_LINES = 5000;
  const AGE_REDRAW_MS = 5000; // how often "last used ... ago" is redrawn
  const SEAM_MS = 500; // how long live log lines wait for the recent ones they may repeat
  const SOURCES = { models_dir: "models folder", "conf.d": "conf.d", preset: "preset file" };
  const SIGNALS = { 1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM" };

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** An element with text (as a Text node) and attributes; children appended as given. */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name.startsWith("data-")) node.setAttribute(name, value);
      else node[name] = value;
    }
    node.append(...children.filter((child) => child !== null && child !== undefined));
    return node;
  }

  // ---- the API key: asked once for the tab, kept in sessionStorage ----------------------------

  let keyQuestion = null; // one question shared by every request that met a 401

  function storedKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function askForKey(wasRefused) {
    if (keyQuestion) return keyQuestion;
    keyQuestion = new Promise((resolve) => {
      const dialog = $("key-dialog");
      const form = $("key-form");
      $("key-refused").hidden = !wasRefused;
      $("key-input").value = "";
      const onSubmit = (event) => {
        event.preventDefault();
        const key = $("key-input").value.trim();
        if (!key) return;
        form.removeEventListener("submit", onSubmit);
        sessionStorage.setItem(KEY_STORAGE, key);
        dialog.close();
        keyQuestion = null;
        resolve(key);
      };
      form.addEventListener("submit", onSubmit);
      dialog.addEventListener("cancel", (event) => event.preventDefault()); // nothing works without it
      dialog.showModal();
      $("key-input").focus();
    });
    return keyQuestion;
  }

  /** fetch() with the key, if there is one; on a 401, asks for a key and tries again. */
  async function api(path, options = {}) {
    for (;;) {
      const key = storedKey();
      const headers = new Headers(options.headers || {});
      if (key) headers.set("Authorization", `Bearer ${key}`);
      const response = await fetch(path, { ...options, headers, cache: "no-store" });
      if (response.status !== 401) return response;
      await response.body?.cancel();
      if (storedKey() === key) await askForKey(Boolean(key)); // else another request got one
    }
  }

  function postJson(path, body, options = {}) {
    return api(path, {
      ...options,
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  /** What went wrong, from an OpenAI-style error body if there is one. */
  async function problemOf(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return String(body.error.message);
    } catch {
      // not JSON: the status says it
    }
    return `${response.status} ${response.statusText}`;
  }

  /**
   * Calls onData(text) for each server-sent event's data, until the stream ends, and
   * onComment(text) for each comment (": subscribed" says no event from then on is lost).
   * Accepts \n and \r\n line ends; ignores ids and event names.
   */
  async function readEvents(response, onData, onComment = () => {}) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const raw of lines) {
        const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        if (line === "") {
          if (data.length) onData(data.join("\n"));
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        } else if (line.startsWith(":")) {
          onComment(line.slice(1).trim());
        }
      }
    }
  }

  function isEventStream(response) {
    return response.ok && (response.headers.get("Content-Type") || "").startsWith("text/event-stream");
  }

  // ---- models --------------------------------------------------------------------------------

  const rows = new Map(); // model id -> its <tr>
  let refreshing = null;
  let refreshAgain = false;

  /** Read GET /models and redraw; calls made meanwhile fold into one more read after it. */
  function refreshModels() {
    if (refreshing) {
      refreshAgain = true;
      return refreshing;
    }
    refreshing = (async () => {
      do {
        refreshAgain = false;
        await readModels();
      } while (refreshAgain);
    })().finally(() => {
      refreshing = null;
    });
    return refreshing;
  }

  async function readModels() {
    const problem = $("models-error");
    try {
      const response = await api("/models");
      if (!response.ok) throw new Error(await problemOf(response));
      const body = await response.json();
      problem.hidden = true;
      drawModels(body.data || [], body.spares || []);
    } catch (error) {
      problem.textContent = `Cannot read the models: ${error.message}`;
      problem.hidden = false;
    }
  }

  function statusName(status) {
    if (status.failed) return "failed";
    return String(status.value || "unknown");
  }

  /** Why a model failed, in words: how its process ended, then what it said. */
  function failureReason(status) {
    const parts = [];
    const error = status.error ? String(status.error) : "";
    const signal = status.signal || (typeof status.exit_code === "number" && status.exit_code < 0 ? -status.exit_code : 0);
    if (signal && !/signal/i.test(error)) {
      const name = SIGNALS[signal] ? ` (${SIGNALS[signal]})` : "";
      parts.push(`killed by signal ${signal}${name}`);
    } else if (typeof status.exit_code === "number" && status.exit_code > 0 && !/exit/i.test(error)) {
      parts.push(`exited with code ${status.exit_code}`);
    }
    if (error) parts.push(error);
    return parts.join(": ") || "failed (no reason given)";
  }

  function ago(unixSeconds) {
    const seconds = Math.max(0, Date.now() / 1000 - unixSeconds);
    if (seconds < 60) return `${Math.round(seconds)} s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
    return new Date(unixSeconds * 1000).toLocaleString();
  }

  function bytes(value) {
    if (typeof value === "string") return value;
    if (typeof value !== "number" || !Number.isFinite(value)) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let amount = value;
    let unit = 0;
    while (amount >= 1024 && unit < units.length - 1) {
      amount /= 1024;
      unit += 1;
    }
    return `${amount.toFixed(unit ? 1 : 0)} ${units[unit]}`;
  }

  function lastUsed(entry) {
    const value = entry.last_used;
    return typeof value === "number" && value > 0 ? ago(value) : "—";
  }

  function memoryOf(entry) {
    const memory = entry.memory ?? entry.status?.memory;
    if (memory && typeof memory === "object") {
      return bytes(memory.rss ?? memory.bytes ?? memory.total);
    }
    return bytes(memory);
  }

  /** Whether a model is pinned now (by its file, or at run time: POST /models/pin). */
  function isPinned(entry) {
    return Boolean(entry.pinned ?? entry.settings?.pinned);
  }

  function modelCell(entry) {
    const fromFile = Boolean(entry.settings?.pinned);
    const title = `never evicted nor unloaded when idle (${fromFile ? "its conf.d file says pinned" : "pinned here, until the router restarts"})`;
    const cell = el("td", {},
      el("div", { class: "model-id", text: entry.id },
        isPinned(entry) ? el("span", { class: "tag pinned", text: "pinned", title }) : null),
    );
    if (entry.aliases && entry.aliases.length) {
      cell.append(el("div", { class: "detail", text: `aliases: ${entry.aliases.join(", ")}` }));
    }
    const where = entry.path || (entry.command ? entry.command.join(" ") : entry.file) || "";
    const source = SOURCES[entry.source] || String(entry.source || "");
    cell.append(el("div", { class: "detail", text: [source, where].filter(Boolean).join(": ") }));
    if (entry.description) cell.append(el("div", { class: "detail", text: entry.description }));
    return cell;
  }

  function statusCell(entry) {
    const status = entry.status || {};
    const name = statusName(status);
    const cell = el("td", {}, el("span", { class: "status", "data-status": name, text: name }));
    if (name === "failed" || name === "invalid") {
      const reason = name === "failed" ? failureReason(status) : String(status.error || "");
      cell.append(el("div", { class: "reason failure", text: reason }));
    }
    if (status.config_error) {
      cell.append(el("div", { class: "reason", text: `conf.d file broken, last good settings kept: ${status.config_error}` }));
    }
    if (status.settings_pending) {
      cell.append(el("div", { class: "detail", text: "new settings apply once its requests finish" }));
    }
    if (status.pid) cell.append(el("div", { class: "detail", text: `pid ${status.pid}` }));
    return cell;
  }

  function actionsCell(entry) {
    const name = statusName(entry.status || {});
    const cell = el("td", { class: "actions" });
    if (name === "invalid") return cell;
    const chat = el("button", { type: "button", class: "chat", text: "Chat" });
    chat.addEventListener("click", () => {
      $("chat-model").value = entry.id;
      $("chat-input").focus();
    });
    if (name === "remote") {  // served elsewhere: nothing here loads, unloads or pins it
      cell.append(chat);
      return cell;
    }
    const load = el("button", { type: "button", class: "load", text: "Load" });
    load.disabled = name === "loaded" || name === "loading";
    load.addEventListener("click", () => act(entry.id, "load", load));
    const unload = el("button", { type: "button", class: "unload", text: "Unload" });
    unload.disabled = name === "unloaded" || name === "unloading";
    unload.addEventListener("click", () => act(entry.id, "unload", unload));
    const pinned = isPinned(entry);
    const pin = el("button", {
      type: "button",
      class: "pin",
      text: pinned ? "Unpin" : "Pin",
      title: pinned ? "let it be evicted and unloaded when idle again" : "never evict it nor unload it when idle (until the router restarts)",
    });
    pin.setAttribute("aria-pressed", String(pinned));
    pin.addEventListener("click", () => act(entry.id, "pin", pin, { pinned: !pinned }));
    const logs = el("button", { type: "button", class: "logs", text: "Logs" });
    logs.addEventListener("click", () => followLogs(entry.id));
    cell.append(load, " ", unload, " ", pin, " ", logs, " ", chat, el("div", { class: "reason action-error" }));
    return cell;
  }

  function drawRow(entry) {
    const row = el("tr", { "data-model": entry.id });
    const requests = `${entry.in_flight || 0} running${entry.waiting ? `, ${entry.waiting} waiting` : ""}`;
    row.append(
      modelCell(entry),
      statusCell(entry),
      el("td", { class: "requests", text: requests }),
      el("td", { class: "last-used", text: lastUsed(entry), "data-last-used": String(entry.last_used ?? "") }),
      el("td", { class: "memory", text: memoryOf(entry) }),
      actionsCell(entry),
    );
    return row;
  }

  function drawModels(entries, spares) {
    const body = $("models").tBodies[0];
    for (const placeholder of body.querySelectorAll("tr:not([data-model])")) placeholder.remove();
    const seen = new Set();
    for (const entry of entries) {
      const id = String(entry.id);
      seen.add(id);
      const row = drawRow(entry);
      const old = rows.get(id);
      const error = old?.querySelector(".action-error")?.textContent;
      if (error) row.querySelector(".action-error").textContent = error;
      if (old) old.replaceWith(row);
      rows.set(id, row);
      body.append(row); // in the router's order
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.remove();
        rows.delete(id);
      }
    }
    if (!entries.length) {
      body.replaceChildren(el("tr", {}, el("td", { colSpan: 6, class: "quiet", text: "No models: add GGUF files to --models-dir, or a file to conf.d, then Rescan." })));
    }
    // Columns that no model reports (an older router, a plugin that measures nothing) stay hidden.
    const table = $("models");
    table.classList.toggle("has-last-used", entries.some((entry) => typeof entry.last_used === "number"));
    table.classList.toggle("has-memory", entries.some((entry) => (entry.memory ?? entry.status?.memory) != null));
    $("spares").textContent = spares.length ? sparesText(spares) : "";
    fillChoices($("chat-model"), entries, false);
    fillChoices($("logs-model"), entries, true);
  }

  /** The waiting spare children, and the memory they hold while they wait. */
  function sparesText(spares) {
    const held = spares.map((spare) => spare.rss_mib).filter((mib) => typeof mib === "number");
    const memory = held.length ? ` (${bytes(held.reduce((sum, mib) => sum + mib, 0) * 2 ** 20)})` : "";
    return `${spares.length} spare process${spares.length > 1 ? "es" : ""} waiting${memory}`;
  }

  function fillChoices(select, entries, withNone) {
    const chosen = select.value;
    const ids = entries.filter((entry) => entry.status?.value !== "invalid").map((entry) => String(entry.id));
    const options = ids.map((id) => el("option", { value: id, text: id }));
    if (withNone) options.unshift(el("option", { value: "", text: "(none)" }));
    select.replaceChildren(...options);
    if (ids.includes(chosen) || (withNone && chosen === "")) select.value = chosen;
  }

  async function act(model, action, button, fields = {}) {
    button.disabled = true;
    const row = rows.get(model);
    const problem = row?.querySelector(".action-error");
    if (problem) problem.textContent = "";
    try {
      const response = await postJson(`/models/${action}`, { model, ...fields });
      if (!response.ok) throw new Error(await problemOf(response));
    } catch (error) {
      const current = rows.get(model)?.querySelector(".action-error");
      if (current) current.textContent = `${action} failed: ${error.message}`;
    }
    await refreshModels();
  }

  // ---- live status: /models/sse, else polling ------------------------------------------------

  function setLive(state, text) {
    const live = $("live");
    live.dataset.state = state;
    live.textContent = text;
  }

  /** Keep the list current for as long as the page is open. */
  async function followModelEvents() {
    for (;;) {
      let response = null;
      try {
        response = await api("/models/sse", { headers: { Accept: "text/event-stream" } });
      } catch {
        setLive("offline", "router unreachable");
        await sleep(POLL_MS);
        continue;
      }
      if (isEventStream(response)) {
        setLive("live", "live");
        await refreshModels(); // what changed before the stream began
        try {
          await readEvents(response, (data) => {
            let event = null;
            try {
              event = JSON.parse(data);
            } catch {
              return;
            }
            if (event && event.event !== "log") refreshModels();
          });
        } catch {
          // the connection broke: reconnect below
        }
        setLive("offline", "reconnecting");
        await sleep(POLL_MS);
      } else {
        await response.body?.cancel();
        setLive("polling", `updated every ${POLL_MS / 1000} s (this router has no /models/sse)`);
        for (let poll = 0; poll < POLLS_BEFORE_RETRY; poll += 1) {
          await sleep(POLL_MS);
          await refreshModels();
        }
      }
    }
  }

  // ---- logs ----------------------------------------------------------------------------------

  let logsFollowing = null; // the AbortController of the model's log stream

  function logMatches(line) {
    const filter = $("logs-filter").value.trim().toLowerCase();
    return !filter || line.textContent.toLowerCase().includes(filter);
  }

  function appendLog(text, kind) {
    const view = $("logs");
    const line = el("div", { class: kind, text });
    line.hidden = !logMatches(line);
    view.append(line);
    while (view.childElementCount > MAX_LOG_LINES) view.firstElementChild.remove();
    if ($("logs-follow").checked) view.scrollTop = view.scrollHeight;
  }

  /** The recent lines of GET /models/logs, whichever of the usual shapes it answers in. */
  function recentLines(body) {
    const items = Array.isArray(body) ? body : body?.lines ?? body?.data ?? [];
    return items.map((item) => (typeof item === "string" ? item : String(item?.line ?? item?.text ?? "")));
  }

  /** The log lines the view shows now (its model's own lines, not the router's events). */
  function shownLines() {
    return Array.from($("logs").querySelectorAll("div.line"), (line) => line.textContent);
  }

  /**
   * The part of `incoming` that is not already at the end of `shown`: where the two overlap
   * (the end of `shown` is a stretch of `incoming`), what comes after the last such stretch.
   */
  function unseen(shown, incoming) {
    for (let end = incoming.length; end > 0; end -= 1) {
      const overlap = Math.min(end, shown.length);
      if (overlap === 0) break;
      let isSame = true;
      for (let i = 1; i <= overlap && isSame; i += 1) isSame = shown[shown.length - i] === incoming[end - i];
      if (isSame) return incoming.slice(end);
    }
    return incoming;
  }

  async function readRecent(model, signal) {
    const recent = await api(`/models/logs?model=${encodeURIComponent(model)}`, { signal });
    if (!recent.ok) {
      await recent.body?.cancel();
      return [];
    }
    const type = recent.headers.get("Content-Type") || "";
    return type.includes("json") ? recentLines(await recent.json()) : (await recent.text()).split("\n").filter(Boolean);
  }

  /**
   * Follow a model's log: subscribe to its live lines first, and only once the stream says it
   * is subscribed read its recent lines, so that no line printed in between is lost. Such a
   * line is in both: the live ones are held until the recent ones are shown and SEAM_MS more
   * (a live line sent before the recent ones may reach the page after them), then shown but
   * for those that repeat the end of what is shown. Reconnects the same way.
   */
  async function followLogs(model) {
    logsFollowing?.abort();
    $("logs").replaceChildren();
    $("logs-model").value = model;
    $("logs-status").textContent = "";
    if (!model) return;
    const following = new AbortController();
    logsFollowing = following;
    const { signal } = following;
    try {
      while (!signal.aborted) {
        const stream = await api(`/models/sse?logs=1&model=${encodeURIComponent(model)}`, { signal, headers: { Accept: "text/event-stream" } });
        if (!isEventStream(stream)) {
          await stream.body?.cancel();
          for (const line of unseen(shownLines(), await readRecent(model, signal))) appendLog(line, "line");
          $("logs-status").textContent = "this router sends no live log lines";
          return;
        }
        let held = []; // what came live before the seam was closed; null after
        let joining = null;
        const join = async () => {
          for (const line of unseen(shownLines(), await readRecent(model, signal))) appendLog(line, "line");
          await sleep(SEAM_MS);
          if (signal.aborted) return;
          const live = held.filter((item) => item.kind === "line").map((item) => item.text);
          let repeats = live.length - unseen(shownLines(), live).length;
          for (const item of held) {
            if (item.kind === "line" && repeats > 0) repeats -= 1;
            else appendLog(item.text, item.kind);
          }
          held = null;
          $("logs-status").textContent = "following";
        };
        const startJoining = () => {
          joining = joining || join().catch((error) => {
            if (!signal.aborted) $("logs-status").textContent = `cannot read the recent lines: ${error.message}`;
          });
        };
        await readEvents(
          stream,
          (data) => {
            startJoining(); // a router that does not say it is subscribed: it is, by now
            const event = JSON.parse(data);
            if (event.model !== model && event.model !== "*") return;
            const item = event.event === "log"
              ? { text: String(event.data?.line ?? ""), kind: "line" }
              : { text: `[${event.event}] ${event.data?.status ?? ""} ${eventDetail(event.data)}`.trim(), kind: "event" };
            if (held) held.push(item);
            else appendLog(item.text, item.kind);
          },
          (comment) => {
            if (comment === "subscribed") startJoining();
          },
        ).catch(() => {});
        await joining;
        if (!signal.aborted) {
          $("logs-status").textContent = "reconnecting";
          await sleep(POLL_MS);
        }
      }
    } catch (error) {
      if (!signal.aborted) $("logs-status").textContent = `log stream failed: ${error.message}`;
    }
  }

  function eventDetail(data) {
    if (!data) return "";
    if (data.failed) return failureReason(data);
    if (typeof data.pinned === "boolean") return data.pinned ? "pinned" : "unpinned";
    if (typeof data.load_s === "number") return `(${data.load_s.toFixed(2)} s)`;
    return data.reason ? String(data.reason) : "";
  }

  function applyLogFilter() {
    for (const line of $("logs").children) line.hidden = !logMatches(line);
  }

  // ---- chat ----------------------------------------------------------------------------------

  const history = [];
  let answering = null; // the AbortController of the answer being streamed

  function addMessage(role, text) {
    const message = el("div", { class: `message ${role}`, text });
    $("chat-log").append(message);
    message.scrollIntoView({ block: "end" });
    return message;
  }

  async function sendChat(event) {
    event.preventDefault();
    const model = $("chat-model").value;
    const text = $("chat-input").value.trim();
    if (!model || !text || answering) return;
    $("chat-input").value = "";
    history.push({ role: "user", content: text });
    addMessage("user", text);
    const answer = addMessage("assistant", "");
    answer.dataset.state = "waiting";
    const controller = new AbortController();
    answering = controller;
    $("chat-send").disabled = true;
    $("chat-stop").disabled = false;
    const stats = $("chat-stats");
    stats.textContent = "waiting for the model (it may be loading)";
    const sent = performance.now();
    let first = 0;
    let pieces = 0;
    let usage = null;
    let timings = null;
    let content = "";
    try {
      const response = await postJson(
        "/v1/chat/completions",
        {
          model,
          messages: history,
          max_tokens: Number($("chat-max-tokens").value) || undefined,
          stream: true,
          stream_options: { include_usage: true },
        },
        { signal: controller.signal },
      );
      if (!response.ok) throw new Error(await problemOf(response));
      answer.dataset.state = "streaming";
      await readEvents(response, (data) => {
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || "the model failed");
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) {
          first = first || performance.now();
          pieces += 1;
          content += delta;
          answer.append(delta); // a Text node: the answer is never parsed as HTML
          const seconds = (performance.now() - first) / 1000;
          stats.textContent = `${pieces} tokens${seconds > 0 ? `, ${(pieces / seconds).toFixed(1)} tokens/s` : ""}`;
        }
        if (chunk.usage) usage = chunk.usage;
        if (chunk.timings) timings = chunk.timings;
      });
      history.push({ role: "assistant", content });
      const tokens = usage?.completion_tokens ?? pieces;
      const seconds = first ? (performance.now() - first) / 1000 : 0;
      const rate = timings?.predicted_per_second ?? (seconds > 0 ? tokens / seconds : 0);
      const wait = ((first || performance.now()) - sent) / 1000;
      stats.textContent = `${tokens} tokens, ${rate.toFixed(1)} tokens/s (first after ${wait.toFixed(2)} s)`;
      answer.dataset.state = "done";
    } catch (error) {
      history.pop(); // the question goes unanswered: not part of the conversation
      answer.classList.add("failed");
      answer.append(`${content ? "\n" : ""}[${controller.signal.aborted ? "stopped" : error.message}]`);
      answer.dataset.state = "failed";
      stats.textContent = "";
    } finally {
      answering = null;
      $("chat-send").disabled = false;
      $("chat-stop").disabled = true;
      refreshModels(); // requests in flight and last used changed, and no event says so
    }
  }

  // ---- start ---------------------------------------------------------------------------------

  async function showVersion() {
    try {
      const response = await api("/props");
      if (response.ok) $("version").textContent = String((await response.json()).build_info || "");
    } catch {
      // Only shown: a router out of reach is said by the models table, which reads again.
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("rescan").addEventListener("click", async () => {
      try {
        await postJson("/models/reload", {});
      } catch {
        // out of reach: the models table, read again now, says so
      }
      await refreshModels();
    });
    $("chat-form").addEventListener("submit", sendChat);
    $("chat-input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("chat-form").requestSubmit();
    });
    $("chat-stop").addEventListener("click", () => answering?.abort());
    $("chat-clear").addEventListener("click", () => {
      history.length = 0;
      $("chat-log").replaceChildren();
      $("chat-stats").textContent = "";
    });
    $("logs-model").addEventListener("change", () => followLogs($("logs-model").value));
    $("logs-filter").addEventListener("input", applyLogFilter);
    $("logs-clear").addEventListener("click", () => $("logs").replaceChildren());
    refreshModels().then(showVersion);
    followModelEvents();
    setInterval(() => { // "5 s ago" grows older without any event to redraw it
      for (const cell of document.querySelectorAll("td.last-used[data-last-used]")) {
        cell.textContent = lastUsed({ last_used: Number(cell.dataset.lastUsed) || null });
      }
    }, AGE_REDRAW_MS);
  });
})();
