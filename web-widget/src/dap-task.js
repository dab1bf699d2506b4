// <dap-task>: shows one DAP task's live status, progress, stage/message and, once it is done,
// a short result summary. Plain modern JavaScript, no runtime dependencies.
//
// Modelled on github/include-fragment-element: importing this module has no side effects (call
// `define()` to register the tag), attributes are reflected as properties, the element fires
// DOM events (`dap-progress`, `dap-done`, `dap-error`), keeps its light-DOM children as fallback
// content until data arrives (and again on failure, with an `is-error` attribute), and every
// network call sits behind an overridable method (`fetchTicket`, `openEventSource`,
// `fetchResult`, `retryDelay`) so tests can stub them.
//
// The page never holds an API key: `ticket-url` points at the host site's own backend, which
// holds the key and mints a short-lived (≤ 60 s), read-only SSE ticket for this one task. A
// ticket only has to be valid when the stream opens, so every (re)connect fetches a fresh one.

/** Task events of the DAP feed, in the order a task normally goes through them. */
export const TASK_EVENTS = Object.freeze([
  'task.created',
  'task.assigned',
  'task.progress',
  'task.requeued',
  'task.completed',
  'task.failed',
  'task.cancelled',
]);

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

const STATUS_TEXT = {
  connecting: 'Connecting…',
  queued: 'Queued',
  assigned: 'Assigned to a runner',
  running: 'Running',
  completed: 'Completed',
  failed: 'Failed',
  cancelled: 'Cancelled',
};

/** Errors that retrying cannot fix (a 4xx from the ticket endpoint, missing attributes). */
export class DapFatalError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = 'DapFatalError';
  }
}

// Outside a browser (server-side rendering, a bare Node import) there is no HTMLElement; fall
// back to a plain class so that importing the module never throws.
const Base = globalThis.HTMLElement ?? class {};

const STYLE = `
:host {
  display: block;
  font-family: var(--dap-font, system-ui, sans-serif);
  color: var(--dap-color, inherit);
  font-size: var(--dap-font-size, 0.95rem);
}
:host([hidden]) { display: none; }
[hidden] { display: none !important; }
.panel {
  border: var(--dap-border, 1px solid #d0d7de);
  border-radius: var(--dap-radius, 8px);
  padding: var(--dap-padding, 0.75rem 1rem);
  background: var(--dap-bg, transparent);
}
.head { display: flex; justify-content: space-between; gap: 1rem; align-items: baseline; }
.status { font-weight: 600; }
.percent { font-variant-numeric: tabular-nums; color: var(--dap-muted-color, #57606a); }
.track {
  margin: 0.5rem 0;
  height: var(--dap-bar-height, 0.6rem);
  background: var(--dap-bar-bg, #e6e8eb);
  border-radius: var(--dap-bar-radius, 999px);
  overflow: hidden;
}
.bar {
  height: 100%;
  width: 0%;
  background: var(--dap-bar-color, #2563eb);
  border-radius: inherit;
  transition: width var(--dap-bar-transition, 0.3s) ease;
}
:host([status="completed"]) .bar { background: var(--dap-bar-done-color, var(--dap-bar-color, #16a34a)); }
:host([status="failed"]) .bar, :host([status="cancelled"]) .bar {
  background: var(--dap-bar-error-color, #dc2626);
}
.stage, .message { color: var(--dap-muted-color, #57606a); }
.stage:empty, .message:empty, .result:empty { display: none; }
.error { color: var(--dap-error-color, #b91c1c); margin-top: 0.25rem; }
.result { margin-top: 0.5rem; }
.result dl { display: grid; grid-template-columns: auto 1fr; gap: 0.15rem 0.75rem; margin: 0.25rem 0; }
.result dt { color: var(--dap-muted-color, #57606a); }
.result dd { margin: 0; font-variant-numeric: tabular-nums; }
.result a { color: var(--dap-link-color, #2563eb); }
`;

