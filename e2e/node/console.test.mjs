// The web console in a real browser: Debian's chromium, driven by playwright-core from the
// npm registry. Run by e2e/node_test.go (TestConsole) against a live codeboxd:
// CODEBOX_URL, CODEBOX_TOKEN, CODEBOX_SESSION, CODEBOX_ARTIFACTS, CHROMIUM.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import fs from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';

const URL_ = process.env.CODEBOX_URL;
const TOKEN = process.env.CODEBOX_TOKEN;
const SESSION = process.env.CODEBOX_SESSION;
const ART = process.env.CODEBOX_ARTIFACTS;
for (const [k, v] of Object.entries({ CODEBOX_URL: URL_, CODEBOX_TOKEN: TOKEN, CODEBOX_SESSION: SESSION, CODEBOX_ARTIFACTS: ART })) {
  if (!v) throw new Error(k + ' is not set');
}
const WAIT = 30_000; // a step's limit; the first call may wait for a worker

let browser, context, page;
const problems = []; // page errors and CSP violations, checked at the end

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // As root, chromium's own sandbox cannot start; the page's isolation under test is the
    // web platform's (origins, iframe sandbox, CSP), which this flag does not touch.
    args: ['--no-sandbox'],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 860 }, acceptDownloads: true });
  page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('console', (m) => {
    // The HTML output's frame refuses a tenant's script on purpose (see its test); the
    // console itself must refuse nothing of its own.
    const where = m.location().url;
    if (where.includes('/console/frame.html') || where === 'about:srcdoc') return;
    if (m.type() === 'error' && /Content Security Policy|Refused/.test(m.text())) problems.push('console: ' + m.text() + ' at ' + m.location().url);
  });
});

after(async () => {
  await browser?.close();
});

const editor = () => page.locator('#editor');
const newestCell = () => page.locator('.cell').last();

// run puts code in the editor, runs it with Ctrl+Enter and waits for the cell to end in
// one of the states given; it returns the cell.
async function run(code, states = ['ok']) {
  await editor().fill(code);
  const before = await page.locator('.cell').count();
  await editor().press('Control+Enter');
  await page.waitForFunction((n) => document.querySelectorAll('.cell').length > n, before);
  const cell = newestCell();
  await page.waitForFunction((el) => !['queued', 'running'].includes(el.dataset.state), await cell.elementHandle());
  const state = await cell.getAttribute('data-state');
  assert.ok(states.includes(state), `cell ended ${state}, want ${states}: ${await cell.innerText()}`);
  return cell;
}

test('first load: asks for the token, strict CSP, nothing external', async () => {
  const external = [];
  page.on('request', (r) => { if (!r.url().startsWith(URL_) && !r.url().startsWith('data:') && !r.url().startsWith('blob:')) external.push(r.url()); });
  const resp = await page.goto(URL_ + '/');
  assert.equal(resp.status(), 200);
  const csp = resp.headers()['content-security-policy'];
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  await page.getByText('Enter the API token to start').waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.id), 'token');
  await page.screenshot({ path: path.join(ART, 'console-first-load.png'), fullPage: true });
  assert.deepEqual(external, []);
});

test('token and session: kept in this tab only, pool status shown', async () => {
  await page.getByLabel('Token').fill(TOKEN);
  await page.getByLabel('Token').press('Tab');
  await page.getByLabel('Session', { exact: true }).fill(SESSION);
  await page.getByLabel('Session', { exact: true }).press('Tab');
  await page.locator('#pool').filter({ hasText: /\d+ busy · \d+ idle · \d+ starting · \d+\/10/ }).waitFor();
  const stored = await page.evaluate(() => ({ s: sessionStorage.getItem('codebox.token'), l: localStorage.length, c: document.cookie }));
  assert.deepEqual(stored, { s: TOKEN, l: 0, c: '' });
});

test('runs code with Ctrl+Enter; state persists', async () => {
  let cell = await run('a = 100\nprint("hello", a)');
  assert.match(await cell.locator('.out.stdout').innerText(), /hello 100/);
  cell = await run('a * 5');
  assert.equal(await cell.locator('.out.result').innerText(), '500');
  assert.match(await cell.locator('.state').innerText(), /ok · \[2\]/);
});

