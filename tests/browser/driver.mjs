#!/usr/bin/env node
// Drive the real ComfyUI frontend in headless Chromium (playwright-core + Debian's chromium).
//
//   node tests/browser/driver.mjs --url http://127.0.0.1:PORT --workflow WF.json
//        [--screenshot OUT.png] [--queue] [--timeout SEC] [--report OUT.json]
//        [--node-modules VENV/node/node_modules] [--chromium /usr/bin/chromium] [--export-ui OUT.json]
//
// WF.json: UI format ({nodes: [...], links: [...]}) or API format ({id: {class_type, inputs}}).
// Loads it into the page, lists node types the page cannot resolve and nodes drawn as errored,
// optionally queues it through the page (app.queuePrompt, the Run button's code path) and waits
// for the run's end event, then saves a screenshot. Prints a JSON report on stdout.
// --export-ui writes the loaded graph as the frontend saves it (API format in -> UI format out,
// laid out by the frontend): the way to produce the UI-format workflows the pack ships.
//
// Exit codes: 0 ok; 2 usage/environment (chromium, playwright-core, server, app not ready);
//             3 missing node types; 4 errored nodes; 5 queue rejected; 6 run failed/interrupted;
//             7 timeout.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const EXIT = { ok: 0, env: 2, missing: 3, errored: 4, rejected: 5, failed: 6, timeout: 7 };
// Node types that exist only in the frontend, never in /object_info.
const FRONTEND_ONLY = new Set(['Note', 'MarkdownNote', 'Reroute', 'PrimitiveNode']);
const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];

class DriverError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

function parseArgs(argv) {
  const opts = { url: 'http://127.0.0.1:8188', timeout: 120, queue: false, chromium: '/usr/bin/chromium',
    nodeModules: process.env.MOVA_NODE_MODULES || '' };
  const valueOf = (i) => {
    if (i + 1 >= argv.length) throw new DriverError(EXIT.env, `${argv[i]} needs a value`);
    return argv[i + 1];
  };
  for (let i = 0; i < argv.length; i++) {
    switch (argv[i]) {
      case '--url': opts.url = valueOf(i).replace(/\/+$/, ''); i++; break;
      case '--workflow': opts.workflow = valueOf(i); i++; break;
      case '--screenshot': opts.screenshot = valueOf(i); i++; break;
      case '--report': opts.report = valueOf(i); i++; break;
      case '--timeout': opts.timeout = Number(valueOf(i)); i++; break;
      case '--node-modules': opts.nodeModules = valueOf(i); i++; break;
      case '--chromium': opts.chromium = valueOf(i); i++; break;
      case '--export-ui': opts.exportUi = valueOf(i); i++; break;
      case '--queue': opts.queue = true; break;
      default: throw new DriverError(EXIT.env, `unknown argument ${argv[i]}`);
    }
  }
  if (!opts.workflow) throw new DriverError(EXIT.env, '--workflow is required');
  return opts;
}

function requirePlaywright(nodeModules) {
  const places = [nodeModules, path.join(process.cwd(), '.venv', 'node', 'node_modules')].filter(Boolean);
  for (const dir of places) {
    try { return createRequire(path.join(path.resolve(dir), 'noop.js'))('playwright-core'); } catch { /* next */ }
  }
  throw new DriverError(EXIT.env, `playwright-core not found in ${places.join(', ')} (run scripts/install_host.sh VENV --with-browser)`);
}

function nodeTypes(workflow, isUi) {
  if (isUi) return [...new Set((workflow.nodes || []).map((n) => n.type).filter(Boolean))];
  return [...new Set(Object.values(workflow).map((n) => n && n.class_type).filter(Boolean))];
}

async function getJson(url, init) {
  const resp = await fetch(url, init);
  if (!resp.ok) throw new Error(`${init?.method || 'GET'} ${url} -> HTTP ${resp.status}`);
  return resp.json();
}

