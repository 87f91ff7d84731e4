// componentize-js's pipeline (its `src/componentize.js`, version pinned in
// package.json), run step by step so that what does not depend on the
// worker's code is done once and cached. On this machine a hello's build
// spent ~3 s of its ~4.5 s splicing the WIT bindings into the engine and
// ~1 s stubbing WASI and wrapping the module into a component, all of it
// the same for every build of a mode; only the Wizer snapshot (the
// worker's top level run inside wasm) depends on the code.
//
//   1. splice: the engine with the world's bindings (cached per toolchain,
//      mode and world);
//   2. snapshot: Wizer runs the bundle's top level inside the spliced
//      engine and writes the initialised module;
//   3. check_init: the snapshot is asked whether the module exported what
//      the world needs;
//   4. the component: for the first snapshot of a splice, stub the WASI
//      imports the features leave out and wrap it into a component
//      (componentize-js's own steps), and keep both as the *base* of that
//      splice. Every later snapshot differs from the base's only in its
//      memory, globals and data, which WASI stubbing and component
//      wrapping copy as they are: its component is the base's component
//      with those sections of its main module replaced. Both conditions
//      are checked on the bytes every time (see `rebase`); where either
//      fails, the full steps run.

import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { spawnSync } from "node:child_process";
import { freemem } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

/** Sections of a core module that a Wizer snapshot writes: memory (5),
 * global (6), data (11), data count (12). */
const SNAPSHOT_SECTIONS = new Set([5, 6, 11, 12]);
/** A component's core module section. */
const CORE_MODULE_SECTION = 1;

/** Build the component of the bundle `source` (a file in `sourceDir`,
 * which is all Wizer's snapshot may see), in the world `worldName` of
 * `witPath`; `reuse` serves `wasi:http` from the shim instead of
 * StarlingMonkey's fetch event. `engine` picks how the worker's JavaScript
 * runs: `{ pbl, wevalBin }`, SpiderMonkey's portable baseline interpreter
 * (`pbl`) and, with `wevalBin`, ahead-of-time compilation by weval of
 * the snapshot's functions (componentize-js's `enableAot`). Returns the
 * component's bytes and how it was made. */
export async function componentizeWorker({
  modules,
  toolchainVersion,
  cacheDir,
  sourceDir,
  source,
  bindingsDir,
  witPath,
  worldName,
  reuse,
  engine = {},
}) {
  const componentizeJs = join(modules, "@bytecodealliance/componentize-js");
  const pkg = JSON.parse(await readFile(join(componentizeJs, "package.json"), "utf8"));
  // componentize-js's default features (`DEFAULT_FEATURES` in its
  // componentize.js; importing that module would load the splicer), less
  // the fetch event where the module exports `incomingHandler`, which the
  // entry does in reuse mode only.
  const features = ["stdio", "random", "clocks", "http", "fetch-event"].filter(
    (feature) => !(reuse && feature === "fetch-event"),
  );
  const aot = Boolean(engine.wevalBin);
  const pbl = Boolean(engine.pbl);
  const key = createHash("sha256")
    .update(`${toolchainVersion}\0${pkg.version}\0${worldName}\0${features.join(",")}`)
    .update(`${aot ? "\0aot" : ""}${pbl ? "\0pbl" : ""}`)
    .digest("hex")
    .slice(0, 32);
  const base = join(cacheDir, `base-${key}`);
  await mkdir(base, { recursive: true });

  const spliced = await splice(componentizeJs, base, features, witPath, worldName, aot);
  const snapshot = aot
    ? await wevalSnapshot(componentizeJs, engine.wevalBin, spliced, sourceDir, source, bindingsDir, pbl)
    : await wizen(modules, spliced, sourceDir, source, bindingsDir, pbl);
  await checkInit(snapshot);

  const baseSnapshot = join(base, "snapshot.wasm");
  const baseComponent = join(base, "component.wasm");
  if (existsSync(baseSnapshot) && existsSync(baseComponent)) {
    const component = rebase(
      await readFile(baseSnapshot),
      await readFile(baseComponent),
      snapshot,
    );
    if (component) return { component, rebased: true };
  }
  const component = await wrap(componentizeJs, modules, pkg.version, snapshot, features, witPath, worldName);
  // The component first: a base is whole once its snapshot is there.
  await writeAtomically(baseComponent, component);
  await writeAtomically(baseSnapshot, snapshot);
  return { component, rebased: false };
}

