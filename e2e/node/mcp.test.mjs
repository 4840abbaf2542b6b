// codeboxd's /mcp driven by the official MCP TypeScript SDK (from the npm registry) over
// Streamable HTTP, as an agent would. Run by e2e/mcp_test.go (TestMCPTypeScriptSDK):
// CODEBOX_URL, CODEBOX_TOKEN.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const URL_ = process.env.CODEBOX_URL;
const TOKEN = process.env.CODEBOX_TOKEN;
if (!URL_ || !TOKEN) throw new Error('CODEBOX_URL and CODEBOX_TOKEN must be set');

async function connect(token) {
  const client = new Client({ name: 'codebox-e2e-ts', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(URL_ + '/mcp'), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  await client.connect(transport);
  return { client, transport };
}

const text = (r) => r.content.filter((c) => c.type === 'text').map((c) => c.text).join('\n');

let c;
after(async () => {
  if (c) {
    await c.client.callTool({ name: 'release', arguments: {} }).catch(() => {});
    await c.transport.terminateSession().catch(() => {});
    await c.client.close();
  }
});

test('a wrong token is refused', async () => {
  await assert.rejects(connect('not-the-token'), (err) => err.code === 401 && /invalid token/.test(err.message));
});

test('lists the tools with descriptions and schemas', async () => {
  c = await connect(TOKEN);
  const { tools } = await c.client.listTools();
  const names = tools.map((t) => t.name).sort();
  assert.deepEqual(names, ['create_session', 'list_environments', 'list_files', 'read_file', 'release', 'run_code', 'snapshot', 'write_file']);
  const run = tools.find((t) => t.name === 'run_code');
  assert.ok(run.description.length > 40);
  assert.deepEqual(run.inputSchema.required, ['code']);
  assert.deepEqual(run.inputSchema.properties.language.enum, ['python', 'javascript', 'typescript', 'bash']);
  assert.equal(c.client.getServerVersion().name, 'codebox');
});

test('create_session makes a sandbox with its own limits, then run_code uses it', async () => {
  const id = 'ts-shaped-' + Date.now();
  let r = await c.client.callTool({ name: 'create_session', arguments: { session: id, memory_mb: 300, timeout: 600 } });
  assert.ok(!r.isError, text(r));
  assert.match(text(r), /in environment default: .*300 MB memory/);
  r = await c.client.callTool({ name: 'run_code', arguments: { code: 'print("in", 6 * 7)', session: id } });
  assert.equal(text(r).trim(), 'in 42');
  r = await c.client.callTool({ name: 'create_session', arguments: { session: id, memory_mb: 99999999 } });
  assert.ok(r.isError && /is running|memory_mb/.test(text(r)), text(r));
  await c.client.callTool({ name: 'release', arguments: { session: id } });
});

test('state persists across run_code calls', async () => {
  let r = await c.client.callTool({ name: 'run_code', arguments: { code: 'x = 41' } });
  assert.ok(!r.isError, text(r));
  r = await c.client.callTool({ name: 'run_code', arguments: { code: 'x + 1' } });
  assert.equal(text(r).trim(), '42');
  r = await c.client.callTool({ name: 'run_code', arguments: { code: 'let y = 2;\ny * 21', language: 'javascript' } });
  assert.equal(text(r).trim(), '42');
});

test('a plot is image content', async () => {
  const r = await c.client.callTool({ name: 'run_code', arguments: { code: 'import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()' } });
  const img = r.content.find((x) => x.type === 'image');
  assert.ok(img, JSON.stringify(r.content).slice(0, 200));
  assert.equal(img.mimeType, 'image/png');
  assert.equal(Buffer.from(img.data, 'base64').subarray(1, 4).toString(), 'PNG');
});

test('an exception is a tool error with its traceback', async () => {
  const r = await c.client.callTool({ name: 'run_code', arguments: { code: 'raise ValueError("nope")' } });
  assert.equal(r.isError, true);
  assert.match(text(r), /ValueError: nope/);
  assert.match(text(r), /Traceback|Cell In/);
});

test('progress notifications arrive while a cell runs', async () => {
  const seen = [];
  const start = Date.now();
  const r = await c.client.callTool(
    { name: 'run_code', arguments: { code: 'import time\nfor i in range(3):\n    print("tick", i, flush=True)\n    time.sleep(0.5)' } },
    undefined,
    { onprogress: (p) => seen.push({ at: Date.now() - start, message: p.message }) },
  );
  assert.ok(!r.isError, text(r));
  assert.ok(seen.length >= 2, JSON.stringify(seen));
  assert.match(seen[0].message, /tick 0/);
  assert.ok(seen[0].at < 1000, `first progress after ${seen[0].at} ms`);
});

test('files: write, list, read', async () => {
  let r = await c.client.callTool({ name: 'write_file', arguments: { path: 'notes/a.txt', content: 'hello' } });
  assert.match(text(r), /wrote 5 bytes to \/sandbox\/notes\/a.txt/);
  r = await c.client.callTool({ name: 'list_files', arguments: { path: '/sandbox/notes/' } });
  assert.match(text(r), /a\.txt\t5 bytes/);
  r = await c.client.callTool({ name: 'read_file', arguments: { path: '/sandbox/notes/a.txt' } });
  assert.equal(text(r), 'hello');
  r = await c.client.callTool({ name: 'read_file', arguments: { path: '../../etc/passwd' } });
  assert.equal(r.isError, true);
});

test('release ends the sandbox', async () => {
  let r = await c.client.callTool({ name: 'release', arguments: {} });
  assert.ok(!r.isError);
  r = await c.client.callTool({ name: 'run_code', arguments: { code: 'print(x)' } });
  assert.equal(r.isError, true);
  assert.match(text(r), /NameError/);
});
