// Build a Cloudflare-style JavaScript worker into an `isola:worker`
// component. Driven by `isola build`, which writes this file, the shim and
// the WIT into a directory beside the installed npm packages.
//
//   node build.mjs --main src/worker.js --out worker.wasm --cache DIR [--instance-reuse]
//                  [--options '{"alias":{},"define":{},"rules":[],"root":"DIR","warmUp":[]}']
//
// `--options` carries Wrangler's build keys of the worker (isola.toml's
// `alias`, `define` and `rules`, checked by `isola`): they shape the
// worker's bundle, never the shim's. Its `warmUp` (isola.toml's
// `warm_up`, checked by `isola`: `{ method, url, headers: [[name, value]],
// body? }` each) lists requests the entry runs through the worker's fetch
// at the end of its top level, so inside the Wizer step (see
// `warm-up.js`): what they reach is compiled in the snapshot.
//
// `--pbl` (SpiderMonkey's portable baseline interpreter) and `--weval BIN`
// (weval's ahead-of-time compilation) are for the engine measurements in
// bench/RESULTS.md ("Engine options"), run with `node` by hand: neither
// won, so `isola` never passes them.
//
// 1. esbuild bundles the worker (relative ES imports, npm packages) into one
//    module: StarlingMonkey takes a single file, and esbuild's errors name
//    file, line and column.
// 2. componentize-js's steps (snapshot.mjs, which caches the parts that do
//    not depend on the worker's code) turn shim + bundle into a component,
//    always of the `worker-js` world: every handler export, plus
//    `handlers`, through which the host asks the component which handlers
//    the module defines. Knowing that means running the module, and a
//    worker's code never runs here, only inside wasm (the Wizer snapshot,
//    then the host). By default StarlingMonkey's fetch event serves the request (one per instance);
//    with `--instance-reuse` the shim serves `wasi:http` itself, so one
//    instance can serve many (`instance_reuse`).
// Outputs are cached by the SHA-256 of the bundle, its source map, this
// toolchain, the mode and the warm-up requests. The source map (positions in the final bundle to
// the worker's own files) goes beside the output as `<out>.map`
// (`worker.wasm.map`), where the host reads it to log original positions.

import { createHash } from "node:crypto";
import { copyFile, mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

import { componentizeWorker, WarmUpError } from "./snapshot.mjs";

const here = dirname(fileURLToPath(import.meta.url));
// `sdk-<hash>/` (shim, this script, WIT) sits inside the directory that
// holds the npm packages.
const toolchain = resolve(here, "..");
const modules = resolve(toolchain, "..", "node_modules");

function parseArgs(argv) {
  const args = { reuse: false, pbl: false };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i];
    if (key === "--instance-reuse" || key === "--pbl") {
      args[key === "--pbl" ? "pbl" : "reuse"] = true;
      i -= 1;
      continue;
    }
    if (!key.startsWith("--") || argv[i + 1] === undefined) {
      throw new Error(
        `usage: build.mjs --main FILE --out FILE --cache DIR [--instance-reuse] [--pbl] [--weval BIN] [--options JSON] (at ${key})`,
      );
    }
    args[key.slice(2)] = argv[i + 1];
  }
  for (const required of ["main", "out", "cache"]) {
    if (!args[required]) throw new Error(`missing --${required}`);
  }
  return args;
}

/** An esbuild failure as `file:line:col: error: text` lines. */
class BuildError extends Error {}

// Node.js's built-in modules, as Workers offers them with `nodejs_compat`:
// `node:buffer`, `node:events`, `node:util`, ... come from unenv (the
// polyfills wrangler builds on), streams from readable-stream (Node's own
// streams, published for browsers) and `node:string_decoder` from Node's
// string_decoder package, as unenv only stubs those two, and `node:crypto`
// adds hashes and HMAC to unenv's (`node-crypto.js`). What none of them
// implements throws "[unenv] X is not implemented yet!" when called, as
// such calls fail on Workers.
const nodeModules = {
  crypto: join(toolchain, "src/node-crypto.js"),
  stream: join(modules, "readable-stream/lib/ours/browser.js"),
  "stream/promises": join(modules, "readable-stream/lib/stream/promises.js"),
  string_decoder: join(modules, "string_decoder/lib/string_decoder.js"),
};
const nodeBuiltin = /^(node:)?([a-z_]+(?:\/[a-z_]+)?)$/;