/** The engine with the world's bindings spliced in, and what the snapshot
 * step needs to know of them; made once per `base` directory. */
async function splice(componentizeJs, base, features, witPath, worldName, aot) {
  const wasmPath = join(base, "spliced.wasm");
  const metaPath = join(base, "spliced.json");
  if (existsSync(wasmPath) && existsSync(metaPath)) {
    return { wasmPath, ...JSON.parse(await readFile(metaPath, "utf8")) };
  }
  const { splicer } = await import(
    pathToFileURL(join(componentizeJs, "lib/spidermonkey-embedding-splicer.js")).href
  );
  // The weval build of the engine carries the interpreter's annotations
  // weval specialises; it runs as the plain one where weval did not.
  const engineFile = aot ? "starlingmonkey_embedding_weval.wasm" : "starlingmonkey_embedding.wasm";
  const engine = await readFile(join(componentizeJs, "lib", engineFile));
  const { wasm, jsBindings, exports, imports } = splicer.spliceBindings(
    engine,
    features,
    undefined,
    witPath,
    worldName,
    false,
  );
  await writeAtomically(wasmPath, Buffer.from(wasm));
  const meta = { jsBindings, exports, imports, features };
  await writeAtomically(metaPath, JSON.stringify(meta));
  return { wasmPath, ...meta };
}

/** The generated glue's trace calls, one before and one after every
 * import call (`_debugLog('[Instruction::CallWasm] enter', { funcName:
 * … })`), removed: each builds an object literal and calls a function that
 * returns at once unless `process.env.JCO_DEBUG` is set, which never is
 * inside the engine. In the interpreter they were ~20% of a binding call
 * (`env.var` in a loop: 93 k instructions a call with them, 74 k without).
 * The pattern is the generator's fixed shape (`[Instruction::…]` and a
 * flat object); a call of another shape stays, and works as before. */
function withoutTraceCalls(jsBindings) {
  return jsBindings.replace(/_debugLog\('\[Instruction::[A-Za-z]+\](?: enter)?', \{[^{}]*\}\);/g, "");
}

/** The environment the engine's initialisation reads (componentize-js's
 * Wizer settings): the world's exports and imports, and `ENABLE_PBL`,
 * which StarlingMonkey reads when it creates its context, so the choice
 * is part of the snapshot. */
function engineEnv(spliced, pbl) {
  const env = {
    DEBUG: "",
    SOURCE_NAME: "source.js",
    EXPORT_CNT: String(spliced.exports.length),
    FEATURE_CLOCKS: spliced.features.includes("clocks") ? "1" : "",
    IMPORT_CNT: String(spliced.imports.length),
  };
  // Only where asked: the environment is in the snapshot's memory.
  if (pbl) env.ENABLE_PBL = "1";
  spliced.exports.forEach(([name, expt], i) => {
    env[`EXPORT${i}_NAME`] = name;
    env[`EXPORT${i}_ARGS`] = (expt.paramptr ? "*" : "") + expt.params.join(",");
    env[`EXPORT${i}_RET`] = (expt.retptr ? "*" : "") + (expt.ret || "");
    env[`EXPORT${i}_RETSIZE`] = String(expt.retsize);
  });
  spliced.imports.forEach(([, name, argCount], i) => {
    env[`IMPORT${i}_NAME`] = name;
    env[`IMPORT${i}_ARGCNT`] = String(argCount);
  });
  return env;
}

/** Run Wizer as componentize-js does: the bundle's top level runs inside
 * the spliced engine, which sees only `sourceDir` (as `/`) and the
 * generated bindings, and an environment of nothing but its own settings. */
