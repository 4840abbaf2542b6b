// The JavaScript and TypeScript interpreter of a codebox session, started by the agent
// (codebox_agent.py) on the session's first call in either language. One context for both:
// a TypeScript cell is transpiled, then runs like a JavaScript one.
//
// Requests arrive on the fd named by the first argument, one JSON line each ({"nonce",
// "code", "typescript"}); each is answered on the fd named by the second with one JSON line
// that starts with its nonce ({"nonce", "status": "ok", "value"} or {"nonce", "status":
// "error", "ename", "evalue", "traceback"}). What the cell prints goes to fds 1 and 2,
// which the agent reads.
//
// A cell's state is its context's global object: its top-level declarations become
// assignments to globals (as the Node REPL does for top-level await), which lets `let`, `const`,
// functions and classes outlive their cell, lets a cell declare a name again, and lets a
// cell await at top level.
"use strict";

const fs = require("fs");
const vm = require("vm");
const util = require("util");
const { createRequire } = require("module");
const acorn = require("acorn");

// What the runner itself uses, taken before any cell runs. Cells have a context of their
// own (below), but the Node globals lent to it lead back to this one (Buffer's constructor
// is this context's Function), and modules are shared (`require("fs").writeSync = ...`):
// code set on breaking the runner reaches it only through these copies' originals.
const stringify = JSON.stringify.bind(JSON);
const parse = JSON.parse.bind(JSON);
const OwnSet = Set;
const OwnPromise = Promise;
const race = Promise.race.bind(Promise);
const OwnError = Error;
const OwnSyntaxError = SyntaxError;
const toText = String;
const writeSync = fs.writeSync;
const inspect = util.inspect;

const REQUESTS = Number(process.argv[2]);
const REPLIES = Number(process.argv[3]);
// A value's text/plain is util.inspect's, cut at this many characters: the agent's
// output budget applies too, but a cyclic giant should not cost a second of inspecting.
const MAX_VALUE_CHARS = 1 << 20;

let ts = null; // the typescript module, loaded on the first TypeScript cell
let cells = 0;
let interrupt = null; // rejects the running cell's await on SIGINT

// Cells run in a context of their own, with their own global object and built-ins: what a
// cell declares (`let String = ...`) cannot reach this runner, acorn or the TypeScript
// compiler, which live in the main context. Node's own globals (process, Buffer, timers,
// console, fetch, ...) are lent to it, and require, module and exports (TypeScript's
// CommonJS output uses them) are its own.
const sandbox = vm.createContext({});
const cellGlobal = vm.runInContext("globalThis", sandbox);
for (const name of Object.getOwnPropertyNames(globalThis)) {
  if (!(name in cellGlobal)) {
    Object.defineProperty(cellGlobal, name, Object.getOwnPropertyDescriptor(globalThis, name));
  }
}
// A new context has V8's own console, which prints nowhere.
cellGlobal.console = console;
cellGlobal.global = cellGlobal;
cellGlobal.require = createRequire("/sandbox/");
cellGlobal.module = { exports: {} };
cellGlobal.exports = cellGlobal.module.exports;

process.on("SIGINT", () => {
  if (interrupt) interrupt(new InterruptError());
});
// A promise rejected with nobody listening, or an error thrown from a timer, belongs to
// no cell: it is reported and the interpreter lives on.
process.on("unhandledRejection", (reason) => {
  process.stderr.write(`Unhandled promise rejection: ${describe(reason)}\n`);
});
process.on("uncaughtException", (err) => {
  process.stderr.write(`Uncaught exception: ${describe(err)}\n`);
});

class InterruptError extends OwnError {
  constructor() {
    super("interrupted");
    this.name = "KeyboardInterrupt";
  }
}

// A thrown value's text is the user's and may be any size; the agent's budget cuts the
// rest, but the answer must stay a line the agent takes (at most 16 MiB).
function clip(text, n) {
  return text.length > n ? text.slice(0, n) + "…" : text;
}