test('output streams in before the cell ends', async () => {
  await editor().fill('import time\nfor i in range(5):\n    print("tick", i, flush=True)\n    time.sleep(0.4)');
  await editor().press('Control+Enter');
  const cell = newestCell();
  await cell.locator('.out.stdout', { hasText: 'tick 0' }).waitFor();
  const first = Date.now();
  assert.equal(await cell.getAttribute('data-state'), 'running', 'the first line came after the cell ended');
  await page.waitForFunction((el) => el.dataset.state === 'ok', await cell.elementHandle());
  const gap = Date.now() - first;
  assert.ok(gap > 800, `the first line arrived only ${gap} ms before the end`);
  assert.equal(await cell.locator('.out.stdout').innerText(), [0, 1, 2, 3, 4].map((i) => `tick ${i}\n`).join(''));
});

test('Tab indents in the editor; Esc then Tab leaves it', async () => {
  await editor().fill('for i in range(2):');
  await editor().press('End');
  await editor().press('Enter');
  await editor().press('Tab');
  assert.equal(await editor().inputValue(), 'for i in range(2):\n    ');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'editor');
  await editor().pressSequentially('print(i * 10)');
  await editor().press('Control+Enter');
  const cell = newestCell();
  await page.waitForFunction((el) => el.dataset.state === 'ok', await cell.elementHandle());
  assert.equal(await cell.locator('.out.stdout').innerText(), '0\n10\n');
  await editor().press('Escape');
  await editor().press('Tab');
  assert.notEqual(await page.evaluate(() => document.activeElement.id), 'editor');
});

test('a matplotlib figure shows inline', async () => {
  const cell = await run('import matplotlib.pyplot as plt\nplt.plot([1, 3, 2, 4])\nplt.title("inline")\nplt.show()');
  const img = cell.locator('img');
  assert.match(await img.getAttribute('src'), /^data:image\/png;base64,iVBOR/);
  const width = await img.evaluate((el) => el.complete && el.naturalWidth);
  assert.ok(width > 100, `the image did not decode (width ${width})`);
});

