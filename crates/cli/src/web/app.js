'use strict';
// herd's dashboard (served by `herd web`, crates/cli/src/web.rs). The state comes as `state`
// events every second on /api/events (the apps as `herd list --json` gives them); logs as
// `log` events on /api/logs; buttons POST /api/apps/<name>/<action> with the page's CSRF token.
// No dependencies, nothing loaded from elsewhere (the page's CSP allows only this origin).

const CSRF = document.querySelector('meta[name="herd-csrf"]').content;
const HISTORY = 60; // samples (seconds) per chart
const LOG_KEEP = 500; // lines kept in the log tail

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const kid of kids) e.append(kid);
  return e;
};

// ----- formatting ------------------------------------------------------------------------

function bytes(n) {
  if (n == null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
function pct(x) { return x == null ? '–' : `${x.toFixed(1)}%`; }
function uptime(ms) {
  if (ms == null) return '–';
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d${Math.floor(s / 3600) % 24}h`;
}
function lastExit(p) {
  const e = p.last_exit;
  if (!e) return '';
  return e.signal ? `killed by ${e.signal}` : `exit ${e.code}`;
}

// The app's own @pm2/io metrics (io.metric, io.counter…), not @pm2/io's defaults.
const PM2_DEFAULTS = new Set(['Active handles', 'Active requests', 'Event Loop Latency', 'Event Loop Latency p95',
  'Heap Size', 'Heap Usage', 'Used Heap Size', 'HTTP', 'HTTP Mean Latency', 'HTTP P95 Latency', 'GC Heap Size', 'GC Heap Usage']);
function pm2Metrics(p) {
  const m = p.pm2_metrics || {};
  return Object.keys(m)
    .filter((k) => !PM2_DEFAULTS.has(k))
    .map((k) => {
      const v = m[k] && m[k].value;
      const shown = typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(2) : String(v ?? '–');
      return `${k} ${shown}${m[k] && m[k].unit ? ` ${m[k].unit}` : ''}`;
    })
    .join(' · ');
}

// ----- charts ----------------------------------------------------------------------------

const history = new Map(); // "app:instance" → {cpu: [], mem: []}

function remember(key, p) {
  let h = history.get(key);
  if (!h) { h = { cpu: [], mem: [] }; history.set(key, h); }
  h.cpu.push(p.cpu_percent ?? null);
  h.mem.push(p.memory_bytes ?? null);
  if (h.cpu.length > HISTORY) { h.cpu.shift(); h.mem.shift(); }
  return h;
}

function spark(canvas, values, color, floor) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 120;
  const hgt = canvas.clientHeight || 26;
  if (canvas.width !== w * ratio) { canvas.width = w * ratio; canvas.height = hgt * ratio; }
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, hgt);
  const vs = values.filter((v) => v != null);
  if (vs.length === 0) return;
  const max = Math.max(floor, ...vs);
  g.strokeStyle = color;
  g.fillStyle = color + '33';
  g.lineWidth = 1.5;
  g.beginPath();
  const step = w / (HISTORY - 1);
  const x0 = w - (values.length - 1) * step;
  let started = false;
  values.forEach((v, i) => {
    if (v == null) return;
    const x = x0 + i * step;
    const y = hgt - 1 - (v / max) * (hgt - 3);
    if (!started) { g.moveTo(x, y); started = true; } else g.lineTo(x, y);
  });
  g.stroke();
}

// ----- the apps --------------------------------------------------------------------------

const cards = new Map(); // app name → {card, body, meta, status}

const ACTIONS = [
  ['reload', 'Reload', (a) => `Reload ${a} (one instance at a time, no request dropped)?`],
  ['restart', 'Restart', (a) => `Restart every instance of ${a} at once?`],
  ['scale-down', '−1', (a, n) => `Scale ${a} from ${n} to ${n - 1} instances?`],
  ['scale-up', '+1', (a, n) => `Scale ${a} from ${n} to ${n + 1} instances?`],
  ['stop', 'Stop', (a) => `Stop ${a} (its port closes)?`],
  ['start', 'Start', (a) => `Start ${a} again?`],
];

function card(app) {
  let c = cards.get(app.name);
  if (c) return c;
  const meta = el('span', { class: 'app-meta' });
  const status = el('span', { class: 'app-status' });
  const buttons = el('span', { class: 'buttons' });
  c = { meta, status, buttons, size: 0 };
  for (const [action, label, question] of ACTIONS) {
    const b = el('button', { type: 'button', 'data-action': action, textContent: label });
    b.addEventListener('click', () => act(app.name, action, question(app.name, c.size), b));
    buttons.append(b);
  }
  const body = el('tbody');
  const table = el('table', {},
    el('thead', {}, el('tr', {}, ...['#', 'pid', 'status', 'CPU', '', 'memory', '', 'restarts', 'uptime', 'last exit', '@pm2/io']
      .map((t) => el('th', { textContent: t })))),
    body);
  c.card = el('article', { class: 'app', 'data-app': app.name },
    el('div', { class: 'app-head' }, el('span', { class: 'app-name', textContent: app.name }), status, meta, buttons),
    table);
  c.body = body;
  c.rows = new Map();
  cards.set(app.name, c);
  return c;
}

function row(c, app, p) {
  const key = p.instance;
  let r = c.rows.get(key);
  if (!r) {
    const cells = {};
    for (const k of ['n', 'pid', 'status', 'cpu', 'cpuChart', 'mem', 'memChart', 'restarts', 'uptime', 'exit', 'pm2']) {
      cells[k] = el('td');
    }
    cells.cpu.className = cells.mem.className = cells.restarts.className = 'num';
    cells.cpuChart.append(cells.cpuCanvas = el('canvas', { width: 120, height: 26 }));
    cells.memChart.append(cells.memCanvas = el('canvas', { width: 120, height: 26 }));
    cells.cpuCanvas.style.width = cells.memCanvas.style.width = '120px';
    cells.cpuCanvas.style.height = cells.memCanvas.style.height = '26px';
    const tr = el('tr', { 'data-instance': String(key) },
      cells.n, cells.pid, cells.status, cells.cpu, cells.cpuChart, cells.mem, cells.memChart, cells.restarts, cells.uptime, cells.exit, cells.pm2);
    r = { tr, cells };
    c.rows.set(key, r);
  }
  const x = r.cells;
  x.n.textContent = p.instance === 4294967295 ? 'primary' : String(p.instance);
  x.pid.textContent = p.pid ?? '–';
  const h = p.health;
  const sick = h && p.status === 'online' ? (h.live === false ? 'unlive' : h.ready === false ? 'unready' : null) : null;
  x.status.textContent = sick || p.status;
  x.status.className = sick ? 'status-errored' : `status-${p.status}`;
  x.status.title = h && h.last ? `${h.last.probe} ${h.last.ok ? 'passed' : 'failed'}: ${h.last.detail}` : '';
  x.cpu.textContent = pct(p.cpu_percent);
  x.mem.textContent = bytes(p.memory_bytes);
  x.restarts.textContent = String(p.restarts);
  x.uptime.textContent = uptime(p.uptime_ms);
  x.exit.textContent = lastExit(p);
  x.pm2.textContent = pm2Metrics(p);
  const hist = remember(`${app.name}:${p.instance}`, p);
  spark(x.cpuCanvas, hist.cpu, '#6aa8ff', 5);
  spark(x.memCanvas, hist.mem, '#c28cff', 1 << 20);
  return r.tr;
}

function render(state) {
  const root = $('#apps');
  const conn = $('#conn');
  if (state.error) {
    conn.textContent = state.error;
    conn.className = 'conn bad';
    return;
  }
  conn.textContent = `live · ${new Date().toLocaleTimeString()}`;
  conn.className = 'conn ok';
  const warn = $('#warnings');
  warn.hidden = !(state.warnings && state.warnings.length);
  warn.textContent = (state.warnings || []).join(' · ');
  const apps = state.apps || [];
  if (apps.length === 0) {
    root.replaceChildren(el('p', { class: 'empty', textContent: 'No apps. Start one with herd start app.js -i 2' }));
  }
  let instances = 0;
  let cpu = 0;
  let mem = 0;
  const seen = new Set();
  const order = [];
  for (const app of apps) {
    seen.add(app.name);
    const c = card(app);
    const procs = (app.primary ? [app.primary] : []).concat(app.processes || []);
    c.size = (app.processes || []).length;
    let appCpu = 0;
    let appMem = 0;
    const trs = [];
    const live = new Set();
    for (const p of procs) {
      trs.push(row(c, app, p));
      live.add(p.instance);
      appCpu += p.cpu_percent || 0;
      appMem += p.memory_bytes || 0;
    }
    for (const k of [...c.rows.keys()]) if (!live.has(k)) c.rows.delete(k);
    c.body.replaceChildren(...trs);
    instances += c.size;
    cpu += appCpu;
    mem += appMem;
    const where = app.listen && app.listen.length ? app.listen.join(', ') : (app.port ? `:${app.port}` : 'no port');
    c.status.textContent = app.status;
    c.status.className = `app-status status-${app.status}`;
    c.meta.textContent = `${c.size} instance${c.size === 1 ? '' : 's'} · ${where} · CPU ${pct(appCpu)} · memory ${bytes(appMem)}`;
    for (const b of c.buttons.children) {
      const a = b.getAttribute('data-action');
      b.hidden = (app.status === 'stopped') !== (a === 'start');
    }
    order.push(c.card);
  }
  for (const name of [...cards.keys()]) if (!seen.has(name)) cards.delete(name);
  if (apps.length > 0) root.replaceChildren(...order);
  $('#summary').textContent = `${apps.length} app${apps.length === 1 ? '' : 's'} · ${instances} instances · CPU ${pct(cpu)} · memory ${bytes(mem)}`;
  const sel = $('#log-app');
  const names = ['all', ...apps.map((a) => a.name)];
  const have = [...sel.options].map((o) => o.value);
  if (names.join('\n') !== have.join('\n')) {
    const cur = sel.value;
    sel.replaceChildren(...names.map((n) => el('option', { value: n, textContent: n === 'all' ? 'every app' : n })));
    sel.value = names.includes(cur) ? cur : 'all';
  }
}

// ----- actions ---------------------------------------------------------------------------

let toastTimer = null;
function toast(text, bad) {
  const t = $('#toast');
  t.textContent = text;
  t.className = `show${bad ? ' bad' : ''}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.className = ''; }, 8000);
}