function describe(v) {
  if (v instanceof OwnError) return v.stack || `${v.name}: ${v.message}`;
  return inspect(v);
}

function transpile(code) {
  if (!ts) ts = require("typescript");
  const out = ts.transpileModule(code, {
    reportDiagnostics: true,
    compilerOptions: {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.CommonJS,
      esModuleInterop: true,
      sourceMap: false,
    },
  });
  const errors = (out.diagnostics || []).filter((d) => d.category === ts.DiagnosticCategory.Error);
  if (errors.length) {
    const first = errors[0];
    let where = "";
    if (first.file && first.start !== undefined) {
      const { line, character } = first.file.getLineAndCharacterOfPosition(first.start);
      where = ` (line ${line + 1}, column ${character + 1})`;
    }
    const err = new OwnSyntaxError(ts.flattenDiagnosticMessageText(first.messageText, "\n") + where);
    err.stack = errors
      .map((d) => `TS${d.code}: ${ts.flattenDiagnosticMessageText(d.messageText, "\n")}`)
      .join("\n");
    throw err;
  }
  return out.outputText;
}

// Declared names of a binding pattern (let {a, b: [c]} = ...).
function names(pattern, into) {
  switch (pattern.type) {
    case "Identifier":
      into.push(pattern.name);
      break;
    case "ObjectPattern":
      for (const p of pattern.properties) names(p.type === "RestElement" ? p.argument : p.value, into);
      break;
    case "ArrayPattern":
      for (const e of pattern.elements) if (e) names(e, into);
      break;
    case "RestElement":
      names(pattern.argument, into);
      break;
    case "AssignmentPattern":
      names(pattern.left, into);
      break;
  }
  return into;
}

// Rewrites a cell into the body of an async function whose top-level declarations assign
// globals and whose last expression is returned. The cell's text keeps its lines, so an
// error's line numbers are the cell's.
function rewrite(code) {
  const ast = acorn.parse(code, {
    ecmaVersion: "latest",
    sourceType: "script",
    allowAwaitOutsideFunction: true,
    allowReturnOutsideFunction: false,
  });
  const edits = []; // [start, end, text], applied back to front
  const functions = [];
  const declared = [];
  ast.body.forEach((node, i) => {
    const last = i === ast.body.length - 1;
    if (node.type === "VariableDeclaration") {
      const parts = [];
      for (const d of node.declarations) {
        names(d.id, declared);
        if (d.init) parts.push(`${code.slice(d.id.start, d.id.end)} = ${code.slice(d.init.start, d.init.end)}`);
      }
      edits.push([node.start, node.end, parts.length ? `void (${parts.join(", ")});` : ";"]);
    } else if (node.type === "FunctionDeclaration") {
      // Left in place, it is hoisted within the cell; the cell's first line makes it global.
      declared.push(node.id.name);
      functions.push(node.id.name);
    } else if (node.type === "ClassDeclaration") {
      declared.push(node.id.name);
      edits.push([node.start, node.end, `${node.id.name} = ${code.slice(node.start, node.end)};`]);
    } else if (last && node.type === "ExpressionStatement") {
      const e = node.expression;
      edits.push([node.start, node.end, `return (${code.slice(e.start, e.end)});`]);
    }
  });
  let body = code;
  for (const [start, end, text] of edits.reverse()) body = body.slice(0, start) + text + body.slice(end);
  // Names that are not globals yet become ones before the cell runs, so that assigning
  // them from the cell's function sets globals even in strict code.
  const fresh = [...new OwnSet(declared)].filter((n) => !(n in cellGlobal));
  const prelude = fresh.length ? `var ${fresh.join(", ")}; ` : "";
  const exported = functions.map((n) => `globalThis[${stringify(n)}] = ${n}; `).join("");
  return `${prelude}(async () => { ${exported}${body}\n})()`;
}