function nodeBuiltinFile(name) {
  if (Object.hasOwn(nodeModules, name)) return nodeModules[name];
  const file = join(modules, "unenv/dist/runtime/node", `${name}.mjs`);
  return existsSync(file) ? file : undefined;
}

function nodeCompat(alias = {}) {
  // A name the worker aliases (`alias = { events = "./my-events.js" }`) is
  // left to esbuild's alias, as in Wrangler.
  const aliased = (path) =>
    Object.keys(alias).some((name) => path === name || path.startsWith(`${name}/`));
  return {
    name: "isola-node-compat",
    setup(build) {
      build.onResolve({ filter: /^cloudflare:workers$/ }, () => ({
        path: join(toolchain, "src/cloudflare-workers.js"),
      }));
      build.onResolve({ filter: nodeBuiltin }, async (args) => {
        if (args.pluginData?.nodeCompat || aliased(args.path)) return undefined;
        const [, prefix, name] = args.path.match(nodeBuiltin);
        const builtin = nodeBuiltinFile(name);
        if (prefix) {
          if (builtin) return { path: builtin };
          return { errors: [{ text: `Node.js module "${args.path}" is not available on Isola` }] };
        }
        if (!builtin) return undefined;
        // A bare `events` or `buffer` is an npm package where one is
        // installed (or a package's `browser` field maps it), else the
        // built-in.
        const installed = await build.resolve(args.path, {
          kind: args.kind,
          importer: args.importer,
          resolveDir: args.resolveDir,
          pluginData: { nodeCompat: true },
        });
        if (installed.errors.length === 0) return installed;
        return { path: builtin };
      });
    },
  };
}

// Wrangler's globs: `**` any number of directories, `*` and `?` within one
// name, `{a,b}` alternatives; matched against a file's path relative to the
// project root (the config file's directory), with `/` separators.
function globRegExp(glob) {
  let source = "";
  let depth = 0;
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*" && glob[i + 1] === "*") {
      const whole = glob[i + 2] === "/";
      source += whole ? "(?:.*/)?" : ".*";
      i += whole ? 2 : 1;
    } else if (c === "*") {
      source += "[^/]*";
    } else if (c === "?") {
      source += "[^/]";
    } else if (c === "{") {
      depth += 1;
      source += "(?:";
    } else if (c === "}" && depth > 0) {
      depth -= 1;
      source += ")";
    } else if (c === "," && depth > 0) {
      source += "|";
    } else {
      source += c.replace(/[.+^$()|[\]\\{}]/g, "\\$&");
    }
  }
  return new RegExp(`^${source}$`);
}

// `rules`: Text modules are the file's text, Data modules an ArrayBuffer of
// its bytes, ESModule and CommonJS files JavaScript whatever their
// extension. The first rule whose glob matches decides; other files load
// as esbuild loads them.
function moduleRules(rules = [], root = process.cwd()) {
  const compiled = rules.map((rule) => ({
    type: rule.type,
    globs: rule.globs.map(globRegExp),
  }));
  return {
    name: "isola-module-rules",
    setup(build) {
      build.onLoad({ filter: /.*/, namespace: "file" }, async (args) => {
        const path = relative(root, args.path).split(sep).join("/");
        const rule = compiled.find((r) => r.globs.some((glob) => glob.test(path)));
        if (!rule) return undefined;
        const contents = await readFile(args.path);
        switch (rule.type) {
          case "Text":
            return { contents, loader: "text" };
          case "Data":
            // esbuild's binary loader makes a Uint8Array; Workers' Data
            // modules are ArrayBuffers.
            return {
              contents: `export default Uint8Array.from(atob(${JSON.stringify(contents.toString("base64"))}), (c) => c.charCodeAt(0)).buffer;`,
              loader: "js",
            };
          default:
            return { contents, loader: "js" };
        }
      });
      // Wrangler's default CompiledWasm rule, refused where it is imported.
      build.onResolve({ filter: /\.wasm(\?module)?$/ }, () => ({
        errors: [
          {
            text: "WebAssembly modules cannot be imported: StarlingMonkey, the engine of JavaScript workers, has no WebAssembly",
          },
        ],
      }));
    },
  };
}