async function act(app, action, question, button) {
  if (!window.confirm(question)) return;
  button.disabled = true;
  toast(`${action} ${app}…`);
  try {
    const res = await fetch(`/api/apps/${encodeURIComponent(app)}/${action}`, {
      method: 'POST',
      headers: { 'x-herd-csrf': CSRF },
      credentials: 'same-origin',
    });
    const text = await res.text();
    let msg = text;
    let ok = res.ok;
    try {
      const j = JSON.parse(text);
      msg = j.message;
      ok = ok && j.ok;
    } catch (_) { /* not JSON: shown as it is */ }
    toast(String(msg).startsWith(`${action} `) ? msg : `${action} ${app}: ${msg}`, !ok);
  } catch (e) {
    toast(`${action} ${app}: ${e.message}`, true);
  } finally {
    button.disabled = false;
  }
}

// ----- live state and logs ---------------------------------------------------------------

function live() {
  const es = new EventSource('/api/events');
  es.addEventListener('state', (e) => {
    try {
      render(JSON.parse(e.data));
    } catch (err) {
      toast(`cannot show the state: ${err.message}`, true);
    }
  });
  es.onerror = () => {
    const conn = $('#conn');
    conn.textContent = 'reconnecting… (is herd web still running?)';
    conn.className = 'conn wait';
  };
}

let logSource = null;
function followLogs() {
  if (logSource) logSource.close();
  const pre = $('#log-lines');
  pre.replaceChildren();
  const app = $('#log-app').value;
  logSource = new EventSource(`/api/logs?app=${encodeURIComponent(app)}&lines=100`);
  logSource.addEventListener('log', (e) => {
    const l = JSON.parse(e.data);
    const who = l.instance === 4294967295 ? `${l.app}:primary` : `${l.app}:${l.instance}`;
    const line = el('div', { class: l.stream === 'err' ? 'log-err' : '', textContent: `${who} | ${l.line}` });
    pre.append(line);
    while (pre.childElementCount > LOG_KEEP) pre.firstElementChild.remove();
    if ($('#log-follow').checked) pre.scrollTop = pre.scrollHeight;
  });
  logSource.addEventListener('error', (e) => {
    if (e.data) pre.append(el('div', { class: 'log-err', textContent: `(${e.data})` }));
  });
}

$('#log-app').addEventListener('change', followLogs);
live();
followLogs();
