// An example "host backend" for <dap-task>: the web site that embeds the widget. It holds the
// DAP API key (never sent to the browser) and exposes two small endpoints to its own pages:
//
//   POST /api/dap-ticket  {"task_id"}  → {"ticket", "server"}   (a 60 s read-only SSE ticket)
//   GET  /api/dap-result?task_id=…     → {"result_data", "artifacts": [{name, size, url}]}
//
// It also serves this package's files so examples/index.html can be opened in a browser.
// Plain Node (≥ 18), no dependencies:
//
//   DAP_SERVER=http://127.0.0.1:8080 DAP_API_KEY=dap_… PORT=3000 node examples/host-server.mjs
//   open http://127.0.0.1:3000/examples/index.html?task=<task id>
//
// A real site would also check that the signed-in user may see the task before minting a ticket.
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SERVED = ['examples', 'dist', 'src'];
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8', '.css': 'text/css' };
const TASK_ID = /^[A-Za-z0-9-]{1,64}$/;

/**
 * Creates (does not start) the host server.
 * `dapServer`: where this backend reaches DAP; `publicServer`: the DAP URL browsers use
 * (defaults to `dapServer`); `apiKey`: a DAP API key with the read scope.
 */
export function createHostServer({ dapServer, publicServer = dapServer, apiKey }) {
  const dap = async (method, path, body) => {
    const res = await fetch(new URL(path, dapServer), {
      method,
      headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json().catch(() => null);
    return { status: res.status, json };
  };

  const send = (res, status, value) => {
    res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
    res.end(JSON.stringify(value));
  };

  const readJson = async (req) => {
    let raw = '';
    for await (const chunk of req) {
      raw += chunk;
      if (raw.length > 10_000) throw new Error('body too large');
    }
    return raw ? JSON.parse(raw) : {};
  };

  return http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://host.invalid');
    try {
      if (url.pathname === '/api/dap-ticket' && req.method === 'POST') {
        const { task_id: taskId } = await readJson(req);
        if (typeof taskId !== 'string' || !TASK_ID.test(taskId)) return send(res, 403, { error: 'not your task' });
        const r = await dap('POST', '/api/v1/sse-tickets', { task_id: taskId });
        if (r.status !== 200) return send(res, 502, { error: 'could not get a ticket' });
        return send(res, 200, { ticket: r.json.ticket, server: publicServer });
      }
      if (url.pathname === '/api/dap-result' && req.method === 'GET') {
        const taskId = url.searchParams.get('task_id') || '';
        if (!TASK_ID.test(taskId)) return send(res, 403, { error: 'not your task' });
        const result = await dap('GET', `/api/v1/tasks/${taskId}/result`);
        if (result.status !== 200) return send(res, result.status, { error: 'no result' });
        // Artifacts get key-less, short-lived download links the browser may follow.
        const list = await dap('GET', `/api/v1/tasks/${taskId}/artifacts`);
        const artifacts = [];
        for (const a of (list.status === 200 && list.json?.artifacts) || []) {
          const signed = await dap('POST', `/api/v1/tasks/${taskId}/artifacts/${encodeURIComponent(a.name)}/signed-url?ttl_s=600`);
          if (signed.status === 200) artifacts.push({ name: a.name, size: a.size, url: new URL(signed.json.url, publicServer).href });
        }
        return send(res, 200, { result_data: result.json.result_data, artifacts });
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, { error: 'method not allowed' });
      if (url.pathname === '/') {
        res.writeHead(302, { Location: '/examples/index.html' });
        return res.end();
      }
      // Static files, only from the served folders.
      const rel = normalize(decodeURIComponent(url.pathname)).replace(/^[/\\]+/, '');
      if (!SERVED.includes(rel.split(sep)[0]) || rel.includes('..')) return send(res, 404, { error: 'not found' });
      const body = await readFile(join(ROOT, rel)).catch(() => null);
      if (!body) return send(res, 404, { error: 'not found' });
      res.writeHead(200, { 'Content-Type': TYPES[extname(rel)] || 'application/octet-stream' });
      return res.end(body);
    } catch (e) {
      return send(res, 400, { error: String(e.message || e) });
    }
  });
}

// Run directly: `node examples/host-server.mjs`.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { DAP_SERVER, DAP_PUBLIC_SERVER, DAP_API_KEY, PORT = '3000', HOST = '127.0.0.1' } = process.env;
  if (!DAP_SERVER || !DAP_API_KEY) {
    console.error('set DAP_SERVER and DAP_API_KEY');
    process.exit(2);
  }
  const server = createHostServer({ dapServer: DAP_SERVER, publicServer: DAP_PUBLIC_SERVER || DAP_SERVER, apiKey: DAP_API_KEY });
  server.listen(Number(PORT), HOST, () => {
    console.log(`host backend on http://${HOST}:${server.address().port}/examples/index.html`);
  });
}
