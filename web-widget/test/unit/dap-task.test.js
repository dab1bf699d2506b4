// Unit tests for <dap-task>: happy-dom provides the DOM; the network (fetchTicket,
// openEventSource, fetchResult) is stubbed per element with a fake EventSource we drive.
import { test, before, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { Window } from 'happy-dom';

const window = new Window({ url: 'https://host.example/page' });
for (const name of ['window', 'document', 'HTMLElement', 'customElements', 'CustomEvent', 'Event', 'location']) {
  globalThis[name] = name === 'window' ? window : window[name];
}

let mod;
before(async () => {
  // Imported only now: the element class extends the DOM's HTMLElement.
  mod = await import('../../src/dap-task.js');
});

/** A stand-in for EventSource whose events the test sends. */
class FakeEventSource {
  static all = [];
  constructor(url) {
    this.url = url;
    this.listeners = new Map();
    this.closed = false;
    FakeEventSource.all.push(this);
  }
  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }
  close() { this.closed = true; }
  dispatch(type, ev) {
    for (const fn of this.listeners.get(type) || []) fn(ev);
  }
  open() { this.dispatch('open', { type: 'open' }); }
  /** Sends a feed event the way the server does: `id:`, `event:`, JSON `data` repeating the id. */
  send(type, id, fields) {
    const data = JSON.stringify({ id, task_id: 'task-1', ...fields });
    this.dispatch(type, { type, data, lastEventId: String(id) });
  }
  fail() { this.dispatch('error', { type: 'error' }); }
  get params() { return new URL(this.url).searchParams; }
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
async function until(cond, what = 'condition') {
  for (let i = 0; i < 200; i++) {
    if (cond()) return;
    await tick(1);
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** A <dap-task> with stubbed network; `tickets` counts ticket requests. */
function makeElement({ attrs = {}, fallback = '<p class="fb">Loading task…</p>', ticket } = {}) {
  const el = document.createElement('dap-task');
  el.innerHTML = fallback;
  el.tickets = 0;
  el.fetchTicket = ticket || (async () => {
    el.tickets++;
    return { ticket: `t${el.tickets}`, server: 'https://dap.example/' };
  });
  el.openEventSource = (url) => new FakeEventSource(url);
  el.retryDelay = () => 0;
  el.events = [];
  for (const type of ['dap-progress', 'dap-done', 'dap-error']) {
    el.addEventListener(type, (e) => el.events.push({ type, detail: e.detail, bubbles: e.bubbles, composed: e.composed }));
  }
  for (const [k, v] of Object.entries({ 'task-id': 'task-1', ...attrs })) el.setAttribute(k, v);
  return el;
}

const part = (el, name) => el.shadowRoot.querySelector(`[part~="${name}"]`);
const latestSource = () => FakeEventSource.all.at(-1);

beforeEach(() => {
  FakeEventSource.all = [];
  document.body.innerHTML = '';
});
afterEach(() => {
  document.body.innerHTML = ''; // disconnects elements: closes streams, cancels retries
});

test('importing has no side effect; define() registers once and supports other names', () => {
  assert.equal(customElements.get('dap-task'), undefined);
  const ctor = mod.define();
  assert.equal(ctor, mod.DapTaskElement);
  assert.equal(customElements.get('dap-task'), mod.DapTaskElement);
  assert.equal(mod.define(), mod.DapTaskElement, 'second call is a no-op');
  const other = mod.define('my-task');
  assert.ok(other.prototype instanceof mod.DapTaskElement);
  assert.ok(document.createElement('my-task') instanceof mod.DapTaskElement);
});

test('attributes are reflected as properties', () => {
  const el = document.createElement('dap-task');
  el.taskId = 'abc';
  el.ticketUrl = '/ticket';
  el.server = 'https://dap.example';
  el.resultUrl = '/result';
  assert.equal(el.getAttribute('task-id'), 'abc');
  assert.equal(el.getAttribute('ticket-url'), '/ticket');
  assert.equal(el.getAttribute('server'), 'https://dap.example');
  assert.equal(el.getAttribute('result-url'), '/result');
  assert.equal(el.ticketMethod, 'POST');
});

test('first connect uses a fresh ticket, the task id and last_event_id=0', async () => {
  const el = makeElement();
  document.body.append(el);
  await until(() => latestSource(), 'event source');
  const es = latestSource();
  assert.equal(el.tickets, 1);
  assert.equal(new URL(es.url).origin + new URL(es.url).pathname, 'https://dap.example/api/v1/events');
  assert.equal(es.params.get('ticket'), 't1');
  assert.equal(es.params.get('task_id'), 'task-1');
  assert.equal(es.params.get('last_event_id'), '0');
});

test('fallback stays until data; progress updates the bar, aria and text, and fires dap-progress', async () => {
  const el = makeElement();
  document.body.append(el);
  await until(() => latestSource());
  const es = latestSource();
  assert.equal(part(el, 'fallback').hidden, false, 'fallback visible before data');
  assert.equal(part(el, 'panel').hidden, true);

  es.open();
  es.send('task.created', 1, { status: 'queued', progress: 0 });
  assert.equal(part(el, 'fallback').hidden, true, 'fallback hidden once data arrives');
  assert.equal(part(el, 'panel').hidden, false);
  assert.equal(part(el, 'status').textContent, 'Queued');

  es.send('task.progress', 3, { status: 'running', progress: 60, stage: 'reading page', message: 'page 1 of 2' });
  assert.equal(el.progress, 60);
  assert.equal(el.status, 'running');
  assert.equal(el.getAttribute('status'), 'running');
  assert.equal(part(el, 'bar').style.width, '60%');
  assert.equal(part(el, 'track').getAttribute('role'), 'progressbar');
  assert.equal(part(el, 'track').getAttribute('aria-valuenow'), '60');
  assert.equal(part(el, 'stage').textContent, 'reading page');
  assert.equal(part(el, 'message').textContent, 'page 1 of 2');
  assert.equal(part(el, 'percent').textContent, '60%');
  assert.equal(el.lastEventId, 3);

  const progress = el.events.filter((e) => e.type === 'dap-progress');
  assert.equal(progress.length, 2);
  assert.deepEqual(
    { progress: progress[1].detail.progress, stage: progress[1].detail.stage, message: progress[1].detail.message },
    { progress: 60, stage: 'reading page', message: 'page 1 of 2' },
  );
  assert.ok(progress[1].bubbles && progress[1].composed, 'events bubble out of shadow roots');
});

test('dap events bubble to ancestors', async () => {
  const el = makeElement();
  const wrapper = document.createElement('section');
  const seen = [];
  wrapper.addEventListener('dap-progress', (e) => seen.push(e.detail.progress));
  wrapper.append(el);
  document.body.append(wrapper);
  await until(() => latestSource());
  latestSource().send('task.progress', 1, { status: 'running', progress: 20 });
  assert.deepEqual(seen, [20]);
});

test('completion shows the result summary and download links, then fires dap-done', async () => {
  const el = makeElement({ attrs: { 'result-url': '/dap/result?task=task-1' } });
  let resultUrl;
  el.fetchResult = async (url) => {
    resultUrl = url;
    return {
      result_data: { row_count: 1234, columns: ['a', 'b', 'c'], metrics: { accuracy: 0.91234567 } },
      artifacts: [
        { name: 'report.pdf', url: 'https://dap.example/api/v1/tasks/task-1/artifacts/report.pdf?token=x', size: 10 },
        { name: 'evil', url: 'javascript:alert(1)' },
      ],
    };
  };
  document.body.append(el);
  await until(() => latestSource());
  const es = latestSource();
  es.send('task.progress', 2, { status: 'running', progress: 90, stage: 'converting' });
  es.send('task.completed', 3, { status: 'completed', progress: 100, stage: 'converting' });
  await until(() => el.events.some((e) => e.type === 'dap-done'), 'dap-done');

  assert.equal(resultUrl, '/dap/result?task=task-1');
  assert.equal(el.status, 'completed');
  assert.equal(el.getAttribute('status'), 'completed');
  assert.equal(part(el, 'track').getAttribute('aria-valuenow'), '100');
  assert.equal(part(el, 'status').textContent, 'Completed');
  assert.ok(es.closed, 'stream closed after a terminal event');
  assert.equal(el.hasAttribute('is-error'), false);

  const done = el.events.find((e) => e.type === 'dap-done');
  assert.equal(done.detail.status, 'completed');
  assert.equal(done.detail.data.progress, 100);
  assert.equal(done.detail.result.result_data.row_count, 1234);
  assert.ok(done.bubbles && done.composed);

  const summary = part(el, 'summary').textContent;
  assert.match(summary, /Rows/);
  assert.match(summary, /1,234/);
  assert.match(summary, /Columns3/);
  assert.match(summary, /accuracy0\.9123/);
  const links = el.shadowRoot.querySelectorAll('[part="download"]');
  assert.equal(links.length, 1, 'only http(s) links are rendered');
  assert.equal(links[0].textContent, 'Download report.pdf');
  assert.match(links[0].getAttribute('href'), /^https:\/\/dap\.example\/.*report\.pdf/);
});

test('completion without result-url just says Completed', async () => {
  const el = makeElement();
  document.body.append(el);
  await until(() => latestSource());
  latestSource().send('task.completed', 5, { status: 'completed', progress: 100 });
  await until(() => el.events.some((e) => e.type === 'dap-done'));
  assert.equal(part(el, 'status').textContent, 'Completed');
  assert.equal(part(el, 'result').children.length, 0);
  assert.equal(el.events.find((e) => e.type === 'dap-done').detail.result, null);
});

test('a failed task keeps the fallback content, sets is-error and fires dap-error and dap-done', async () => {
  const el = makeElement();
  document.body.append(el);
  await until(() => latestSource());
  const es = latestSource();
  es.send('task.progress', 1, { status: 'running', progress: 40 });
  es.send('task.failed', 2, { status: 'failed', progress: 40, error: { code: 'invalid_params', message: 'params.limit must be ≤ 10000' } });
  await until(() => el.events.some((e) => e.type === 'dap-done'));

  assert.ok(el.hasAttribute('is-error'));
  assert.equal(el.status, 'failed');
  assert.equal(part(el, 'fallback').hidden, false, 'fallback visible again on failure');
  assert.equal(el.querySelector('.fb').textContent, 'Loading task…', 'light DOM untouched');
  assert.equal(part(el, 'error').textContent, 'params.limit must be ≤ 10000');
  const err = el.events.find((e) => e.type === 'dap-error');
  assert.equal(err.detail.fatal, true);
  assert.equal(err.detail.error.code, 'invalid_params');
  assert.ok(err.bubbles && err.composed);
  assert.equal(el.events.find((e) => e.type === 'dap-done').detail.status, 'failed');
  assert.ok(es.closed);
});

test('a cancelled task ends in the error state too', async () => {
  const el = makeElement();
  document.body.append(el);
  await until(() => latestSource());
  latestSource().send('task.cancelled', 4, { status: 'cancelled', progress: 10 });
  await until(() => el.events.some((e) => e.type === 'dap-done'));
  assert.ok(el.hasAttribute('is-error'));
  assert.equal(part(el, 'status').textContent, 'Cancelled');
});

test('a dropped stream reconnects with a fresh ticket and the last seen event id', async () => {
  const el = makeElement();
  document.body.append(el);
  await until(() => latestSource());
  const first = latestSource();
  first.open();
  first.send('task.assigned', 7, { status: 'assigned', progress: 0 });
  first.send('task.progress', 9, { status: 'running', progress: 20, stage: 'counting rows' });
  first.fail();

  assert.ok(first.closed, 'the broken stream is closed, not left to auto-retry with an old ticket');
  assert.ok(el.hasAttribute('reconnecting'));
  const transient = el.events.find((e) => e.type === 'dap-error');
  assert.equal(transient.detail.fatal, false);
  assert.equal(el.hasAttribute('is-error'), false);

  await until(() => FakeEventSource.all.length === 2, 'second stream');
  const second = latestSource();
  assert.equal(el.tickets, 2, 'a fresh ticket per connection');
  assert.equal(second.params.get('ticket'), 't2');
  assert.equal(second.params.get('last_event_id'), '9');
  second.open();
  assert.equal(el.hasAttribute('reconnecting'), false);

  // A replayed duplicate is ignored; new events apply.
  second.send('task.progress', 9, { status: 'running', progress: 20 });
  second.send('task.progress', 10, { status: 'running', progress: 60, stage: 'reading page' });
  assert.equal(el.events.filter((e) => e.type === 'dap-progress').length, 3);
  assert.equal(el.progress, 60);
  assert.equal(part(el, 'panel').hidden, false, 'what was shown stays visible while reconnecting');
});

test('reconnect backs off: retryDelay gets the consecutive failure count', async () => {
  const el = makeElement();
  const asked = [];
  el.retryDelay = (n) => { asked.push(n); return 0; };
  document.body.append(el);
  await until(() => latestSource());
  latestSource().fail();
  await until(() => FakeEventSource.all.length === 2);
  latestSource().fail();
  await until(() => FakeEventSource.all.length === 3);
  latestSource().send('task.progress', 1, { status: 'running', progress: 5 });
  latestSource().fail();
  await until(() => FakeEventSource.all.length === 4);
  assert.deepEqual(asked, [1, 2, 1], 'an event resets the failure count');
  // The default policy grows and is capped.
  const d = mod.DapTaskElement.prototype.retryDelay;
  assert.ok(d(1) >= 400 && d(1) <= 600);
  assert.ok(d(4) >= 3200 && d(4) <= 4800);
  assert.ok(d(50) <= 36000);
});

test('transient ticket failures are retried', async () => {
  let calls = 0;
  const el = makeElement({
    ticket: async () => {
      calls++;
      if (calls < 3) throw new Error('ticket endpoint answered HTTP 503');
      return { ticket: 'ok', server: 'https://dap.example' };
    },
  });
  document.body.append(el);
  await until(() => latestSource(), 'stream after retries');
  assert.equal(calls, 3);
  assert.equal(latestSource().params.get('ticket'), 'ok');
  assert.equal(el.events.filter((e) => e.type === 'dap-error').length, 2);
});

test('the default fetchTicket POSTs {task_id} same-origin; a 403 is fatal and keeps the fallback', async () => {
  const requests = [];
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (url, init) => {
    requests.push({ url, init });
    return new Response(JSON.stringify({ error: 'nope' }), { status: 403 });
  };
  try {
    const el = makeElement({ attrs: { 'ticket-url': '/dap/ticket' } });
    delete el.fetchTicket; // use the real method
    document.body.append(el);
    await until(() => el.hasAttribute('is-error'), 'is-error');
    assert.equal(requests.length, 1, 'no retry after a 4xx');
    assert.equal(requests[0].url, '/dap/ticket');
    assert.equal(requests[0].init.method, 'POST');
    assert.equal(requests[0].init.credentials, 'same-origin');
    assert.deepEqual(JSON.parse(requests[0].init.body), { task_id: 'task-1' });
    assert.equal(part(el, 'fallback').hidden, false);
    assert.equal(el.status, 'error');
    const err = el.events.find((e) => e.type === 'dap-error');
    assert.equal(err.detail.fatal, true);
    assert.match(err.detail.error.message, /403/);
    await tick(5);
    assert.equal(FakeEventSource.all.length, 0);
  } finally {
    globalThis.fetch = realFetch;
  }
});

test('the default fetchTicket with GET adds task_id; server comes from the attribute when the answer has none', async () => {
  const requests = [];
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (url, init) => {
    requests.push({ url, init });
    return new Response(JSON.stringify({ ticket: 'jwt' }), { status: 200, headers: { 'content-type': 'application/json' } });
  };
  try {
    const el = makeElement({ attrs: { 'ticket-url': '/dap/ticket?x=1', 'ticket-method': 'get', server: 'https://dap.other' } });
    delete el.fetchTicket;
    document.body.append(el);
    await until(() => latestSource());
    assert.equal(requests[0].init.method, 'GET');
    assert.equal(new URL(requests[0].url).searchParams.get('task_id'), 'task-1');
    assert.equal(new URL(requests[0].url).searchParams.get('x'), '1');
    assert.ok(latestSource().url.startsWith('https://dap.other/api/v1/events?'));
    assert.equal(latestSource().params.get('ticket'), 'jwt');
  } finally {
    globalThis.fetch = realFetch;
  }
});

test('events of other tasks are ignored; requeue resets progress', async () => {
  const el = makeElement();
  document.body.append(el);
  await until(() => latestSource());
  const es = latestSource();
  es.send('task.progress', 1, { status: 'running', progress: 50 });
  es.dispatch('task.progress', { type: 'task.progress', lastEventId: '2', data: JSON.stringify({ id: 2, task_id: 'other', status: 'running', progress: 99 }) });
  assert.equal(el.progress, 50);
  es.send('task.requeued', 3, { status: 'queued', progress: 0, reason: 'runner_lost' });
  assert.equal(el.progress, 0);
  assert.equal(el.status, 'queued');
  assert.match(part(el, 'message').textContent, /runner_lost/);
});

test('removing the element closes the stream and cancels a pending reconnect', async () => {
  const el = makeElement();
  el.retryDelay = () => 20;
  document.body.append(el);
  await until(() => latestSource());
  const es = latestSource();
  es.fail();
  el.remove();
  await tick(40);
  assert.equal(FakeEventSource.all.length, 1, 'no reconnect after removal');
  assert.ok(es.closed);
});

test('changing task-id starts over from event 0', async () => {
  const el = makeElement();
  document.body.append(el);
  await until(() => latestSource());
  latestSource().send('task.progress', 12, { status: 'running', progress: 70 });
  el.taskId = 'task-2';
  await until(() => FakeEventSource.all.length === 2);
  assert.equal(latestSource().params.get('task_id'), 'task-2');
  assert.equal(latestSource().params.get('last_event_id'), '0');
  assert.equal(el.progress, 0);
  assert.equal(part(el, 'fallback').hidden, false);
});

test('missing server is a fatal configuration error', async () => {
  const el = makeElement({ ticket: async () => ({ ticket: 'x', server: '' }) });
  document.body.append(el);
  await until(() => el.hasAttribute('is-error'));
  assert.match(el.events.find((e) => e.type === 'dap-error').detail.error.message, /server/);
});
