// codebox console: a page of the daemon that drives its own API. Output streams over the
// websocket of /api/v1/stream; files and the pool status use the REST API.
//
// The token lives in this tab's sessionStorage only. Whatever a session produces is the
// tenant's, so it is only ever put into the page as text, as an image from a data: URL,
// or - HTML - inside a sandboxed frame of an opaque origin, where it cannot reach this
// page, its storage or its token.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    token: $('token'), session: $('session'), newSession: $('new-session'), pool: $('pool'),
    language: $('language'), timeout: $('timeout'), run: $('run'), interrupt: $('interrupt'),
    release: $('release'), clear: $('clear'), editor: $('editor'), notice: $('notice'),
    output: $('output'), refresh: $('refresh'), path: $('path'), drop: $('drop'),
    upload: $('upload'), fileList: $('file-list'), filesNote: $('files-note'),
    sessionList: $('session-list'), sessionsNote: $('sessions-note'), usage: $('usage'),
    refreshSessions: $('refresh-sessions'), environment: $('environment'),
  };
  const USER_RE = /^[A-Za-z0-9._-]{1,128}$/;
  const ROOT = '/sandbox/';
  const MAX_CELL_TEXT = 2 << 20; // characters of output a cell shows; the rest is counted
  const INDENT = '    ';

  // --- small helpers

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }

  function randomID() {
    const b = new Uint8Array(6);
    crypto.getRandomValues(b); // crypto.randomUUID needs a secure context; this does not
    return 'console-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }

  function humanSize(n) {
    if (n < 1024) return n + ' B';
    const units = ['KiB', 'MiB', 'GiB', 'TiB'];
    let i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
    return n.toFixed(n < 10 ? 1 : 0) + ' ' + units[i];
  }

  // Tracebacks carry terminal colours; the page shows plain text.
  const stripANSI = (s) => String(s).replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');

  function notice(text, isError) {
    ui.notice.textContent = text || '';
    ui.notice.classList.toggle('error', !!isError);
  }

  class APIError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }

  // api calls the REST API with the token; non-2xx answers throw an APIError with the
  // daemon's detail.
  async function api(method, path, { query = {}, json, body } = {}) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    const headers = { 'X-Auth-Token': ui.token.value };
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(json);
    }
    const resp = await fetch(url, { method, headers, body, cache: 'no-store' });
    if (!resp.ok) {
      let detail = resp.status + ' ' + resp.statusText;
      try { detail = (await resp.json()).detail || detail; } catch { /* not JSON */ }
      if (resp.status === 401) detail = 'the token was refused: ' + detail;
      throw new APIError(resp.status, detail);
    }
    return resp;
  }

  // ready says whether a call can be made, and why not.
  function ready() {
    if (!ui.token.value) {
      notice('Enter the API token first: `codebox token` on the host prints it.', true);
      ui.token.focus();
      return false;
    }
    if (!USER_RE.test(ui.session.value)) {
      notice('A session id is 1 to 128 letters, digits, ".", "_" or "-".', true);
      ui.session.focus();
      return false;
    }
    return true;
  }

  // --- settings, kept in this tab only

  ui.token.value = sessionStorage.getItem('codebox.token') || '';
  ui.session.value = sessionStorage.getItem('codebox.session') || randomID();
  ui.language.value = sessionStorage.getItem('codebox.language') || 'python';
  sessionStorage.setItem('codebox.session', ui.session.value);

  ui.token.addEventListener('change', () => {
    sessionStorage.setItem('codebox.token', ui.token.value);
    closeSocket();
    notice('');
    refreshAll();
  });
  ui.session.addEventListener('change', () => switchSession(ui.session.value.trim()));
  ui.newSession.addEventListener('click', newSession);

  // A session of the default environment starts with its first call; one of another
  // environment is made first, so that its first call runs there.
  async function newSession() {
    const id = randomID();
    const environment = ui.environment.value || 'default';
    if (environment !== 'default') {
      try {
        await api('POST', '/api/v1/sessions', { json: { session_id: id, environment } });
      } catch (err) {
        notice('A session of ' + environment + ' could not start: ' + err.message, true);
        return;
      }
    }
    switchSession(id);
    if (environment !== 'default') notice('Session ' + id + ' runs in ' + environment + '.');
  }
  ui.language.addEventListener('change', () => sessionStorage.setItem('codebox.language', ui.language.value));

  function switchSession(id) {
    ui.session.value = id;
    sessionStorage.setItem('codebox.session', id);
    closeSocket();
    dir = ROOT;
    notice(USER_RE.test(id) ? 'Session ' + id + ': its first call starts it.' : '');
    refreshFiles();
    refreshSessions();
  }

  // --- the stream: one websocket per session id, opened on the first run

  let sock = null; // {ws, user, open: Promise}
  const cells = new Map(); // call id -> cell, in the order sent
  let seq = 0;

  function streamURL(user) {
    const u = new URL('/api/v1/stream', location.href);
    u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    u.searchParams.set('user_uuid', user);
    return u.href;
  }

  function socket() {
    const user = ui.session.value;
    if (sock && sock.user === user && sock.ws.readyState <= WebSocket.OPEN) return sock;
    closeSocket();
    const ws = new WebSocket(streamURL(user));
    const s = { ws, user };
    s.open = new Promise((resolve, reject) => {
      ws.addEventListener('open', () => {
        // A browser cannot set headers on a websocket: the token is the first message.
        ws.send(JSON.stringify({ type: 'auth', token: ui.token.value }));
        resolve();
      });
      ws.addEventListener('close', () => reject(new Error('could not connect')));
    });
    s.open.catch(() => {}); // a run awaiting it reports the failure
    ws.addEventListener('message', (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch { return; }
      onEvent(ev);
    });
    ws.addEventListener('close', (e) => {
      if (sock === s) sock = null;
      let why = e.reason || (e.code === 1006 ? 'connection lost' : 'closed (' + e.code + ')');
      if (e.reason === 'invalid token') why = 'the token was refused';
      for (const cell of cells.values()) {
        if (cell.ws === ws) finish(cell, { status: 'error', detail: 'stream ended: ' + why });
      }
      if (e.code !== 1000 && !s.closing) notice('Stream closed: ' + why, true);
      updateButtons();
    });
    sock = s;
    return s;
  }

  function closeSocket() {
    if (!sock) return;
    sock.closing = true;
    sock.ws.close(1000);
    sock = null;
  }

  // --- cells

  function newCell(id, code, language) {
    const state = el('span', { class: 'state', text: 'queued' });
    const body = el('div', { class: 'cell-body' });
    const node = el('article', { class: 'cell', 'data-state': 'queued', 'data-id': id },
      el('div', { class: 'cell-head' }, el('span', { text: language }), el('span', { text: ui.session.value }), state),
      el('pre', { class: 'cell-code', text: code }),
      body);
    ui.output.append(node); // column-reverse: the newest cell shows first
    return { id, node, body, state, shown: 0, hidden: 0, last: null, done: false, language };
  }

  function appendText(cell, kind, text) {
    if (cell.shown >= MAX_CELL_TEXT) { cell.hidden += text.length; return; }
    text = text.slice(0, MAX_CELL_TEXT - cell.shown);
    cell.shown += text.length;
    // Consecutive chunks of one stream go into one node: a chatty loop makes text, not
    // thousands of elements.
    if (cell.last && cell.last.kind === kind) {
      cell.last.node.append(text);
    } else {
      const node = el('pre', { class: 'out ' + kind });
      node.append(text);
      cell.body.append(node);
      cell.last = { kind, node };
    }
  }

  function setRunning(cell) {
    if (cell.node.dataset.state === 'queued') {
      cell.node.dataset.state = 'running';
      cell.state.textContent = 'running…';
    }
  }

  // renderData shows a display or result bundle: the richest kind the page can show safely.
  function renderData(cell, data, isResult) {
    cell.last = null;
    const str = (v) => (typeof v === 'string' ? v : JSON.stringify(v, null, 1));
    for (const mime of ['image/png', 'image/jpeg', 'image/gif']) {
      if (typeof data[mime] === 'string') {
        cell.body.append(el('img', { src: 'data:' + mime + ';base64,' + data[mime].replace(/\s/g, ''), alt: 'image output (' + mime + ')' }));
        return;
      }
    }
    if (typeof data['image/svg+xml'] === 'string') {
      // As an <img>, an SVG's scripts never run; a data: URL is never of this origin.
      const bytes = new TextEncoder().encode(data['image/svg+xml']);
      let bin = '';
      for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      cell.body.append(el('img', { src: 'data:image/svg+xml;base64,' + btoa(bin), alt: 'image output (SVG)' }));
      return;
    }
    if (data['text/html'] !== undefined) {
      const html = str(data['text/html']);
      const frame = htmlFrame(html, false);
      cell.body.append(frame);
      // A script could navigate its frame and carry data out through this browser: it
      // runs only when asked.
      if (/<script|\son[a-z]+\s*=|javascript:/i.test(html)) {
        const run = el('button', { type: 'button', class: 'link', text: 'Run the scripts of this output' });
        run.addEventListener('click', () => {
          frame.replaceWith(htmlFrame(html, true));
          run.remove();
        }, { once: true });
        cell.body.append(el('p', { class: 'note' }, 'Scripts in this HTML output are off. ', run));
      }
      return;
    }
    const text = data['text/plain'] !== undefined ? str(data['text/plain']) : str(data);
    const node = el('pre', { class: 'out ' + (isResult ? 'result' : 'stdout') });
    node.append(text);
    cell.body.append(node);
  }

  // htmlFrame holds user HTML: /console/frame.html is served sandboxed (an opaque origin,
  // no same-origin access) and takes the HTML by postMessage; its own policy runs the
  // HTML's scripts only with ?scripts=1.
  function htmlFrame(html, scripts) {
    const src = '/console/frame.html' + (scripts ? '?scripts=1' : '');
    const f = el('iframe', { sandbox: 'allow-scripts', src, title: scripts ? 'HTML output, scripts on' : 'HTML output', loading: 'lazy' });
    f.addEventListener('load', () => f.contentWindow.postMessage({ type: 'render', html }, '*'), { once: true });
    return f;
  }

  // A frame reports its height; only our frames are listened to, and only a number is taken.
  window.addEventListener('message', (e) => {
    for (const f of document.querySelectorAll('.cell-body iframe')) {
      if (f.contentWindow === e.source && e.data && typeof e.data.height === 'number') {
        f.style.height = Math.min(Math.max(e.data.height + 4, 40), 800) + 'px';
      }
    }
  });

  function finish(cell, ev) {
    if (cell.done) return;
    cell.done = true;
    cells.delete(cell.id);
    const next = runningCell(); // calls on a socket run in the order sent
    if (next && next.sent) setRunning(next);
    const status = ev.status || 'error';
    cell.node.dataset.state = status;
    const parts = [status];
    if (ev.execution_count) parts.push('[' + ev.execution_count + ']');
    if (typeof ev.duration_ms === 'number') parts.push(ev.duration_ms.toFixed(1) + ' ms');
    cell.state.textContent = parts.join(' · ');
    const notes = [];
    if (ev.new_session) {
      const prev = ev.previous_session;
      notes.push('A new session started with this call: no earlier state.' +
        (prev ? ' The earlier session of this id ended (' + prev.ended_reason + ') at ' + new Date(prev.ended_at).toLocaleString() + '.' : ''));
      refreshSessions();
    }
    if (['timeout', 'died'].includes(status)) {
      notes.push(ev.state_preserved ? 'The session kept its state.' : 'The session lost its state.');
    }
    if (ev.detail && status !== 'ok' && status !== 'error') notes.push(ev.detail);
    else if (ev.detail && status === 'error' && !cell.sawError) notes.push(ev.detail);
    if (ev.dropped_bytes) notes.push(humanSize(ev.dropped_bytes) + ' of output were dropped (the page read too slowly).');
    if (cell.hidden) notes.push(cell.hidden + ' more characters of output not shown.');
    if (ev.network_denials_total > (cell.denials || 0)) {
      notes.push('network: ' + ev.network_denials_total + ' denials in all (GET /api/v1/sessions/{id}/network/events lists them).');
    } else if ((cell.denials || 0) > 10) {
      notes.push('network: ' + cell.denials + ' denials in all.');
    }
    for (const n of notes) cell.body.append(el('p', { class: 'note', text: n }));
    updateButtons();
    if (status === 'ok' || status === 'error') refreshFiles();
  }

  function onEvent(ev) {
    const cell = ev.id !== undefined ? cells.get(ev.id) : undefined;
    if (!cell) {
      if (ev.type === 'error') notice((ev.ename || 'Error') + ': ' + (ev.evalue || ''), true);
      return;
    }
    setRunning(cell);
    switch (ev.type) {
      case 'stdout':
      case 'stderr':
        appendText(cell, ev.type, String(ev.text ?? ''));
        break;
      case 'display':
      case 'result':
        if (ev.data && typeof ev.data === 'object') renderData(cell, ev.data, ev.type === 'result');
        break;
      case 'error': {
        cell.sawError = true;
        cell.last = null;
        const tb = Array.isArray(ev.traceback) && ev.traceback.length
          ? ev.traceback.map(stripANSI).join('\n')
          : (ev.ename || 'Error') + ': ' + (ev.evalue || '');
        const node = el('pre', { class: 'out error' });
        node.append(tb);
        cell.body.append(node);
        break;
      }
      case 'network':
        if (ev.network) showDenial(cell, ev.network);
        break;
      case 'done':
        finish(cell, ev);
        break;
    }
  }

  // A denial of the session's network policy, under the cell that caused it.
  const denialWhy = {
    not_in_allowlist: "not in this session's allowlist", dns_denied: "not in this session's allowlist (its name was not resolved)",
    ip_literal: 'an address no allowed name resolved to', port_not_allowed: 'a port the allowlist does not name',
    private_address: 'an address no session may reach', sni_mismatch: 'the name it carried is not allowed there',
    udp_blocked: 'UDP other than DNS is blocked', connection_limit: 'too many connections at once',
    name_missing: 'allowed by a name, it carried none to check',
    packages_not_enabled: 'the package cache is not open to this session (the preset "packages")',
    package_not_allowed: "not in this host's package allowlist", hash_mismatch: "the file does not have its index's hash",
    upstream_failed: 'the package index upstream failed',
  };
  function showDenial(cell, n) {
    cell.denials = (cell.denials || 0) + 1;
    if (cell.denials > 10) return;
    const what = n.kind === 'package' ? (n.name || 'the package cache') : (n.name || n.ip || '') + (n.port ? ':' + n.port : '');
    cell.body.append(el('p', { class: 'note network', text: 'network: denied ' + n.kind + ' ' + what + ' — ' + (denialWhy[n.reason] || n.reason) }));
  }

  // The oldest unfinished call is the one running; later ones wait behind it.
  function runningCell() {
    for (const c of cells.values()) if (!c.done) return c;
    return null;
  }

  function updateButtons() {
    ui.interrupt.disabled = !runningCell();
  }

  async function run() {
    const code = ui.editor.value;
    if (!code.trim()) { notice('Nothing to run.', true); return; }
    if (!ready()) return;
    notice('');
    const id = 'c' + (++seq);
    const language = ui.language.value;
    const cell = newCell(id, code, language);
    const s = socket();
    cell.ws = s.ws;
    cells.set(id, cell);
    updateButtons();
    try {
      await s.open;
    } catch {
      finish(cell, { status: 'error', detail: 'could not open the stream' });
      return;
    }
    const msg = { type: 'execute', id, code, language };
    const t = Number(ui.timeout.value);
    if (t > 0) msg.timeout = t;
    s.ws.send(JSON.stringify(msg));
    cell.sent = true;
    if (runningCell() === cell) setRunning(cell);
  }

  function interrupt() {
    const cell = runningCell();
    if (!cell || !sock || cell.ws !== sock.ws) return;
    sock.ws.send(JSON.stringify({ type: 'interrupt', id: cell.id }));
    cell.state.textContent = 'interrupting…';
  }

  async function release() {
    if (!ready()) return;
    const user = ui.session.value;
    try {
      await api('POST', '/api/v1/release', { query: { user_uuid: user } });
      notice('Session ' + user + ' released: its worker, variables and files are gone. The next run starts it afresh.');
      showFiles(null, 'No session: run code or upload a file to start one.');
    } catch (err) {
      notice('Release failed: ' + err.message, true);
    }
  }

  ui.run.addEventListener('click', run);
  ui.interrupt.addEventListener('click', interrupt);
  ui.release.addEventListener('click', release);
  ui.clear.addEventListener('click', () => {
    for (const n of [...ui.output.children]) {
      const c = cells.get(n.dataset.id);
      if (!c || c.done) n.remove();
    }
  });

  // --- the editor: Ctrl/Cmd+Enter runs, Tab indents; Esc then Tab leaves it

  let escaped = false;
  ui.editor.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      run();
      return;
    }
    if (e.key === 'Escape') { escaped = true; return; }
    if (e.key === 'Tab' && !escaped && !e.ctrlKey && !e.altKey && !e.metaKey) {
      e.preventDefault();
      indent(e.shiftKey);
    }
    escaped = false;
  });
  ui.editor.addEventListener('blur', () => { escaped = false; });

  function indent(outdent) {
    const ed = ui.editor;
    const { selectionStart: start, selectionEnd: end, value } = ed;
    if (!outdent && start === end) {
      ed.setRangeText(INDENT, start, end, 'end');
      return;
    }
    // Whole lines of the selection move together.
    const lineStart = value.lastIndexOf('\n', start - 1) + 1;
    const block = value.slice(lineStart, end);
    const lines = block.split('\n');
    const changed = lines.map((l) => {
      if (!outdent) return INDENT + l;
      const n = l.startsWith(INDENT) ? INDENT.length : (l.match(/^[ \t]*/)[0].length > 0 ? 1 : 0);
      return l.slice(n);
    }).join('\n');
    ed.setRangeText(changed, lineStart, end, 'select');
  }

  // --- files

  let dir = ROOT;

  function showFiles(entries, note) {
    ui.fileList.replaceChildren();
    ui.path.textContent = dir;
    ui.filesNote.textContent = note || '';
    if (!entries) return;
    if (dir !== ROOT) {
      const up = dir.replace(/[^/]+\/$/, '');
      ui.fileList.append(el('tr', {}, el('td', {}, el('button', { type: 'button', class: 'link', text: '..', onclick: () => { dir = up; refreshFiles(); } })), el('td'), el('td')));
    }
    const isDirectory = (e) => (e.type === 'directory' ? 1 : 0);
    entries.sort((a, b) => isDirectory(b) - isDirectory(a) || a.name.localeCompare(b.name));
    for (const e of entries) {
      const isDir = e.type === 'directory';
      const name = isDir
        ? el('button', { type: 'button', class: 'link', text: e.name + '/', onclick: () => { dir = dir + e.name + '/'; refreshFiles(); } })
        : el('span', { text: e.name });
      const actions = el('td');
      if (e.type === 'file') {
        actions.append(el('button', { type: 'button', class: 'link', text: 'Download', 'aria-label': 'Download ' + e.name, onclick: () => download(e.name) }));
      }
      if (e.type !== 'directory') {
        actions.append(el('button', { type: 'button', class: 'link', text: 'Delete', 'aria-label': 'Delete ' + e.name, onclick: () => remove(e.name) }));
      }
      ui.fileList.append(el('tr', { 'data-name': e.name }, el('td', {}, name), el('td', { class: 'num', text: isDir ? '' : humanSize(e.size) }), actions));
    }
  }

  let listing = 0;
  async function refreshFiles() {
    if (!ui.token.value || !USER_RE.test(ui.session.value)) {
      showFiles(null, 'Enter the token to see the session\'s files.');
      return;
    }
    const mine = ++listing; // an older answer arriving late must not replace a newer one
    try {
      const resp = await api('GET', '/api/v1/files/list', { query: { user_uuid: ui.session.value, path: dir } });
      const page = await resp.json();
      if (mine !== listing) return;
      showFiles(page.entries || [], page.truncated ? 'Only the first ' + page.entries.length + ' entries are shown.' : (page.entries.length ? '' : 'No files yet.'));
    } catch (err) {
      if (mine !== listing) return;
      if (err.status === 404 && dir === ROOT) showFiles(null, 'No session yet: run code or upload a file to start one.');
      else if (err.status === 404) { dir = ROOT; refreshFiles(); }
      else showFiles(null, err.message);
    }
  }

  async function upload(files) {
    if (!ready()) return;
    for (const f of files) {
      try {
        ui.filesNote.textContent = 'Uploading ' + f.name + '…';
        await api('PUT', '/api/v1/files/content', { query: { user_uuid: ui.session.value, path: dir + f.name }, body: f });
      } catch (err) {
        notice('Upload of ' + f.name + ' failed: ' + err.message, true);
      }
    }
    refreshFiles();
  }

  async function download(name) {
    try {
      const resp = await api('GET', '/api/v1/files/content', { query: { user_uuid: ui.session.value, path: dir + name } });
      const url = URL.createObjectURL(await resp.blob());
      const a = el('a', { href: url, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      notice('Download of ' + name + ' failed: ' + err.message, true);
    }
  }

  async function remove(name) {
    if (!confirm('Delete ' + dir + name + '?')) return;
    try {
      await api('DELETE', '/api/v1/files', { query: { user_uuid: ui.session.value }, json: { files: [{ path: dir, name }] } });
    } catch (err) {
      notice('Delete of ' + name + ' failed: ' + err.message, true);
    }
    refreshFiles();
  }

  ui.refresh.addEventListener('click', refreshFiles);
  ui.upload.addEventListener('change', () => { upload([...ui.upload.files]); ui.upload.value = ''; });
  ui.drop.addEventListener('dragover', (e) => { e.preventDefault(); ui.drop.classList.add('over'); });
  ui.drop.addEventListener('dragleave', () => ui.drop.classList.remove('over'));
  ui.drop.addEventListener('drop', (e) => {
    e.preventDefault();
    ui.drop.classList.remove('over');
    if (e.dataTransfer && e.dataTransfer.files.length) upload([...e.dataTransfer.files]);
  });

  // --- sessions: the key's, with their metadata and time left; the current one's usage

  function timeLeft(iso) {
    if (!iso) return '—';
    let s = Math.max(0, Math.round((Date.parse(iso) - Date.now()) / 1000));
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    return (h ? h + ' h ' : '') + (h || m ? m + ' min ' : '') + (h ? '' : s + ' s');
  }

  // --- environments: the choice for new sessions; unavailable ones say why

  async function refreshEnvironments() {
    if (!ui.token.value) return;
    try {
      const envs = await (await api('GET', '/api/v1/environments')).json();
      const chosen = ui.environment.value;
      ui.environment.replaceChildren(...envs.map((e) => {
        const o = el('option', {
          value: e.name, text: e.name + (e.seed ? ' (seeded)' : '') + (e.available ? '' : ' — unavailable'),
          title: e.available ? e.languages.join(', ') + ' · ' + e.limits.memory_mb + ' MB' : e.unavailable_reason,
        });
        o.disabled = !e.available;
        return o;
      }));
      if (envs.some((e) => e.name === chosen && e.available)) ui.environment.value = chosen;
    } catch (err) {
      ui.environment.title = 'environments: ' + err.message;
    }
  }

  function showUsage(cur) {
    if (!cur) { ui.usage.textContent = 'Session ' + ui.session.value + ': not started yet.'; return; }
    if (cur.state === 'ended') {
      ui.usage.textContent = 'Session ' + cur.session_id + ' ended (' + cur.ended_reason + ') at ' + new Date(cur.ended_at).toLocaleString() + '.';
      return;
    }
    const u = cur.usage;
    const l = cur.limits;
    ui.usage.textContent = cur.session_id + (cur.environment && cur.environment !== 'default' ? ' (' + cur.environment + ')' : '') + ': ' + l.cpu + ' CPU · ' + l.memory_mb + ' MB · ' + l.disk_mb + ' MB disk' +
      (u ? ' — used ' + u.cpu_seconds.toFixed(1) + ' s CPU · ' + humanSize(u.memory_bytes) + ' (peak ' + humanSize(u.memory_peak_bytes) +
        ') · ' + humanSize(u.disk_used_bytes) + ' of ' + humanSize(u.disk_total_bytes) + ' · ' + u.processes + ' processes' : '');
  }

  function showSessions(list) {
    ui.sessionList.replaceChildren();
    for (const s of list) {
      const meta = [s.environment && s.environment !== 'default' ? s.environment : null,
        ...Object.entries(s.metadata || {}).map(([k, v]) => k + '=' + v)].filter(Boolean).join(' ');
      const name = el('td', {}, el('button', { type: 'button', class: 'link', text: s.session_id, title: 'Use this session', onclick: () => switchSession(s.session_id) }),
        meta ? el('span', { class: 'meta', text: meta }) : null);
      const end = el('button', { type: 'button', class: 'link', text: 'End', 'aria-label': 'End ' + s.session_id, onclick: () => endSession(s.session_id) });
      const snap = el('button', { type: 'button', class: 'link', text: 'Snapshot', 'aria-label': 'Snapshot ' + s.session_id,
        title: "Save its files now (not its variables); it keeps running", onclick: () => snapshotSession(s.session_id) });
      const fork = el('button', { type: 'button', class: 'link', text: 'Fork', 'aria-label': 'Fork ' + s.session_id,
        title: 'A new session with a copy of its files as they are now', onclick: () => forkSession(s.session_id) });
      ui.sessionList.append(el('tr', { 'data-session': s.session_id, class: s.session_id === ui.session.value ? 'current' : '' },
        name, el('td', { class: 'left', text: timeLeft(s.expires_at) }), el('td', {}, snap, ' ', fork, ' ', end)));
    }
    ui.sessionsNote.textContent = list.length ? '' : 'No running session yet.';
  }

  let sessionsAsked = 0;
  async function refreshSessions() {
    if (!ui.token.value || document.hidden) return;
    const mine = ++sessionsAsked;
    try {
      const list = await (await api('GET', '/api/v1/sessions', { query: { limit: '100' } })).json();
      let cur = null;
      if (USER_RE.test(ui.session.value)) {
        try {
          cur = await (await api('GET', '/api/v1/sessions/' + encodeURIComponent(ui.session.value))).json();
        } catch (err) {
          if (err.status !== 404) throw err;
        }
      }
      if (mine !== sessionsAsked) return;
      showSessions(list.sessions || []);
      showUsage(cur);
    } catch (err) {
      if (mine === sessionsAsked) ui.sessionsNote.textContent = err.message;
    }
  }

  async function snapshotSession(id) {
    try {
      const s = await (await api('POST', '/api/v1/sessions/' + encodeURIComponent(id) + '/snapshots', { json: {} })).json();
      notice('Snapshot ' + s.snapshot_id + ' of ' + id + ': ' + s.stored_mb.toFixed(1) + ' MB of files (not variables); its disk was frozen ' +
        s.freeze_ms.toFixed(0) + ' ms. A session made with from_snapshot "' + s.snapshot_id + '" starts on a copy.');
    } catch (err) {
      notice('Snapshot of ' + id + ' failed: ' + err.message, true);
    }
  }

  async function forkSession(id) {
    const fork = (id.slice(0, 100) + '-fork-' + Math.random().toString(36).slice(2, 8));
    try {
      const f = await (await api('POST', '/api/v1/sessions/' + encodeURIComponent(id) + '/fork', { json: { session_ids: [fork] } })).json();
      switchSession(f.sessions[0].session_id);
      notice('Forked ' + id + ' into ' + f.sessions[0].session_id + ' (a copy of its files; variables start empty).');
    } catch (err) {
      notice('Fork of ' + id + ' failed: ' + err.message, true);
      refreshSessions();
    }
  }

  async function endSession(id) {
    if (!confirm('End session ' + id + '? Its variables and files are destroyed.')) return;
    try {
      await api('DELETE', '/api/v1/sessions/' + encodeURIComponent(id));
      if (id === ui.session.value) closeSocket();
    } catch (err) {
      notice('Ending ' + id + ' failed: ' + err.message, true);
    }
    refreshSessions();
    refreshFiles();
  }

  ui.refreshSessions.addEventListener('click', refreshSessions);

  // --- pool status (admin keys), while the tab is visible

  async function refreshPool() {
    if (!ui.token.value || document.hidden) return;
    try {
      const s = await (await api('GET', '/api/v1/status')).json();
      ui.pool.textContent = 'pool: ' + s.busy_workers + ' busy · ' + s.idle_workers + ' idle · ' + s.creating_workers +
        ' starting · ' + s.total_workers + '/' + s.max_total_workers + (s.is_initializing ? ' · initializing' : '');
    } catch (err) {
      ui.pool.textContent = err.status === 403 ? 'pool: for admin keys' : 'pool: ' + err.message;
    }
  }
  setInterval(() => { refreshPool(); refreshSessions(); }, 5000);
  document.addEventListener('visibilitychange', () => { refreshPool(); refreshSessions(); });

  function refreshAll() {
    refreshEnvironments();
    refreshPool();
    refreshFiles();
    refreshSessions();
  }

  updateButtons();
  refreshAll();
  if (!ui.token.value) {
    notice('Enter the API token to start: `codebox token` on the host prints it.');
    ui.token.focus();
  } else {
    ui.editor.focus();
  }
})();