/** `define` values esbuild refuses, named by their key (esbuild's own
 * message names only the value). */
async function checkDefines(esbuild, define) {
  for (const [name, value] of Object.entries(define)) {
    try {
      await esbuild.transform("", { define: { [name]: value }, logLevel: "silent" });
    } catch (e) {
      const text = e.errors?.[0]?.text ?? String(e);
      throw new BuildError(`define \`${name}\`: ${text}`);
    }
  }
}

/** Bundle `entry`; `options` (the worker's own bundle only) are its
 * `alias`, `define`, `rules` and the `root` the rules' globs start from. */
async function bundle(esbuild, entry, outfile, sourcemap, options = {}) {
  const { alias = {}, define = {}, rules = [], root } = options;
  await checkDefines(esbuild, define);
  // Paths in the bundle's comments are relative to the entry's directory,
  // so the same sources bundle to the same bytes (and hit the build cache)
  // whatever directory `isola` runs in.
  const base = dirname(entry);
  try {
    await esbuild.build({
      absWorkingDir: base,
      entryPoints: [entry],
      outfile,
      bundle: true,
      format: "esm",
      platform: "neutral",
      target: "es2022",
      // Prefer the builds packages publish for Workers and browsers.
      conditions: ["workerd", "worker", "browser"],
      mainFields: ["browser", "module", "main"],
      external: ["isola:worker/*", "wasi:*"],
      alias,
      plugins: [nodeCompat(alias), ...(options.rules ? [moduleRules(rules, root)] : [])],
      // Globals bound only where a module uses them (see inject.js).
      inject: [join(toolchain, "src/inject.js")],
      define: { global: "globalThis", ...define },
      logLevel: "silent",
      charset: "utf8",
      // "linked" for the user's bundle, whose map the second pass composes
      // into the final one, which then names the author's own files.
      sourcemap,
      sourcesContent: false,
    });
  } catch (e) {
    if (!Array.isArray(e.errors)) throw e;
    const lines = e.errors.map((error) => {
      const where = error.location
        ? `${relative(process.cwd(), resolve(base, error.location.file))}:${error.location.line}:${error.location.column + 1}: `
        : "";
      return `${where}error: ${error.text}`;
    });
    throw new BuildError(lines.join("\n"));
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const options = args.options ? JSON.parse(args.options) : {};
  const warmUp = options.warmUp ?? [];
  const mainPath = resolve(args.main);
  if (!existsSync(mainPath)) throw new BuildError(`${args.main}: file not found`);
  const esbuild = await import(pathToFileURL(join(modules, "esbuild/lib/main.js")).href);
  const work = await mkdtemp(join(tmpdir(), "isola-js-"));
  try {
    const userBundle = join(work, "user.mjs");
    await bundle(esbuild, mainPath, userBundle, "linked", options);
    const userCode = await readFile(userBundle);
    // Part of the key: a change that only moves code (a comment, a blank
    // line) leaves the bundle's bytes alone but not its map.
    const userMap = await portableMap(`${userBundle}.map`, mainPath, work);

    const version = await readFile(join(toolchain, "VERSION"), "utf8");
    const key = createHash("sha256")
      .update(version)
      .update(args.reuse ? "\0reuse\0" : "\0")
      // The engine's mode, not the weval binary's path: any weval 0.5
      // makes the same component.
      .update(`${args.weval ? "aot\0" : ""}${args.pbl ? "pbl\0" : ""}`)
      // Only when there are any: the keys of other builds stay as they were.
      .update(warmUp.length > 0 ? `warm-up\0${JSON.stringify(warmUp)}\0` : "")
      .update(userCode)
      .update("\0")
      .update(userMap)
      .digest("hex");
    const cacheDir = resolve(args.cache);
    await mkdir(cacheDir, { recursive: true });
    const cached = join(cacheDir, `${key}.wasm`);
    const out = resolve(args.out);
    if (existsSync(cached)) {
      await place(cached, out);
      console.log(JSON.stringify({ out, cached: true }));
      return;
    }

    const world = "worker-js";
    const entry = join(work, "entry.mjs");
    const shim = join(toolchain, "src/shim.js");
    // The shim comes first: its top level installs `caches` and friends
    // before the worker's module runs.
    await writeFile(
      entry,
      [
        `import { installFetch, installObjects, incomingHandlerExport, scheduledExport, queueExport, handlersExport, warmUp } from ${JSON.stringify(shim)};`,
        `import * as userModule from ${JSON.stringify(userBundle)};`,
        `const worker = userModule.default;`,
        // Its named exports: the classes of its Durable Objects.
        `installObjects(userModule);`,
        args.reuse
          ? `export const incomingHandler = incomingHandlerExport(worker);`
          : `installFetch(worker);`,
        `export const scheduled = scheduledExport(worker);`,
        `export const queueConsumer = queueExport(worker);`,
        `export const handlers = handlersExport(worker);`,
        // Last: the worker is installed as it serves requests.
        ...(warmUp.length > 0 ? [`await warmUp(worker, ${JSON.stringify(warmUp)});`] : []),
        "",
      ].join("\n"),
    );
    // The snapshot step (Wizer) runs the module's top level, inside wasm,
    // with the bundle's directory pre-opened as `/`: a directory holding
    // nothing but the final bundle keeps the rest of the file system out
    // of its reach.
    const snapshotDir = join(work, "snapshot");
    await mkdir(snapshotDir);
    const finalBundle = join(snapshotDir, "worker.js");
    await bundle(esbuild, entry, finalBundle, "external");
    // The map goes beside the component, out of the bundle's directory.
    const finalMap = join(work, "final.map");
    await writeFile(finalMap, await portableMap(`${finalBundle}.map`, mainPath, work));
    await rm(`${finalBundle}.map`);
    const bindingsDir = join(work, "bindings");
    await mkdir(bindingsDir);

    const started = Date.now();
    const { component, rebased } = await componentizeWorker({
      modules,
      toolchainVersion: version,
      cacheDir,
      sourceDir: snapshotDir,
      source: "worker.js",
      bindingsDir,
      witPath: join(toolchain, "wit"),
      worldName: world,
      reuse: args.reuse,
      engine: { pbl: args.pbl, wevalBin: args.weval },
    });
    // The map first: a cached component always has its map beside it.
    await copyAtomically(finalMap, `${cached}.map`);
    const temp = `${cached}.${process.pid}.tmp`;
    await writeFile(temp, component);
    await rename(temp, cached);
    await place(cached, out);
    console.log(
      JSON.stringify({
        out,
        cached: false,
        world,
        instanceReuse: args.reuse,
        aot: Boolean(args.weval),
        pbl: args.pbl,
        bytes: component.byteLength,
        rebased,
        warmUp: warmUp.length,
        ms: Date.now() - started,
      }),
    );
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Copy the component `from` to `to`, and its source map `<from>.map` to
 * `<to>.map`, where the host looks for it. */
async function place(from, to) {
  if (from === to) return;
  await mkdir(dirname(to), { recursive: true });
  if (existsSync(`${from}.map`)) await copyAtomically(`${from}.map`, `${to}.map`);
  // A map left by an earlier build would mislabel every frame.
  else await rm(`${to}.map`, { force: true });
  await copyAtomically(from, to);
}

async function copyAtomically(from, to) {
  const temp = `${to}.${process.pid}.tmp`;
  await copyFile(from, temp);
  await rename(temp, to);
}

/** The source map in `file` as JSON text, with its sources relative to the
 * directory of the worker's `entry`, as the bundle's comments are, and the
 * toolchain's files and those made in the build's `work` directory as
 * `<isola>/…`: the same sources give the same map wherever the build ran
 * (the key of the build cache), and frames name files as the author does. */
async function portableMap(file, entry, work) {
  const map = JSON.parse(await readFile(file, "utf8"));
  const from = resolve(dirname(file), map.sourceRoot ?? "");
  const base = dirname(entry);
  const roots = [
    [toolchain, "<isola>"],
    [modules, "<isola>/node_modules"],
    [work, "<isola>"],
  ];
  map.sources = map.sources.map((source) => {
    const path = resolve(from, source);
    for (const [dir, name] of roots) {
      if (path.startsWith(dir + sep)) return `${name}/${relative(dir, path)}`;
    }
    return relative(base, path);
  });
  delete map.sourceRoot;
  return JSON.stringify(map);
}

main().catch((e) => {
  const plain = e instanceof BuildError || e instanceof WarmUpError;
  console.error(plain ? e.message : `error: ${e?.stack ?? e}`);
  process.exit(1);
});