async function drive(opts, report) {
  if (!fs.existsSync(opts.chromium)) throw new DriverError(EXIT.env, `no chromium at ${opts.chromium}`);
  const workflow = JSON.parse(fs.readFileSync(opts.workflow, 'utf8'));
  const isUi = Array.isArray(workflow.nodes);
  report.format = isUi ? 'ui' : 'api';
  const deadline = Date.now() + opts.timeout * 1000;
  const remaining = () => Math.max(1000, deadline - Date.now());

  let objectInfo;
  try {
    report.comfyui_version = (await getJson(`${opts.url}/system_stats`)).system?.comfyui_version ?? null;
    objectInfo = await getJson(`${opts.url}/object_info`);
    // A fresh user dir would open the templates dialog over the canvas.
    await getJson(`${opts.url}/settings/Comfy.TutorialCompleted`, { method: 'POST', body: 'true' }).catch(() => null);
  } catch (e) {
    throw new DriverError(EXIT.env, `ComfyUI not reachable at ${opts.url}: ${e.message}`);
  }
  const serverMissing = nodeTypes(workflow, isUi).filter((t) => !(t in objectInfo) && !FRONTEND_ONLY.has(t));

  const { chromium } = requirePlaywright(opts.nodeModules);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'mova-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium, headless: true, args: CHROMIUM_FLAGS, viewport: { width: 1400, height: 900 },
  });
  try {
    const origin = new URL(opts.url).origin;
    await context.route((u) => /^(https?|wss?):/.test(u.protocol) && u.origin !== origin, (route) => {
      if (report.blocked_requests.length < 20) report.blocked_requests.push(route.request().url());
      return route.abort('blockedbyclient');
    });
    const page = context.pages()[0] ?? await context.newPage();
    page.on('pageerror', (err) => report.page_errors.push(String(err.message).slice(0, 400)));

    await page.goto(`${opts.url}/`, { waitUntil: 'domcontentloaded', timeout: remaining() });
    try {
      await page.waitForFunction(() => Boolean(window.app?.graph && window.app?.canvas && window.LiteGraph),
        null, { timeout: Math.min(remaining(), 90000), polling: 200 });
    } catch {
      if (opts.screenshot) await page.screenshot({ path: opts.screenshot }).catch(() => {});
      throw new DriverError(EXIT.env, 'the ComfyUI app did not become ready in the page');
    }
    report.frontend_version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
    await page.keyboard.press('Escape');

    // Record the run's websocket events as the page's own api object sees them.
    await page.evaluate(() => {
      const seen = (window.__movaEvents = []);
      for (const type of ['execution_start', 'progress', 'executed', 'execution_success', 'execution_error',
        'execution_interrupted']) {
        window.app.api.addEventListener(type, (ev) => {
          const d = ev.detail || {};
          seen.push({ type, prompt_id: d.prompt_id ?? null, node: d.node ?? d.node_id ?? null,
            message: d.exception_message ?? null });
        });
      }
    });

    await page.evaluate(async ({ wf, ui, name }) => {
      if (ui) await window.app.loadGraphData(wf, true, true, name);
      else await window.app.loadApiJson(wf, name);
    }, { wf: workflow, ui: isUi, name: path.basename(opts.workflow) });
    await page.waitForTimeout(1000);
    // Bring all nodes into view for the screenshot (API-format layouts start at the origin,
    // partly under the toolbar). Cosmetic only: ignore frontends without these fields.
    await page.evaluate(() => {
      try {
        const nodes = window.app.graph.nodes || window.app.graph._nodes || [];
        if (!nodes.length) return;
        const minX = Math.min(...nodes.map((n) => n.pos[0]));
        const minY = Math.min(...nodes.map((n) => n.pos[1] - 40));
        const maxX = Math.max(...nodes.map((n) => n.pos[0] + (n.size ? n.size[0] : 200)));
        const maxY = Math.max(...nodes.map((n) => n.pos[1] + (n.size ? n.size[1] : 100)));
        // fit the whole graph, but never zoom in and never below a readable 60 %
        const scale = Math.max(0.6, Math.min(1, (window.innerWidth - 200) / (maxX - minX),
                                            (window.innerHeight - 240) / (maxY - minY)));
        window.app.canvas.ds.scale = scale;
        window.app.canvas.ds.offset = [120 / scale - minX, 160 / scale - minY];
        window.app.canvas.setDirty(true, true);
      } catch { /* keep the frontend's own view */ }
    });
    await page.waitForTimeout(200);

    const graphState = await page.evaluate(() => {
      const registered = window.LiteGraph.registered_node_types || {};
      const nodes = window.app.graph.nodes || window.app.graph._nodes || [];
      return {
        node_count: nodes.length,
        unresolved: [...new Set(nodes.filter((n) => !registered[n.type]).map((n) => n.type))],
        errored: nodes.filter((n) => n.has_errors).map((n) => ({ id: n.id, type: n.type, title: n.title })),
        dialogs: [...document.querySelectorAll('.p-dialog, [role="dialog"]')]
          .filter((d) => d.getClientRects().length).map((d) => d.innerText.trim().slice(0, 500)).filter(Boolean),
      };
    });
    report.node_count = graphState.node_count;
    report.errored_nodes = graphState.errored;
    report.dialogs = graphState.dialogs;
    report.missing_node_types = [...new Set([...serverMissing, ...graphState.unresolved])]
      .filter((t) => !FRONTEND_ONLY.has(t)).sort();

    if (opts.exportUi) {
      fs.writeFileSync(opts.exportUi, JSON.stringify(await page.evaluate(() => window.app.graph.serialize()), null, 2));
      report.exported_ui = opts.exportUi;
    }

    let code = EXIT.ok;
    if (report.missing_node_types.length) code = EXIT.missing;
    else if (report.errored_nodes.length) code = EXIT.errored;

    if (opts.queue && code === EXIT.ok) {
      await page.keyboard.press('Escape');
      const responseP = page.waitForResponse(
        (r) => r.request().method() === 'POST' && new URL(r.url()).pathname.endsWith('/prompt'),
        { timeout: Math.min(remaining(), 60000) }).catch(() => null);
      const thrown = await page.evaluate(async () => {
        try { await window.app.queuePrompt(0, 1); return null; } catch (e) { return String(e); }
      });
      const response = await responseP;
      const body = response ? await response.json().catch(() => null) : null;
      const nodeErrors = body?.node_errors && Object.keys(body.node_errors).length ? body.node_errors : null;
      report.queue = { http_status: response?.status() ?? null, prompt_id: body?.prompt_id ?? null };
      if (!response || response.status() !== 200 || !body?.prompt_id || nodeErrors) {
        Object.assign(report.queue, { status: 'rejected', error: body?.error ?? thrown, node_errors: nodeErrors });
        code = EXIT.rejected;
      } else {
        const id = body.prompt_id;
        const ends = ['execution_success', 'execution_error', 'execution_interrupted'];
        try {
          await page.waitForFunction(({ id, ends }) => window.__movaEvents.some((e) => e.prompt_id === id && ends.includes(e.type)),
            { id, ends }, { timeout: remaining(), polling: 250 });
          const events = (await page.evaluate(() => window.__movaEvents)).filter((e) => e.prompt_id === id);
          const end = events.find((e) => ends.includes(e.type));
          report.queue.status = end.type.replace('execution_', '');
          report.queue.error = end.message;
          report.queue.progress_events = events.filter((e) => e.type === 'progress').length;
          report.queue.executed_nodes = events.filter((e) => e.type === 'executed').map((e) => String(e.node));
          if (report.queue.status !== 'success') code = EXIT.failed;
        } catch {
          report.queue.status = 'timeout';
          await fetch(`${opts.url}/interrupt`, { method: 'POST' }).catch(() => {});
          code = EXIT.timeout;
        }
      }
      await page.waitForTimeout(500);
    }
    if (opts.screenshot) {
      await page.screenshot({ path: opts.screenshot });
      report.screenshot = opts.screenshot;
    }
    return code;
  } finally {
    await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

const report = { ok: false, format: null, comfyui_version: null, frontend_version: null, node_count: 0,
  missing_node_types: [], errored_nodes: [], dialogs: [], page_errors: [], blocked_requests: [],
  queue: null, screenshot: null, error: null };
let code;
let opts = {};
try {
  opts = parseArgs(process.argv.slice(2));
  code = await drive(opts, report);
} catch (e) {
  code = e instanceof DriverError ? e.code : EXIT.env;
  report.error = e instanceof DriverError ? e.message : String(e.stack || e);
  process.stderr.write(`driver.mjs: ${report.error}\n`);
}
report.ok = code === EXIT.ok;
report.exit_code = code;
const text = JSON.stringify(report, null, 2);
if (opts.report) fs.writeFileSync(opts.report, text);
process.stdout.write(`${text}\n`);
process.exit(code);