test('a traceback shows, and the session keeps its state', async () => {
  let cell = await run('def f():\n    return 1 / 0\nf()', ['error']);
  const tb = await cell.locator('.out.error').innerText();
  assert.match(tb, /ZeroDivisionError/);
  assert.match(tb, /return 1 \/ 0/);
  assert.doesNotMatch(tb, /\x1b\[/);
  cell = await run('print(a)');
  assert.equal(await cell.locator('.out.stdout').innerText(), '100\n');
});

test('HTML output runs in a sandbox: no storage, no parent', async () => {
  const html = `<p id="probe">script did not run</p><script>
    const r = [];
    try { sessionStorage.getItem('codebox.token'); r.push('storage:read'); } catch (e) { r.push('storage:blocked'); }
    try { r.push('parent:read:' + parent.document.title); } catch (e) { r.push('parent:blocked'); }
    try { r.push('cookie:' + document.cookie); } catch (e) { r.push('cookie:blocked'); }
    document.getElementById('probe').textContent = r.join(' ');
  </script>`;
  const cell = await run(`from IPython.display import HTML, display\ndisplay(HTML(${JSON.stringify(html)}))`);
  // By default the HTML shows, its scripts do not run.
  const staticProbe = cell.frameLocator('iframe').frameLocator('iframe').locator('#probe');
  await staticProbe.waitFor(); // written at once with the script after it, which would have run
  assert.equal(await staticProbe.innerText(), 'script did not run');
  // Asked, they run, in an opaque origin: no storage, no parent, no cookie.
  await cell.getByRole('button', { name: 'Run the scripts of this output' }).click();
  const probe = cell.frameLocator('iframe[title="HTML output, scripts on"]').locator('#probe');
  await probe.filter({ hasNotText: 'did not run' }).waitFor();
  assert.equal(await probe.innerText(), 'storage:blocked parent:blocked cookie:blocked');
  assert.equal(await cell.locator('iframe').getAttribute('sandbox'), 'allow-scripts');
  // The frame is of an opaque origin even when opened on its own.
  for (const q of ['', '?scripts=1']) {
    const resp = await page.request.get(URL_ + '/console/frame.html' + q);
    assert.match(resp.headers()['content-security-policy'], /^sandbox allow-scripts;/);
  }
});

test('HTML output cannot reach out: no refresh, prefetch, preconnect or base', async () => {
  // A server of this test's counts every connection: nothing of a tenant's HTML may make
  // the viewer's browser connect anywhere (a meta refresh or a link to a host carries
  // data out even where CSP blocks fetches).
  const hits = [];
  const probe = http.createServer((req, res) => { hits.push(req.url); res.end('x'); });
  probe.on('connection', () => hits.push('(connection)'));
  await new Promise((r) => probe.listen(0, '127.0.0.1', r));
  const at = `http://127.0.0.1:${probe.address().port}`;
  try {
    const html = `<head><base href="${at}/base/"><meta http-equiv="refresh" content="0;url=${at}/refresh?secret=1">
      <link rel="preconnect" href="${at}"><link rel="dns-prefetch" href="${at}"><link rel="prefetch" href="${at}/prefetch">
      <link rel="stylesheet" href="${at}/style.css"><link rel="preload" as="image" href="${at}/preload.png"></head>
      <body><p id="shown">tenant html</p><a id="rel" href="relative">a link</a><img src="${at}/img.png"></body>`;
    const cell = await run(`from IPython.display import HTML, display\ndisplay(HTML(${JSON.stringify(html)}))`);
    const frame = cell.frameLocator('iframe').frameLocator('iframe');
    await frame.locator('#shown').waitFor();
    assert.equal(await frame.locator('#shown').innerText(), 'tenant html');
    await page.waitForTimeout(2000); // a refresh or a prefetch would have gone by now
    assert.deepEqual(hits, [], 'the HTML made the browser connect: ' + hits.join(', '));
    assert.equal(await frame.locator('#shown').count(), 1, 'the frame navigated away');
  } finally {
    probe.close();
  }
});

test('interrupt stops a loop; the session keeps its state', async () => {
  await editor().fill('print("looping", flush=True)\nwhile True:\n    pass');
  await editor().press('Control+Enter');
  const cell = newestCell();
  // Once the code prints, it runs: a signal that lands before the code starts is missed.
  await cell.locator('.out.stdout', { hasText: 'looping' }).waitFor();
  await page.getByRole('button', { name: 'Interrupt' }).click();
  await page.waitForFunction((el) => !['queued', 'running'].includes(el.dataset.state), await cell.elementHandle());
  assert.equal(await cell.getAttribute('data-state'), 'interrupted');
  assert.match(await cell.locator('.out.error').innerText(), /KeyboardInterrupt/);
  assert.match(await cell.locator('.state').innerText(), /^interrupted/);
  assert.ok(await page.getByRole('button', { name: 'Interrupt' }).isDisabled());
  const next = await run('print(a + 1)');
  assert.equal(await next.locator('.out.stdout').innerText(), '101\n');
});

test('files: upload by picker and by drop, read from Python, download, delete', async () => {
  await page.locator('#upload').setInputFiles({ name: 'hello.txt', mimeType: 'text/plain', buffer: Buffer.from('hi from disk') });
  const row = page.locator('#file-list tr[data-name="hello.txt"]');
  await row.waitFor();
  assert.equal(await row.locator('.num').innerText(), '12 B');
  let cell = await run('print(open("hello.txt").read())');
  assert.equal(await cell.locator('.out.stdout').innerText(), 'hi from disk\n');

  const dt = await page.evaluateHandle(() => {
    const d = new DataTransfer();
    d.items.add(new File(['x,y\n1,2\n'], 'dropped.csv', { type: 'text/csv' }));
    return d;
  });
  await page.locator('#drop').dispatchEvent('drop', { dataTransfer: dt });
  await page.locator('#file-list tr[data-name="dropped.csv"]').waitFor();
  cell = await run('import pandas as pd\nprint(pd.read_csv("dropped.csv").y.sum())');
  assert.equal(await cell.locator('.out.stdout').innerText(), '2\n');

  await run('with open("out.csv", "w") as f:\n    f.write("n\\n" + "\\n".join(str(i) for i in range(1000)))');
  const out = page.locator('#file-list tr[data-name="out.csv"]');
  await out.waitFor(); // the list refreshes when a cell ends
  const [download] = await Promise.all([page.waitForEvent('download'), out.getByRole('button', { name: 'Download out.csv' }).click()]);
  assert.equal(download.suggestedFilename(), 'out.csv');
  const got = await fs.readFile(await download.path(), 'utf8');
  assert.equal(got, 'n\n' + Array.from({ length: 1000 }, (_, i) => i).join('\n'));

  page.once('dialog', (d) => d.accept());
  await row.getByRole('button', { name: 'Delete hello.txt' }).click();
  await row.waitFor({ state: 'detached' });
  cell = await run('import os\nprint(os.path.exists("hello.txt"), os.path.exists("out.csv"))');
  assert.equal(await cell.locator('.out.stdout').innerText(), 'False True\n');
});

test('languages: JavaScript, TypeScript and bash in the same session', async () => {
  await page.getByLabel('Language').selectOption('javascript');
  let cell = await run('let x = 2;\nconsole.log("js");\nx * 21');
  assert.equal(await cell.locator('.out.result').innerText(), '42');
  await page.getByLabel('Language').selectOption('typescript');
  cell = await run('const n: number = x + 1;\nn');
  assert.equal(await cell.locator('.out.result').innerText(), '3');
  await page.getByLabel('Language').selectOption('bash');
  cell = await run('cd /tmp && echo $((6 * 7))');
  assert.equal(await cell.locator('.out.stdout').innerText(), '42\n');
  cell = await run('pwd; false', ['error']);
  assert.match(await cell.locator('.out.error').innerText(), /ExitStatus/);
  await page.getByLabel('Language').selectOption('python');
});

test('a screenshot for the README', async () => {
  await page.getByRole('button', { name: 'Clear output' }).click();
  assert.equal(await page.locator('.cell').count(), 0);
  await run('import numpy as np, matplotlib.pyplot as plt\nx = np.linspace(0, 2 * np.pi, 200)\n' +
    'plt.figure(figsize=(6, 2.6))\nplt.plot(x, np.sin(x), label="sin")\nplt.plot(x, np.cos(x), label="cos")\nplt.legend()\nplt.title("Sine and cosine")\nplt.show()');
  await run('import pandas as pd\ndf = pd.DataFrame({"x": [1, 2, 3], "y": [10, 20, 30]})\nprint(df.describe().loc[["mean", "max"]])\ndf.y.sum()');
  await page.screenshot({ path: path.join(ART, 'console.png'), fullPage: true });
});

test('release: the session and its state are gone; the next run starts afresh', async () => {
  await page.getByRole('button', { name: 'Release' }).click();
  await page.locator('#notice', { hasText: 'released' }).waitFor();
  const cell = await run('print(a)', ['error']);
  assert.match(await cell.locator('.out.error').innerText(), /NameError/);
  assert.match(await cell.innerText(), /A new session started/);
  await page.getByRole('button', { name: 'Release' }).click();
});

test('the seed\'s older API from a page of another origin (CORS preflight included)', async () => {
  // A page served from another origin than the daemon's, as the seed's test page is.
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end('<!doctype html><title>legacy client</title><p>legacy client</p>');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    const origin = `http://localhost:${server.address().port}`;
    const legacy = await context.newPage();
    await legacy.goto(origin + '/');
    const user = SESSION + '-legacy';
    const got = await legacy.evaluate(async ({ url, token, user }) => {
      // X-Auth-Token and a JSON body make every call preflighted.
      const headers = { 'X-Auth-Token': token, 'Content-Type': 'application/json' };
      const post = async (p, body) => {
        const r = await fetch(url + p, { method: 'POST', headers, body: JSON.stringify(body) });
        return { status: r.status, body: await r.json() };
      };
      const a = await post('/execute', { user_uuid: user, code: 'a = 100' });
      const b = await post('/execute', { user_uuid: user, code: 'b = a * 5\nprint(b)' });
      const status = await fetch(url + '/status', { headers: { 'X-Auth-Token': token } }).then((r) => r.json());
      const rel = await post('/release', { user_uuid: user });
      return { a, b, status, rel };
    }, { url: URL_, token: TOKEN, user });
    await legacy.close();
    assert.equal(got.a.status, 200);
    assert.equal(got.a.body.new_session, true);
    assert.equal(got.b.status, 200);
    assert.equal(got.b.body.result_text, '500\n');
    assert.deepEqual(Object.keys(got.status).sort(), ['busy_workers', 'idle_workers_in_pool', 'is_initializing', 'total_workers']);
    assert.deepEqual(got.rel, { status: 200, body: { status: 'ok', detail: `Worker for user ${user} has been released.` } });

    // The preflight itself, as a browser sends it.
    const pre = await fetch(URL_ + '/execute', {
      method: 'OPTIONS',
      headers: { Origin: origin, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type,x-auth-token' },
    });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers.get('access-control-allow-origin'), origin);
    assert.match(pre.headers.get('access-control-allow-headers'), /X-Auth-Token/i);
  } finally {
    server.close();
  }
});

