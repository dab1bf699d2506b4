// End-to-end: headless Chromium loads examples/index.html from the example host backend, which
// mints tickets from a REAL dap-server; a REAL dap-runner executes an operation-100 task.
// Started by scripts/test-widget.sh, which builds and starts dap-server and passes:
//   DAP_SERVER, DAP_API_KEY, PAGE_PORT, DAP_RUNNER_BIN, DAP_RUNNER_TOKEN, DAP_DATASET,
//   E2E_TMP (logs), SCREENSHOT (png path), CHROMIUM (default /usr/bin/chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { openSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { chromium } from 'playwright-core';
import { createHostServer } from '../../examples/host-server.mjs';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} must be set (run scripts/test-widget.sh)`);
  return v;
};
const DAP = env('DAP_SERVER');
const KEY = env('DAP_API_KEY');
const PAGE = `http://127.0.0.1:${env('PAGE_PORT')}`;
const TMP = env('E2E_TMP');
const BIG_ROWS = Number(env('DAP_BIG_ROWS'));

let host;
let browser;
let runner;

async function api(method, path, body) {
  const res = await fetch(DAP + path, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  return { status: res.status, json: await res.json().catch(() => null) };
}

function startRunner() {
  const log = openSync(join(TMP, 'runner.log'), 'a');
  runner = spawn(env('DAP_RUNNER_BIN'), [
    '--server', DAP,
    '--token', env('DAP_RUNNER_TOKEN'),
    '--dataset', `sales=${env('DAP_DATASET')}`,
    '--dataset', `big=${env('DAP_BIG_DATASET')}`,
  ], { stdio: ['ignore', log, log] });
  // scripts/test-widget.sh also stops it by this pid if this process dies first.
  writeFileSync(join(TMP, 'runner.pid'), String(runner.pid));
}

async function newPage() {
  const page = await browser.newPage({ viewport: { width: 760, height: 620 } });
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[browser] ${m.text()}`); });
  page.on('pageerror', (e) => console.log(`[browser pageerror] ${e.message}`));
  return page;
}

/** The element's observable state, read from inside the page. */
const widgetState = (page) => page.evaluate(() => {
  const el = document.getElementById('task');
  const part = (n) => el.shadowRoot.querySelector(`[part~="${n}"]`);
  return {
    defined: !!customElements.get('dap-task'),
    status: el.getAttribute('status'),
    isError: el.hasAttribute('is-error'),
    progress: el.progress,
    ariaNow: part('track').getAttribute('aria-valuenow'),
    barWidth: part('bar').style.width,
    statusText: part('status').textContent,
    stage: part('stage').textContent,
    summary: part('summary')?.textContent ?? null,
    fallbackHidden: part('fallback').hidden,
    panelHidden: part('panel').hidden,
    events: window.dapEvents,
  };
});

before(async () => {
  host = createHostServer({ dapServer: DAP, apiKey: KEY });
  await new Promise((r) => host.listen(Number(env('PAGE_PORT')), '127.0.0.1', r));
  browser = await chromium.launch({
    executablePath: env('CHROMIUM', '/usr/bin/chromium'),
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
});

after(async () => {
  if (runner && runner.exitCode === null) runner.kill('SIGTERM');
  await browser?.close();
  await new Promise((r) => (host ? host.close(r) : r()));
});

let taskId;

test('the widget follows a live task from queued to completed: the bar moves to 100 % and dap-done fires', async () => {
  // No runner is online yet, so the task waits in the queue while the page watches it. Counting
  // the rows of a big file takes long enough that intermediate progress is reported on any
  // machine (a 200-row file finished so fast that a loaded runner coalesced it into 0 and 100).
  const created = await api('POST', '/api/v1/tasks', { operation_code: 100, params: { dataset: 'big', limit: 5, count_rows: true }, queue: true });
  assert.equal(created.status, 201, JSON.stringify(created.json));
  taskId = created.json.task_id;
  assert.equal(created.json.status, 'queued');

  const page = await newPage();
  await page.goto(`${PAGE}/examples/index.html?task=${taskId}`);
  // Fallback markup is what the page shows before the first event.
  await page.waitForFunction(() => document.getElementById('task')?.getAttribute('status') === 'queued', null, { timeout: 15_000 });
  let s = await widgetState(page);
  assert.ok(s.defined);
  assert.equal(s.statusText, 'Queued');
  assert.equal(s.progress, 0);
  assert.ok(s.fallbackHidden, 'fallback replaced by the live panel');
  assert.equal(await page.getByText('Task status will appear here.').isVisible(), false);

  // Now the data owner's runner comes online and picks the task up; events arrive live.
  startRunner();
  await page.waitForFunction(() => window.dapEvents.some((e) => e.type === 'dap-done'), null, { timeout: 60_000 });
  s = await widgetState(page);

  assert.equal(s.status, 'completed');
  assert.equal(s.statusText, 'Completed');
  assert.equal(s.isError, false);
  assert.equal(s.progress, 100);
  assert.equal(s.ariaNow, '100');
  assert.equal(s.barWidth, '100%');
  const done = s.events.filter((e) => e.type === 'dap-done');
  assert.equal(done.length, 1);
  assert.equal(done[0].status, 'completed');
  assert.equal(done[0].data.task_id, taskId);
  assert.equal(done[0].result.result_data.row_count, BIG_ROWS, 'result summary fetched through the host backend');
  assert.match(s.summary, new RegExp(`Rows\\s*${BIG_ROWS.toLocaleString('en-US')}`));

  // The bar moved: intermediate progress values, never backwards, ending at 100.
  const progress = s.events.filter((e) => e.type === 'dap-progress').map((e) => e.progress);
  assert.ok(progress.some((p) => p > 0 && p < 100), `intermediate progress seen: ${progress}`);
  assert.deepEqual([...progress].sort((a, b) => a - b), progress, `monotonic: ${progress}`);
  assert.equal(progress.at(-1), 100);
  assert.ok(s.events.some((e) => e.type === 'dap-progress' && e.stage), 'stages reported');
  assert.equal(s.events.filter((e) => e.type === 'dap-error').length, 0, JSON.stringify(s.events));

  const shot = env('SCREENSHOT');
  mkdirSync(dirname(shot), { recursive: true });
  await page.screenshot({ path: shot, fullPage: true });
  await page.close();
});

test('a page opened after the task finished gets its state by replay', async () => {
  assert.ok(taskId, 'needs the first test');
  const page = await newPage();
  await page.goto(`${PAGE}/examples/index.html?task=${taskId}`);
  await page.waitForFunction(() => window.dapEvents.some((e) => e.type === 'dap-done'), null, { timeout: 15_000 });
  const s = await widgetState(page);
  assert.equal(s.status, 'completed');
  assert.equal(s.progress, 100);
  const kinds = s.events.filter((e) => e.type === 'dap-progress').map((e) => e.status);
  assert.equal(kinds[0], 'queued', 'replay starts at task.created');
  assert.equal(kinds.at(-1), 'completed');
  await page.close();
});

test('when the host refuses a ticket the fallback stays visible and is-error is set', async () => {
  const page = await newPage();
  await page.goto(`${PAGE}/examples/index.html?task=${encodeURIComponent('not a task')}`);
  await page.waitForFunction(() => document.getElementById('task').hasAttribute('is-error'), null, { timeout: 15_000 });
  const s = await widgetState(page);
  assert.equal(s.status, 'error');
  assert.equal(s.fallbackHidden, false);
  assert.ok(await page.getByText('Task status will appear here.').isVisible());
  const err = s.events.find((e) => e.type === 'dap-error');
  assert.equal(err.fatal, true);
  assert.match(err.error, /403/);
  await page.close();
});