/**
 * The `<dap-task>` element. Register it with `define()`.
 *
 * Attributes (each reflected as a camelCase property): `task-id`, `ticket-url`, `server`,
 * `ticket-method` (`POST` by default, or `GET`), `result-url`.
 * Read-only state: `status`, `progress`, `stage`, `message`, `lastEventId`, `data`, `result`.
 * While it runs the element also sets the `status` attribute (for CSS), `is-error` on failure
 * and `reconnecting` while a lost stream is being re-established.
 */
export class DapTaskElement extends Base {
  static get observedAttributes() {
    return ['task-id', 'ticket-url', 'server', 'ticket-method', 'result-url'];
  }

  // Connection state. `#generation` changes whenever a connection attempt must be abandoned
  // (element removed, task-id changed), so late callbacks from old attempts do nothing.
  #generation = 0;
  #source = null;
  #retryTimer = null;
  #failures = 0;
  #root = null;
  #els = null;
  #connected = false;

  #status = 'idle';
  #progress = 0;
  #stage = '';
  #message = '';
  #lastEventId = 0;
  #data = null;
  #result = null;

  constructor() {
    super();
    this.#root = this.attachShadow({ mode: 'open' });
    this.#root.innerHTML = `
      <style>${STYLE}</style>
      <div class="fallback" part="fallback"><slot></slot></div>
      <div class="panel" part="panel" hidden>
        <div class="head">
          <span class="status" part="status" role="status" aria-live="polite"></span>
          <span class="percent" part="percent"></span>
        </div>
        <div class="track" part="track" role="progressbar" aria-label="Task progress"
             aria-valuemin="0" aria-valuemax="100" aria-valuenow="0">
          <div class="bar" part="bar"></div>
        </div>
        <div class="stage" part="stage"></div>
        <div class="message" part="message"></div>
        <div class="error" part="error" role="alert" hidden></div>
        <div class="result" part="result"></div>
      </div>`;
    const $ = (sel) => this.#root.querySelector(sel);
    this.#els = {
      fallback: $('.fallback'),
      panel: $('.panel'),
      status: $('.status'),
      percent: $('.percent'),
      track: $('.track'),
      bar: $('.bar'),
      stage: $('.stage'),
      message: $('.message'),
      error: $('.error'),
      result: $('.result'),
    };
  }

  // ----- reflected attributes -----

  get taskId() { return this.getAttribute('task-id') || ''; }
  set taskId(v) { this.setAttribute('task-id', v); }
  get ticketUrl() { return this.getAttribute('ticket-url') || ''; }
  set ticketUrl(v) { this.setAttribute('ticket-url', v); }
  get server() { return this.getAttribute('server') || ''; }
  set server(v) { this.setAttribute('server', v); }
  get ticketMethod() { return (this.getAttribute('ticket-method') || 'POST').toUpperCase(); }
  set ticketMethod(v) { this.setAttribute('ticket-method', v); }
  get resultUrl() { return this.getAttribute('result-url') || ''; }
  set resultUrl(v) { this.setAttribute('result-url', v); }

  // ----- read-only state -----

  /** `idle`, `connecting`, `queued`, `assigned`, `running`, `completed`, `failed`, `cancelled`, or `error`. */
  get status() { return this.#status; }
  get progress() { return this.#progress; }
  get stage() { return this.#stage; }
  get message() { return this.#message; }
  /** Id of the last feed event applied; reconnects resume after it. */
  get lastEventId() { return this.#lastEventId; }
  /** The `data` of the last task event applied. */
  get data() { return this.#data; }
  /** What `fetchResult()` returned after completion, if `result-url` is set. */
  get result() { return this.#result; }

  // ----- lifecycle -----

  connectedCallback() {
    // Properties set on the element before it was upgraded shadow the accessors; re-apply them.
    for (const p of ['taskId', 'ticketUrl', 'server', 'ticketMethod', 'resultUrl']) {
      if (Object.prototype.hasOwnProperty.call(this, p)) {
        const v = this[p];
        delete this[p];
        this[p] = v;
      }
    }
    this.#connected = true;
    this.#start();
  }

  disconnectedCallback() {
    this.#connected = false;
    this.#stop();
  }

  attributeChangedCallback(name, oldValue, newValue) {
    // Before connectedCallback (the parser setting the initial attributes) there is nothing to redo.
    if (oldValue === newValue || !this.#connected) return;
    if (name === 'task-id') {
      this.#reset();
      this.#start();
    } else if (name !== 'result-url' && !TERMINAL.has(this.#status)) {
      this.#start();
    }
  }

  // ----- overridable network layer -----

  /**
   * Gets a fresh SSE ticket from the host page's backend. Resolves to `{ticket, server}`.
   * The endpoint answers `{"ticket": "...", "server"?: "https://dap.example"}`; without
   * `server` in the answer the `server` attribute is used.
   */
  async fetchTicket() {
    if (!this.ticketUrl) throw new DapFatalError('dap-task: the ticket-url attribute is required');
    const method = this.ticketMethod === 'GET' ? 'GET' : 'POST';
    const init = {
      method,
      credentials: 'same-origin',
      headers: { Accept: 'application/json' },
    };
    let url = this.ticketUrl;
    if (method === 'POST') {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify({ task_id: this.taskId });
    } else {
      const u = new URL(url, globalThis.location?.href);
      if (!u.searchParams.has('task_id')) u.searchParams.set('task_id', this.taskId);
      url = u.href;
    }
    const res = await globalThis.fetch(url, init);
    if (!res.ok) {
      const msg = `ticket endpoint answered HTTP ${res.status}`;
      // A 4xx (other than timeout / rate limit) will not get better by asking again.
      const permanent = res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429;
      throw permanent ? new DapFatalError(msg) : new Error(msg);
    }
    const body = await res.json();
    if (!body || typeof body.ticket !== 'string' || !body.ticket) {
      throw new DapFatalError('ticket endpoint answered without a "ticket" string');
    }
    return { ticket: body.ticket, server: body.server || this.server };
  }

  /** Opens the SSE stream. Tests return a fake with `addEventListener` and `close`. */
  openEventSource(url) {
    return new globalThis.EventSource(url);
  }

  /** Fetches the host's result summary (`result-url`), same-origin credentials. */
  async fetchResult(url) {
    const res = await globalThis.fetch(url, {
      credentials: 'same-origin',
      headers: { Accept: 'application/json' },
    });
    if (!res.ok) throw new Error(`result endpoint answered HTTP ${res.status}`);
    return res.json();
  }

  /** Milliseconds to wait before reconnect attempt `n` (1-based): 0.5 s doubling to 30 s, ±20 %. */
  retryDelay(n) {
    const base = Math.min(30_000, 500 * 2 ** (n - 1));
    return Math.round(base * (0.8 + Math.random() * 0.4));
  }

  /** The feed URL for a ticket; `last_event_id` makes the server replay from its log. */
  eventsUrl(server, ticket) {
    const base = String(server || '').replace(/\/+$/, '');
    const q = new URLSearchParams({ ticket, task_id: this.taskId, last_event_id: String(this.#lastEventId) });
    return `${base}/api/v1/events?${q}`;
  }

  /** Closes the stream and drops any pending reconnect; the element keeps what it shows. */
  close() {
    this.#stop();
  }

  // ----- connection -----

  #stop() {
    this.#generation++;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#source) {
      try { this.#source.close(); } catch { /* already closed */ }
      this.#source = null;
    }
  }

  #reset() {
    this.#stop();
    this.#status = 'idle';
    this.#progress = 0;
    this.#stage = '';
    this.#message = '';
    this.#lastEventId = 0;
    this.#data = null;
    this.#result = null;
    this.#failures = 0;
    this.removeAttribute('is-error');
    this.removeAttribute('reconnecting');
    this.removeAttribute('status');
    this.#els.panel.hidden = true;
    this.#els.fallback.hidden = false;
    this.#els.error.hidden = true;
    this.#els.result.replaceChildren();
    this.#renderProgress();
  }

  async #start() {
    this.#stop();
    const gen = this.#generation;
    if (!this.taskId) return; // nothing to watch yet; setting task-id starts it
    if (this.#status === 'idle' || this.#status === 'error') {
      this.removeAttribute('is-error');
      this.#setStatus('connecting');
    }
    let ticket;
    let server;
    try {
      ({ ticket, server } = await this.fetchTicket());
    } catch (error) {
      if (gen === this.#generation) this.#connectionFailed(error);
      return;
    }
    if (gen !== this.#generation) return;
    if (!server) {
      this.#fail(new DapFatalError('dap-task: no DAP server (set the server attribute or return "server" with the ticket)'));
      return;
    }
    let source;
    try {
      source = this.openEventSource(this.eventsUrl(server, ticket));
    } catch (error) {
      this.#connectionFailed(error);
      return;
    }
    this.#source = source;
    const onEvent = (e) => {
      if (gen === this.#generation) this.#onFeedEvent(e);
    };
    for (const name of TASK_EVENTS) source.addEventListener(name, onEvent);
    source.addEventListener('open', () => {
      if (gen !== this.#generation) return;
      this.#failures = 0;
      this.removeAttribute('reconnecting');
    });
    source.addEventListener('error', () => {
      if (gen !== this.#generation) return;
      // The browser would retry by itself, but with the same (soon expired) ticket: take over.
      this.#connectionFailed(new Error('event stream interrupted'));
    });
  }

  /** A transient failure: report it and reconnect after a backoff with a fresh ticket. */
  #connectionFailed(error) {
    if (error instanceof DapFatalError) {
      this.#fail(error);
      return;
    }
    this.#stop();
    this.#failures++;
    const delay = this.retryDelay(this.#failures);
    this.setAttribute('reconnecting', '');
    this.#emit('dap-error', { error, fatal: false, retryIn: delay });
    const gen = this.#generation;
    this.#retryTimer = setTimeout(() => {
      if (gen === this.#generation) this.#start();
    }, delay);
  }

  /** A failure that ends watching: fallback content comes back with `is-error`. */
  #fail(error, data = null) {
    this.#stop();
    this.removeAttribute('reconnecting');
    this.setAttribute('is-error', '');
    this.#els.fallback.hidden = false;
    // The panel stays if it already shows the task (its last known state, plus the error).
    this.#els.error.textContent = error?.message || String(error);
    this.#els.error.hidden = false;
    if (!data) this.#setStatus('error');
    this.#emit('dap-error', { error, fatal: true, data });
  }

  // ----- events from the feed -----

  #onFeedEvent(e) {
    let data;
    try {
      data = JSON.parse(e.data);
    } catch {
      return; // not ours to interpret
    }
    const id = Number(e.lastEventId || data.id || 0);
    // The server never sends an id twice, but a fake or a proxy might: apply each once.
    if (id && id <= this.#lastEventId) return;
    if (data.task_id && data.task_id !== this.taskId) return;
    if (id) this.#lastEventId = id;
    this.#failures = 0;
    this.removeAttribute('reconnecting');
    this.#data = data;

    const kind = e.type;
    const status = data.status || kind.replace(/^task\./, '');
    if (typeof data.progress === 'number') this.#progress = Math.max(0, Math.min(100, data.progress));
    if (kind === 'task.requeued') {
      this.#progress = 0;
      this.#stage = '';
      this.#message = data.reason ? `retrying (${data.reason})` : 'retrying';
    } else {
      if (data.stage != null) this.#stage = String(data.stage);
      if (data.message != null) this.#message = String(data.message);
    }

    this.#els.fallback.hidden = true;
    this.#els.panel.hidden = false;
    this.#setStatus(status);
    this.#renderProgress();
    this.#emit('dap-progress', { progress: this.#progress, stage: this.#stage, message: this.#message, status, data });

    if (TERMINAL.has(status)) this.#finish(status, data);
  }

  async #finish(status, data) {
    this.#stop();
    if (status !== 'completed') {
      const err = data.error || {};
      const error = new Error(err.message || (status === 'cancelled' ? 'the task was cancelled' : 'the task failed'));
      error.code = err.code || status;
      this.#fail(error, data);
      this.#emit('dap-done', { status, data, result: null });
      return;
    }
    const gen = this.#generation;
    let result = null;
    if (this.resultUrl) {
      this.#els.result.textContent = 'Loading result…';
      try {
        result = await this.fetchResult(this.resultUrl);
      } catch (error) {
        // The task itself completed; a missing summary is not a task failure.
        this.#emit('dap-error', { error, fatal: false, data });
      }
    }
    if (gen !== this.#generation) return;
    this.#result = result;
    this.#renderResult(result);
    this.#emit('dap-done', { status, data, result });
  }

  // ----- rendering -----

  #setStatus(status) {
    this.#status = status;
    this.setAttribute('status', status);
    this.#els.status.textContent = status === 'error' ? 'Unavailable' : (STATUS_TEXT[status] || status);
  }

  #renderProgress() {
    const p = Math.round(this.#progress);
    this.#els.bar.style.width = `${p}%`;
    this.#els.track.setAttribute('aria-valuenow', String(p));
    this.#els.track.setAttribute('aria-valuetext', this.#stage ? `${p}% (${this.#stage})` : `${p}%`);
    this.#els.percent.textContent = this.#status === 'idle' ? '' : `${p}%`;
    this.#els.stage.textContent = this.#stage;
    this.#els.message.textContent = this.#message;
  }

  #renderResult(result) {
    const box = this.#els.result;
    box.replaceChildren();
    if (!result || typeof result !== 'object') return;
    // Accept the DAP result envelope (`{result_data}`) or the bare result object.
    const r = result.result_data && typeof result.result_data === 'object' ? result.result_data : result;
    const rows = [];
    if (typeof r.row_count === 'number') rows.push(['Rows', r.row_count.toLocaleString()]);
    if (typeof r.input_row_count === 'number') rows.push(['Input rows', r.input_row_count.toLocaleString()]);
    const columns = Array.isArray(r.columns) ? r.columns.length : Array.isArray(r.schema) ? r.schema.length : null;
    if (columns != null) rows.push(['Columns', String(columns)]);
    if (r.metrics && typeof r.metrics === 'object') {
      for (const [k, v] of Object.entries(r.metrics).slice(0, 8)) {
        if (v == null || typeof v === 'object') continue;
        rows.push([k, typeof v === 'number' ? v.toLocaleString(undefined, { maximumFractionDigits: 4 }) : String(v)]);
      }
    }
    if (rows.length) {
      const dl = document.createElement('dl');
      dl.setAttribute('part', 'summary');
      for (const [k, v] of rows) {
        const dt = document.createElement('dt');
        dt.textContent = k;
        const dd = document.createElement('dd');
        dd.textContent = v;
        dl.append(dt, dd);
      }
      box.append(dl);
    }
    const artifacts = Array.isArray(result.artifacts) ? result.artifacts : Array.isArray(r.artifacts) ? r.artifacts : [];
    for (const a of artifacts) {
      const href = safeUrl(a && a.url);
      if (!href) continue;
      const link = document.createElement('a');
      link.setAttribute('part', 'download');
      link.href = href;
      link.setAttribute('download', a.name || '');
      link.textContent = `Download ${a.name || 'file'}`;
      if (typeof a.size === 'number') link.title = `${a.size.toLocaleString()} bytes`;
      const p = document.createElement('div');
      p.append(link);
      box.append(p);
    }
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true }));
  }
}

/** Only http(s) links (relative ones resolve against the page) may become download links. */
function safeUrl(url) {
  if (typeof url !== 'string' || !url) return null;
  try {
    const u = new URL(url, globalThis.location?.href);
    return u.protocol === 'https:' || u.protocol === 'http:' ? u.href : null;
  } catch {
    return null;
  }
}

/**
 * Registers the element as `name` (default `dap-task`) and returns its constructor. Calling it
 * again with the same name is a no-op; a different name gets its own subclass (a constructor can
 * be registered only once).
 */
export function define(name = 'dap-task', registry = globalThis.customElements) {
  const existing = registry.get(name);
  if (existing) return existing;
  const ctor = registered.has(registry) ? class extends DapTaskElement {} : DapTaskElement;
  registry.define(name, ctor);
  registered.add(registry);
  return ctor;
}

/** Registries in which `DapTaskElement` itself is already defined. */
const registered = new WeakSet();
