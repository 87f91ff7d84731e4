// The realm of componentize-js's import glue, made ready at build time.
//
// Every `isola:worker/*` import the shim calls (`env`, `request.cf`, KV,
// D1, R2, the cache, queues, Durable Objects...) goes through JavaScript
// functions componentize-js generates (its "initializer" script), which
// lower and lift the arguments through the engine's memory. They run in a
// realm of their own, and SpiderMonkey creates a realm's standard classes
// lazily, on first use: that realm's `String.prototype` (its ~50 methods,
// for the glue's `charCodeAt`), `Uint8Array` and the typed array prototype
// were built by the first glue call of every fresh instance. Measured by
// fuel on one fresh instance: the first `env.var()` cost 0.73 M
// instructions and each later one 0.1 M; the first `env.bindings()` 0.38 M.
// So a worker's first look at `env` cost more than its whole hello.
//
// The build-time snapshot cannot call an import (Wizer traps), but it can
// resolve those classes: a glue function given an argument of the wrong
// type throws before it calls the host, with an error made in the glue's
// realm, whose `constructor.constructor` is that realm's `Function`. Code
// made with it runs in that realm and touches the classes the glue uses,
// so they are in the snapshot and every instance starts with them. It also
// gives that global a `process` (undefined): the glue's `_debugLog` looks
// up `globalThis.process` twice a call, and a missing name went through
// the global's resolve hook every time (~6% of a call).

import * as envApi from "isola:worker/env@0.1.0";

/** The standard classes the generated glue uses (its `new Uint8Array`,
 * `new DataView`, `BigInt`, string methods, errors...), and the typed
 * arrays its list lifting can make. */
const GLUE_CLASSES = [
  "Object",
  "Function",
  "Array",
  "String",
  "Number",
  "Boolean",
  "BigInt",
  "Symbol",
  "Error",
  "TypeError",
  "RangeError",
  "Map",
  "Set",
  "WeakMap",
  "Promise",
  "JSON",
  "Math",
  "Reflect",
  "FinalizationRegistry",
  "ArrayBuffer",
  "DataView",
  "Int8Array",
  "Uint8Array",
  "Int16Array",
  "Uint16Array",
  "Int32Array",
  "Uint32Array",
  "Float32Array",
  "Float64Array",
  "BigInt64Array",
  "BigUint64Array",
];

/** Resolve the glue realm's standard classes. Build time only (the
 * shim's top level): at run time every instance starts from the snapshot. */
export function resolveGlueRealmClasses() {
  let glueFunction;
  try {
    // A number where a string is due: refused while lowering, before the
    // host is called.
    envApi.var(0);
  } catch (e) {
    glueFunction = e?.constructor?.constructor;
  }
  // A glue that failed otherwise (or in this realm) leaves nothing to do.
  if (typeof glueFunction !== "function" || glueFunction === Function) return;
  glueFunction(`for (const name of ${JSON.stringify(GLUE_CLASSES)}) void globalThis[name];
    if (!("process" in globalThis)) globalThis.process = undefined;`)();
}
