/**
 * The dashboard page served at `/`: one self-contained HTML document (inline CSS and script, no
 * external asset; the server's Content-Security-Policy forbids any). It reads `/dashboard/events`
 * with fetch (not EventSource, which cannot send the API key) and draws each request's per-token
 * monitor scores as they arrive. Data goes into the page through `textContent` and SVG attributes
 * only, never as markup.
 */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>steerguard serve</title>
<style>
  body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #1d232a; background: #f6f7f9; }
  h1 { font-size: 17px; margin: 0 0 8px; }
  #stats { display: flex; gap: 12px; flex-wrap: wrap; margin-bottom: 12px; }
  .stat { background: #fff; border: 1px solid #d8dde3; border-radius: 6px; padding: 6px 10px; min-width: 90px; }
  .stat b { display: block; font-size: 18px; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { border-bottom: 1px solid #e3e7eb; padding: 4px 6px; text-align: left; vertical-align: top; }
  th { font-weight: 600; background: #eef1f4; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .flagged { color: #b3261e; font-weight: 600; } .benign { color: #1e7b34; } .uncertain { color: #9a6700; }
  .generating { color: #0b57d0; } .cancelled, .failed { color: #b3261e; }
  .text { max-width: 320px; white-space: pre-wrap; overflow-wrap: anywhere; font-family: ui-monospace, monospace; font-size: 12px; }
  #key { display: none; margin: 12px 0; } #status { color: #5f6b76; margin-bottom: 8px; }
  svg.strip { background: #f3f5f7; display: block; }
</style>
</head>
<body>
<h1>steerguard serve <span id="model"></span></h1>
<div id="status">connecting…</div>
<form id="key"><label>API key <input id="key-input" type="password" autocomplete="off"></label> <button>connect</button></form>
<div id="stats">
  <div class="stat">in flight<b id="s-inflight">0</b></div>
  <div class="stat">queue (waiting)<b id="s-waiting">0</b></div>
  <div class="stat">decoding<b id="s-active">0</b></div>
  <div class="stat">capacity<b id="s-capacity">0</b></div>
  <div class="stat">tokens/s (5 s)<b id="s-rate">0</b><svg id="rate-line" width="120" height="24"></svg></div>
  <div class="stat">finished<b id="s-completed">0</b></div>
  <div class="stat">429s<b id="s-refused">0</b></div>
</div>
<table>
  <thead><tr id="head"><th>request</th><th>state</th><th>verdict</th><th>policy / steering</th><th>prompt</th>
  <th>tokens</th><th>first token</th><th>time</th><th>per-token scores</th></tr></thead>
  <tbody id="rows"></tbody>
</table>
<script>
"use strict";
const SVG = 'http://www.w3.org/2000/svg';
const MARK = 4, STRIP_H = 28, KEEP = 60;
const $ = (id) => document.getElementById(id);
let monitor = null, showText = false;
const rows = new Map();
const rates = [];

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function fmtScore(x) { return typeof x === 'number' ? x.toFixed(2) : ''; }
function verdictText(v) { return v ? v.verdict + ' ' + fmtScore(v.score) : 'no monitor'; }
function steeringText(r) {
  const parts = [r.policy];
  if (r.blocked) parts.push('blocked');
  if (r.steering && r.steering.gate) parts.push('gate ' + r.steering.gate);
  for (const v of (r.steering ? r.steering.vectors : [])) parts.push(v.vector + ' ×' + v.coeff);
  return parts.join(' · ');
}
function colour(score) {
  if (!monitor) return '#6b7785';
  if (score > monitor.threshold) return '#d93025';
  if (score < monitor.benignBelow) return '#1e8e3e';
  return '#f29900';
}

function addRow(r) {
  if (rows.has(r.id)) return rows.get(r.id);
  const tr = el('tr');
  tr.dataset.id = r.id;
  const cells = {};
  for (const name of ['id', 'state', 'verdict', 'policy', 'prompt', 'tokens', 'ttft', 'time', 'scores']) {
    cells[name] = el('td', ['tokens', 'ttft', 'time'].includes(name) ? 'num' : '');
    tr.appendChild(cells[name]);
  }
  cells.id.textContent = r.endpoint + ' ' + r.id.slice(-8);
  cells.id.title = r.id;
  cells.verdict.textContent = verdictText(r.verdict);
  if (r.verdict) cells.verdict.className = r.verdict.verdict;
  cells.policy.textContent = steeringText(r);
  if (showText && r.prompt !== undefined) {
    cells.prompt.className = 'text';
    cells.prompt.textContent = r.prompt;
    const reply = el('div', 'text reply', r.reply || '');
    reply.style.color = '#0b57d0';
    cells.prompt.appendChild(reply);
    cells.reply = reply;
  } else {
    cells.prompt.textContent = r.promptTokens + ' tokens, #' + r.promptHash;
  }
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'strip');
  svg.setAttribute('height', String(STRIP_H));
  svg.setAttribute('width', '40');
  cells.scores.appendChild(svg);
  if (!r.scores) cells.scores.appendChild(el('span', '', monitor ? '(not asked)' : ''));
  const row = { tr, cells, svg, scores: [], view: r };
  rows.set(r.id, row);
  $('rows').prepend(tr);
  while ($('rows').children.length > KEEP) {
    const last = $('rows').lastChild;
    rows.delete(last.dataset.id);
    last.remove();
  }
  for (const [i, s] of (r.tokenScores || []).entries()) if (typeof s === 'number') row.scores[i] = s;
  setState(row, r.state);
  setNumbers(row, r.tokens, r.ttftMs, r.durationMs);
  drawScores(row);
  return row;
}
function setState(row, state) {
  row.tr.dataset.state = state;
  row.cells.state.textContent = state;
  row.cells.state.className = state;
}
function setNumbers(row, tokens, ttft, duration) {
  row.cells.tokens.textContent = String(tokens);
  if (ttft !== null && ttft !== undefined) row.cells.ttft.textContent = ttft + ' ms';
  if (duration !== null && duration !== undefined) row.cells.time.textContent = (duration / 1000).toFixed(2) + ' s';
}
/** One bar per scored token, its height the score within the row's range, its colour the verdict band. */
function drawScores(row) {
  const svg = row.svg, scores = row.scores;
  const known = scores.filter((s) => typeof s === 'number');
  while (svg.firstChild) svg.firstChild.remove();
  svg.setAttribute('width', String(Math.max(40, scores.length * MARK)));
  if (known.length === 0) return;
  let lo = Math.min(...known), hi = Math.max(...known);
  if (monitor) { lo = Math.min(lo, monitor.benignBelow); hi = Math.max(hi, monitor.threshold); }
  const span = hi - lo || 1;
  const y = (s) => STRIP_H - 2 - ((s - lo) / span) * (STRIP_H - 4);
  if (monitor) {
    const line = document.createElementNS(SVG, 'line');
    line.setAttribute('x1', '0'); line.setAttribute('x2', String(scores.length * MARK));
    line.setAttribute('y1', String(y(monitor.threshold))); line.setAttribute('y2', String(y(monitor.threshold)));
    line.setAttribute('stroke', '#d93025'); line.setAttribute('stroke-dasharray', '2 2');
    svg.appendChild(line);
  }
  scores.forEach((s, i) => {
    if (typeof s !== 'number') return;
    const rect = document.createElementNS(SVG, 'rect');
    rect.setAttribute('class', 'score-mark');
    rect.setAttribute('x', String(i * MARK));
    rect.setAttribute('width', String(MARK - 1));
    rect.setAttribute('y', String(y(s)));
    rect.setAttribute('height', String(Math.max(1, STRIP_H - 2 - y(s))));
    rect.setAttribute('fill', colour(s));
    const title = document.createElementNS(SVG, 'title');
    title.textContent = 'token ' + i + ': ' + s.toFixed(3);
    rect.appendChild(title);
    svg.appendChild(rect);
  });
}
function drawRates() {
  const svg = $('rate-line');
  while (svg.firstChild) svg.firstChild.remove();
  const max = Math.max(1, ...rates);
  const points = rates.map((r, i) => (i * 2) + ',' + (22 - (r / max) * 20)).join(' ');
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', points);
  line.setAttribute('fill', 'none');
  line.setAttribute('stroke', '#0b57d0');
  svg.appendChild(line);
}

const handlers = {
  hello(d) {
    monitor = d.monitor; showText = d.showText;
    $('model').textContent = '· ' + d.model + (showText ? '' : ' · text hidden');
    $('rows').replaceChildren(); rows.clear();
    for (const r of d.requests) addRow(r);
  },
  stats(d) {
    $('s-inflight').textContent = d.inFlight; $('s-waiting').textContent = d.waiting;
    $('s-active').textContent = d.active; $('s-capacity').textContent = d.capacity;
    $('s-rate').textContent = d.tokensPerSecond.toFixed(1);
    $('s-completed').textContent = d.completed; $('s-refused').textContent = d.rateLimited;
    rates.push(d.tokensPerSecond); if (rates.length > 60) rates.shift();
    drawRates();
  },
  request(r) { addRow(r); },
  text(d) {
    const row = rows.get(d.id); if (!row) return;
    setNumbers(row, d.tokens, d.ttftMs, null);
    if (row.cells.reply && d.text !== undefined) row.cells.reply.textContent += d.text;
  },
  score(d) {
    const row = rows.get(d.id); if (!row) return;
    row.scores[d.index] = d.score;
    drawScores(row);
  },
  done(d) {
    const row = rows.get(d.id); if (!row) return;
    setState(row, d.state);
    setNumbers(row, d.tokens, null, d.durationMs);
    if (row.cells.reply && d.text !== undefined) row.cells.reply.textContent = d.text;
    if (d.finishReason) row.cells.state.textContent = d.state + ' (' + d.finishReason + ')';
  },
};

async function connect() {
  const key = sessionStorage.getItem('steerguard-key');
  let res;
  try {
    res = await fetch('dashboard/events', { headers: key ? { authorization: 'Bearer ' + key } : {} });
  } catch (e) {
    $('status').textContent = 'disconnected; retrying'; setTimeout(connect, 2000); return;
  }
  if (res.status === 401) {
    $('status').textContent = key ? 'the key was refused' : 'this server needs its API key';
    $('key').style.display = 'block'; return;
  }
  if (!res.ok) { $('status').textContent = 'HTTP ' + res.status + '; retrying'; setTimeout(connect, 2000); return; }
  $('key').style.display = 'none';
  $('status').textContent = 'live';
  document.body.dataset.live = 'true';
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
    if (done) break;
    buf += value;
    let at;
    while ((at = buf.indexOf('\\n\\n')) >= 0) {
      const block = buf.slice(0, at); buf = buf.slice(at + 2);
      let event = 'message', data = '';
      for (const line of block.split('\\n')) {
        if (line.startsWith('event: ')) event = line.slice(7);
        else if (line.startsWith('data: ')) data += line.slice(6);
      }
      if (handlers[event] && data) handlers[event](JSON.parse(data));
    }
  }
  document.body.dataset.live = 'false';
  $('status').textContent = 'disconnected; retrying';
  setTimeout(connect, 2000);
}
$('key').addEventListener('submit', (e) => {
  e.preventDefault();
  sessionStorage.setItem('steerguard-key', $('key-input').value);
  connect();
});
connect();
</script>
</body>
</html>
`;

/** No script, style, image or connection from anywhere but the page itself and this server. */
export const DASHBOARD_CSP =
  "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; " +
  "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