async function wizen(modules, spliced, sourceDir, source, bindingsDir, pbl) {
  const initializer = join(bindingsDir, "initializer.js");
  await writeFile(initializer, withoutTraceCalls(spliced.jsBindings));
  const env = engineEnv(spliced, pbl);
  const { default: wizer } = await import(
    pathToFileURL(join(modules, "@bytecodealliance/wizer/index.js")).href
  );
  const out = join(bindingsDir, "snapshot.wasm");
  const run = spawnSync(
    wizer,
    [
      "--allow-wasi",
      "--init-func",
      "componentize.wizer",
      `--dir=${bindingsDir}`,
      `--mapdir=/::${sourceDir}`,
      "--wasm-bulk-memory=true",
      "--inherit-env=true",
      `-o=${out}`,
      spliced.wasmPath,
    ],
    {
      stdio: ["pipe", "inherit", "pipe"],
      env,
      input: `--initializer-script-path ${initializer} --strip-path-prefix ${sourceDir}/ ${source}`,
      encoding: "utf-8",
    },
  );
  if (run.status !== 0 || run.signal || run.error) throw snapshotError(`wizer (${wizer})`, run);
  checkWarmUpFinished(run.stderr);
  return readFile(out);
}

/** The snapshot as componentize-js's `enableAot` makes it: weval runs
 * the top level as Wizer does, then compiles the interpreter specialised
 * to each function the snapshot holds (its IC stubs from the engine's
 * cache of them). weval has no `--mapdir`, so `sourceDir` is pre-opened
 * under its own path, which `--strip-path-prefix` takes off the names
 * the worker's code sees. */
async function wevalSnapshot(componentizeJs, wevalBin, spliced, sourceDir, source, bindingsDir, pbl) {
  const initializer = join(bindingsDir, "initializer.js");
  await writeFile(initializer, withoutTraceCalls(spliced.jsBindings));
  const env = engineEnv(spliced, pbl);
  // componentize-js's default (`defaultMinStackSize`): weval's abstract
  // interpretation recurses deeply.
  env.RUST_MIN_STACK = String(Math.max(8 * 1024 * 1024, Math.floor(freemem() * 0.1)));
  const out = join(bindingsDir, "snapshot.wasm");
  const run = spawnSync(
    wevalBin,
    [
      "weval",
      `--cache-ro=${join(componentizeJs, "lib/starlingmonkey_ics.wevalcache")}`,
      `--dir=${bindingsDir}`,
      `--dir=${sourceDir}`,
      "-w",
      "--init-func",
      "componentize.wizer",
      `-i=${spliced.wasmPath}`,
      `-o=${out}`,
    ],
    {
      stdio: ["pipe", "inherit", "pipe"],
      env,
      input: `--initializer-script-path ${initializer} --strip-path-prefix ${sourceDir}/ ${join(sourceDir, source)}`,
      encoding: "utf-8",
      maxBuffer: 64 * 1024 * 1024,
    },
  );
  if (run.status !== 0 || run.signal || run.error) throw snapshotError(`weval (${wevalBin})`, run);
  checkWarmUpFinished(run.stderr);
  return readFile(out);
}

/** A failed `warm_up` (warm-up.js), reported with the request and what
 * went wrong alone: the build's error then needs none of Wizer's output. */
export class WarmUpError extends Error {}

// The lines warm-up.js writes to stderr.
const WARM_UP_START = "isola:warm-up:start ";
const WARM_UP_ERROR = "isola:warm-up:error ";
const WARM_UP_DONE = "isola:warm-up:done";

/** What failed Wizer's run of a warm-up, from its stderr: the error the
 * shim reported, or a trap while a request ran (a host import the shim
 * did not catch); undefined if no warm-up request had started. */