async function run(req) {
  // A first line #! would not parse inside the cell's function; it is a comment.
  let code = req.code.startsWith("#!") ? "//" + req.code.slice(2) : req.code;
  if (req.typescript) code = transpile(code);
  const script = new vm.Script(rewrite(code), { filename: `cell${++cells}` });
  const interrupted = new OwnPromise((_, reject) => {
    interrupt = reject;
  });
  try {
    const pending = script.runInContext(sandbox, { breakOnSigint: true });
    return await race([pending, interrupted]);
  } finally {
    interrupt = null;
  }
}

// The stack of an error down to the cell's frames: the interpreter's own frames below
// them, and a parser's insides for a syntax error, say nothing to the user.
function userStack(err) {
  const lines = typeof err.stack === "string" ? err.stack.split("\n") : [];
  if (err instanceof OwnSyntaxError || err instanceof InterruptError) return lines.slice(0, 1);
  const own = lines.findIndex((l) => /\((node:vm|node:internal)|sigintHandlersWrap|codebox_js\.js/.test(l));
  return (own > 0 ? lines.slice(0, own) : lines).slice(0, 200);
}

// A reply starts with its request's nonce ({"nonce":"…"): the agent takes no other line for
// an answer, so a cell that writes to this fd cannot answer a later call.
function replyTo(nonce, obj) {
  writeSync(REPLIES, '{"nonce":' + stringify(nonce) + "," + stringify(obj).slice(1) + "\n");
}

async function answer(nonce, req) {
  const reply = (obj) => replyTo(nonce, obj);
  try {
    const value = await run(req);
    let text = null;
    if (value !== undefined) {
      text = clip(inspect(value, { maxStringLength: MAX_VALUE_CHARS, breakLength: 100 }), MAX_VALUE_CHARS);
    }
    reply({ status: "ok", value: text });
  } catch (err) {
    if (err instanceof OwnError || (err && typeof err === "object" && "message" in err)) {
      let ename = toText(err.name || "Error");
      // vm's breakOnSigint says so in its message only.
      if (/interrupted by `SIGINT`/.test(toText(err.message))) ename = "KeyboardInterrupt";
      reply({
        status: "error",
        ename: clip(ename, 256),
        evalue: clip(toText(err.message), MAX_VALUE_CHARS),
        traceback: userStack(err).map((l) => clip(l, 4096)),
      });
    } else {
      reply({ status: "error", ename: "Uncaught", evalue: clip(inspect(err), MAX_VALUE_CHARS), traceback: [] });
    }
  }
}

// Requests are read one line at a time and answered in order; a cell's timers and
// promises keep running between them.
const queue = [];
let busy = false;
let partial = "";
const input = fs.createReadStream(null, { fd: REQUESTS, encoding: "utf8" });
input.on("data", (chunk) => {
  partial += chunk;
  let nl;
  while ((nl = partial.indexOf("\n")) >= 0) {
    queue.push(partial.slice(0, nl));
    partial = partial.slice(nl + 1);
  }
  drain();
});
input.on("end", () => process.exit(0));

async function drain() {
  if (busy) return;
  busy = true;
  try {
    while (queue.length) {
      let req, nonce = "";
      try {
        // What a cell wrote into the request pipe before the agent's request is not part of
        // it: a request starts {"nonce":" (a string in it cannot hold that unescaped).
        const line = queue.shift();
        req = parse(line.slice(Math.max(0, line.lastIndexOf('{"nonce":"'))));
        nonce = String(req.nonce);
      } catch {
        continue; // not the agent's: nobody waits for its answer
      }
      try {
        await answer(nonce, req);
      } catch {
        // A thrown value whose name or message cannot even be read (a throwing getter),
        // or a runtime the cell broke: an answer that needs nothing the cell can reach.
        writeSync(REPLIES, '{"nonce":' + stringify(nonce) + ',"status":"error","ename":"Error","evalue":"the code threw a value that cannot be described","traceback":[]}\n');
      }
    }
  } finally {
    busy = false;
  }
}

replyTo("ready", { status: "ready" });