test('sessions panel: metadata and time left, the current session\'s usage, End ends it', async () => {
  const id = 'console-made-' + Date.now();
  const made = await fetch(URL_ + '/api/v1/sessions', {
    method: 'POST', headers: { 'X-Auth-Token': TOKEN, 'Content-Type': 'application/json' },
    body: JSON.stringify({ session_id: id, timeout: 3600, metadata: { team: 'console' }, limits: { memory_mb: 300 } }),
  });
  assert.equal(made.status, 201, await made.text());
  await page.locator('#refresh-sessions').click();
  const row = page.locator(`#session-list tr[data-session="${id}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /team=console/);
  assert.match(await row.locator('td.left').innerText(), /\d+ min/);
  await row.getByRole('button', { name: id, exact: true }).click();
  assert.equal(await page.getByLabel('Session', { exact: true }).inputValue(), id);
  await page.locator('#usage').filter({ hasText: /300 MB · \d+ MB disk — used .* processes/ }).waitFor();
  await run('print("in the made session")');
  // Snapshot and Fork: the fork holds the file, and becomes the current session.
  await run('open("/sandbox/console.txt", "w").write("from the console")');
  await row.getByRole('button', { name: 'Snapshot ' + id }).click();
  await page.locator('#notice').filter({ hasText: /^Snapshot snap-\w+ of console-made-\d+: .* frozen \d+ ms/ }).waitFor();
  await row.getByRole('button', { name: 'Fork ' + id }).click();
  await page.locator('#notice').filter({ hasText: /^Forked console-made-\d+ into console-made-\d+-fork-/ }).waitFor();
  assert.match(await page.getByLabel('Session', { exact: true }).inputValue(), /-fork-/);
  const forked = await run('print(open("/sandbox/console.txt").read())');
  assert.match(await forked.innerText(), /from the console/);
  await row.getByRole('button', { name: id, exact: true }).click();
  page.once('dialog', (d) => d.accept());
  await row.getByRole('button', { name: 'End ' + id }).click();
  await row.waitFor({ state: 'detached' });
  await page.locator('#usage').filter({ hasText: 'ended (released)' }).waitFor();
  const cell = await run('1 + 1');
  assert.match(await cell.innerText(), /earlier session of this id ended \(released\)/);
});

test('environments: a new session in a seeded environment finds its seed', async () => {
  const select = page.getByLabel('in', { exact: true });
  await page.locator('#environment option[value="seeded-console"]').waitFor({ state: 'attached' });
  assert.deepEqual(await select.locator('option').evaluateAll((os) => os.map((o) => [o.value, o.textContent, o.disabled])),
    [['default', 'default', false], ['seeded-console', 'seeded-console (seeded)', false]]);
  await select.selectOption('seeded-console');
  const before = await page.getByLabel('Session', { exact: true }).inputValue();
  await page.locator('#new-session').click();
  await page.locator('#notice').filter({ hasText: /runs in seeded-console/ }).waitFor();
  const id = await page.getByLabel('Session', { exact: true }).inputValue();
  assert.notEqual(id, before);
  const cell = await run('print(seeded_json.dumps({"from": "seed"}))');
  assert.match(await cell.innerText(), /\{"from": "seed"\}/);
  await page.locator('#refresh-sessions').click();
  const row = page.locator(`#session-list tr[data-session="${id}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /seeded-console/);
  await page.locator('#usage').filter({ hasText: `${id} (seeded-console):` }).waitFor();
  await select.selectOption('default');
});

test('network: a denial shows under the cell that caused it', async () => {
  const cell = await run("import socket\ntry:\n    socket.gethostbyname('blocked.test')\nexcept OSError as e:\n    print(type(e).__name__)");
  await cell.locator('.note.network').filter({ hasText: "network: denied dns blocked.test — not in this session's allowlist" }).waitFor();
  assert.match(await cell.innerText(), /gaierror/);
});

test('no page errors and no CSP violations', () => {
  assert.deepEqual(problems, []);
});