export function warmUpFailure(stderr) {
  const lines = stderr.split("\n");
  const reported = lines.find((line) => line.startsWith(WARM_UP_ERROR));
  if (reported !== undefined) return JSON.parse(reported.slice(WARM_UP_ERROR.length));
  const request = lastStarted(lines);
  if (request === undefined) return undefined;
  const host = /attempted to call an unknown imported function: '([^']*)' '([^']*)'/.exec(stderr);
  const cause = host
    ? `it called ${host[1]} \`${host[2]}\`, a host import, which is not available during warm-up (a warm_up request runs when the worker is built)`
    : wizerError(stderr);
  return `warm_up request ${request} failed: ${cause}`;
}

/** The request a warm-up started last, from the lines of its stderr. */
function lastStarted(lines) {
  const started = lines.filter((line) => line.startsWith(WARM_UP_START)).pop();
  return started?.slice(WARM_UP_START.length);
}

/** Throw if a snapshot step that succeeded ran a warm-up that never
 * finished: Wizer snapshots once nothing is left to run, so a request
 * that waits for what never happens at build time ends the step as if
 * it had finished, with the warm-up still on in the snapshot. */
function checkWarmUpFinished(stderr) {
  const lines = (stderr ?? "").split("\n");
  const request = lastStarted(lines);
  if (request === undefined || lines.includes(WARM_UP_DONE)) return;
  throw new WarmUpError(
    `warm_up request ${request} never finished: it (its response body or its waitUntil work) waited for something that does not happen at build time`,
  );
}

/** The error of a failed snapshot step. */
function snapshotError(tool, run) {
  const stderr = run.stderr ?? "";
  const warmUp = run.signal || run.error ? undefined : warmUpFailure(stderr);
  if (warmUp !== undefined) return new WarmUpError(warmUp);
  let detail = wizerError(stderr);
  if (run.signal) detail += `\nProcess was killed by signal: ${run.signal}`;
  if (run.error) detail += `\nProcess error: ${run.error.message}`;
  return new Error(`Failed to initialize component (${tool}):\n${detail}`);
}

/** Wizer's error output without its own framing of a trap. */
function wizerError(stderr) {
  const cause = stderr.indexOf("Error: the `componentize.wizer` function trapped\n\nCaused by:");
  const exit = stderr.indexOf("Exited with i32 exit status");
  if (cause === -1 || exit === -1) return stderr;
  const end = stderr.indexOf("\n", exit + 1);
  return `${stderr.slice(0, cause)}${end === -1 ? "" : stderr.slice(end)}`.trim();
}

/** Ask the snapshot whether initialisation found every export the world
 * needs (componentize-js's `check_init`), in V8 with imports that refuse to
 * be called. */
async function checkInit(snapshot) {
  const module = await WebAssembly.compile(snapshot);
  let stderr = "";
  let memory;
  const imports = {};
  for (const { module: from, name } of WebAssembly.Module.imports(module)) {
    imports[from] ??= {};
    imports[from][name] = () => {
      throw new Error(`Internal error: unexpected call to "${name}" during Wasm verification`);
    };
  }
  imports.wasi_snapshot_preview1 ??= {};
  imports.wasi_snapshot_preview1.fd_write = (fd, iovs, count, written) => {
    if (fd !== 2) return 0;
    const view = new DataView(memory.buffer);
    let total = 0;
    for (let i = 0; i < count; i++) {
      const ptr = view.getUint32(iovs + i * 8, true);
      const len = view.getUint32(iovs + 4 + i * 8, true);
      stderr += new TextDecoder().decode(new Uint8Array(memory.buffer, ptr, len));
      total += len;
    }
    view.setUint32(written, total, true);
    return 1;
  };
  const instance = await WebAssembly.instantiate(module, imports);
  memory = instance.exports.memory;
  const status = instance.exports.check_init();
  const reasons = {
    1: "Unable to extract expected exports list",
    2: "Unable to parse the core ABI export types",
  };
  if (status === 0) return;
  const reason = reasons[status] ?? `Unknown error during initialization: ${status}`;
  throw new Error(stderr ? `${reason}\n${stderr.trim()}` : reason);
}

/** componentize-js's last steps: stub the WASI imports the features leave
 * out, wrap the module into a component with the preview-1 adapter and
 * name the producer. */
async function wrap(componentizeJs, modules, version, snapshot, features, witPath, worldName) {
  const { splicer } = await import(
    pathToFileURL(join(componentizeJs, "lib/spidermonkey-embedding-splicer.js")).href
  );
  const { componentNew, metadataAdd, preview1AdapterReactorPath } = await import(
    pathToFileURL(join(modules, "@bytecodealliance/jco/dist/api.js")).href
  );
  const stubbed = splicer.stubWasi(snapshot, features, undefined, witPath, worldName);
  return metadataAdd(
    await componentNew(
      stubbed,
      [["wasi_snapshot_preview1", await readFile(preview1AdapterReactorPath())]],
      false,
    ),
    [
      ["language", [["JavaScript", ""]]],
      ["processed-by", [["ComponentizeJS", version]]],
    ],
  );
}

/** The component of `snapshot`, made from the base's: its main module
 * (the core module whose snapshot sections are the base snapshot's) with
 * `snapshot`'s memory, global, data and data count sections. Undefined
 * unless `snapshot` and the base snapshot agree on every other section
 * byte for byte and the base component holds its snapshot's sections as
 * they were. */
export function rebase(baseSnapshot, baseComponent, snapshot) {
  const before = sections(baseSnapshot);
  const after = sections(snapshot);
  if (before.length !== after.length) return undefined;
  for (let i = 0; i < before.length; i++) {
    if (before[i].id !== after[i].id) return undefined;
    if (!SNAPSHOT_SECTIONS.has(before[i].id) && !sameBytes(before[i], after[i])) return undefined;
  }
  const baseParts = before.filter((s) => SNAPSHOT_SECTIONS.has(s.id));
  const newParts = after.filter((s) => SNAPSHOT_SECTIONS.has(s.id));
  for (const module of sections(baseComponent)) {
    if (module.id !== CORE_MODULE_SECTION) continue;
    const inner = sections(module.bytes.subarray(module.body, module.end));
    const parts = inner.filter((s) => SNAPSHOT_SECTIONS.has(s.id));
    const holdsBase =
      parts.length === baseParts.length &&
      parts.every((part, i) => part.id === baseParts[i].id && sameBytes(part, baseParts[i]));
    if (!holdsBase) continue;
    const moduleBytes = module.bytes.subarray(module.body, module.end);
    const pieces = [moduleBytes.subarray(0, 8)];
    let next = 0;
    for (const section of inner) {
      const from = SNAPSHOT_SECTIONS.has(section.id) ? newParts[next++] : section;
      pieces.push(from.bytes.subarray(from.start, from.end));
    }
    const rebuilt = concat(pieces);
    return concat([
      baseComponent.subarray(0, module.start),
      Uint8Array.of(CORE_MODULE_SECTION),
      uleb(rebuilt.length),
      rebuilt,
      baseComponent.subarray(module.end),
    ]);
  }
  return undefined;
}

// The binary format's section framing is all that is read here (an id
// byte, a LEB128 size, the contents; WebAssembly spec 5.5.2): the sections
// are compared and moved whole, never parsed, so no wasm parser is needed.

/** The sections of a module or component binary. */
function sections(bytes) {
  const list = [];
  let pos = 8;
  while (pos < bytes.length) {
    const id = bytes[pos];
    const [size, body] = readUleb(bytes, pos + 1);
    const end = body + size;
    if (end > bytes.length) throw new Error("truncated WebAssembly section");
    list.push({ id, start: pos, body, end, bytes });
    pos = end;
  }
  return list;
}

function sameBytes(a, b) {
  if (a.end - a.start !== b.end - b.start) return false;
  return Buffer.from(a.bytes.buffer, a.bytes.byteOffset + a.start, a.end - a.start).equals(
    Buffer.from(b.bytes.buffer, b.bytes.byteOffset + b.start, b.end - b.start),
  );
}

function readUleb(bytes, pos) {
  let value = 0;
  for (let shift = 0; shift < 35; shift += 7) {
    const byte = bytes[pos++];
    if (byte === undefined) throw new Error("truncated WebAssembly section size");
    value += (byte & 0x7f) * 2 ** shift;
    if ((byte & 0x80) === 0) return [value, pos];
  }
  throw new Error("malformed WebAssembly section size");
}

function uleb(value) {
  const out = [];
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    out.push(byte);
  } while (value > 0);
  return Uint8Array.from(out);
}

function concat(parts) {
  return Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p.buffer, p.byteOffset, p.byteLength))));
}

async function writeAtomically(path, bytes) {
  const temp = `${path}.${process.pid}.tmp`;
  await writeFile(temp, bytes);
  await rename(temp, path);
}
