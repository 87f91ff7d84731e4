// The Isola JavaScript SDK shim: runs a Cloudflare-style worker module
// (`export default { fetch, scheduled, queue }`) on the `isola:worker` WIT
// imports and exports. `isola build` bundles it with the worker. Every
// request gets a fresh instance unless the worker sets `instance_reuse`;
// then module state (as in Workers) lives on, and each request's host
// resources are released when it ends.
//
// This is the entry `build.mjs` imports before the worker's module. Its top
// level installs what the worker's top level may already use (`console.*`
// with stacks, `caches`, the Request/fetch workarounds, Workers' globals,
// the `cloudflare:workers` hooks, the fetch listener for service-worker
// scripts); the modules it imports only declare.

import * as ctxApi from "isola:worker/ctx@0.1.0";
import { currentObject, serveObject } from "./durable.js";
import { attachCf, ExecutionContext, fail, installCf, makeEnv } from "./env.js";
import { errorText, installConsole } from "./errors.js";
import { resolveGlueRealmClasses } from "./glue-realm.js";
import { installGlobals } from "./globals.js";
import { installLazyHeaders, settled } from "./http.js";
import { incomingBody } from "./queues.js";
import { dispose, recordWholeBodies, sendResponse, toRequest } from "./serve.js";
import { runWarmUp, warming } from "./warm-up.js";

installConsole();
installGlobals();
installCf();
resolveGlueRealmClasses();

/** The `ctx` of the request (or trigger) being handled, for
 * `cloudflare:workers`' `waitUntil`. */
let currentCtx;

Object.defineProperty(globalThis, Symbol.for("isola.cloudflare-workers"), {
  value: {
    env: makeEnv,
    // The warm-up's env is not one to keep.
    warming: () => warming.active,
    waitUntil(promise) {
      if (!currentCtx) throw new Error("waitUntil() is only available while handling a request");
      currentCtx.waitUntil(promise);
    },
  },
});

const hasHandler = (worker, name) =>
  typeof worker?.[name] === "function" ||
  (typeof worker === "function" && typeof worker.prototype?.[name] === "function");

/** Call handler `name` of the default export: an object's
 * `name(event, env, ctx)`, or, for a `WorkerEntrypoint` class, `name(event)`
 * on a new instance that has `this.env` and `this.ctx`, as Workers does. */
function callHandler(worker, name, event, ctx) {
  currentCtx = ctx;
  const env = makeEnv();
  if (typeof worker === "function" && typeof worker.prototype?.[name] === "function") {
    return new worker(ctx, env)[name](event);
  }
  return worker[name](event, env, ctx);
}

/** `worker.fetch(request, env, ctx)`: what it returns, which `checked`
 * then takes (not an async function: one promise fewer per request). */
function callFetch(worker, request, ctx) {
  if (!hasHandler(worker, "fetch")) {
    throw new Error("the worker's default export has no fetch handler");
  }
  attachCf(request);
  return callHandler(worker, "fetch", request, ctx);
}

/** The fetch handler's awaited answer, which must be a Response. */
function checked(response) {
  if (!(response instanceof Response)) {
    throw new TypeError(
      `the fetch handler returned ${response === null ? "null" : typeof response}, not a Response`,
    );
  }
  return response;
}

/** The worker's module namespace: Durable Object classes are its named
 * exports. */
let workerModule = {};
/** Whether the module exports a function other than its default, which a
 * Durable Object class would be: only then does a run ask the host whether
 * it serves an object (a host call, not free). */
let exportsClasses = false;

/** Give the shim the worker's module (the build's entry does, before any
 * event): its exported classes serve the Durable Objects of the worker. */
export function installObjects(module) {
  workerModule = module;
  exportsClasses = Object.keys(module).some(
    (name) => name !== "default" && typeof module[name] === "function",
  );
}

/** The object this run serves and its event, or undefined: the run is
 * then the worker's own (a request to it, a trigger). */
function objectRun() {
  return exportsClasses ? currentObject() : undefined;
}

/** Deliver the run's event to its Durable Object; answers a Response
 * whatever the object does (errors go back to the caller). */
function callObject(current, request, ctx) {
  currentCtx = ctx;
  return serveObject(workerModule, current, request, ctx, makeEnv);
}

/** Set when the worker is a service-worker style script (no default
 * export): it registers its own fetch listener. */
let serviceWorkerScript = false;

/** Fetch events an object's run took (StarlingMonkey's fetch event). */
const objectEvents = new WeakSet();

// Registered by the shim's top level, so before any listener of the
// worker's: gives a service-worker script what Workers gives it, its
// bindings as globals, `request.cf` and `event.passThroughOnException()`,
// and the error handling module workers get.
addEventListener("fetch", (event) => {
  const object = objectRun();
  if (object !== undefined) {
    objectEvents.add(event);
    const ctx = new ExecutionContext((promise) => event.waitUntil(promise));
    event.respondWith(
      (async () => {
        try {
          return settled(await callObject(object, event.request, ctx));
        } catch (e) {
          return fail(e);
        }
      })(),
    );
    return;
  }
  if (!serviceWorkerScript) return;
  const env = makeEnv();
  for (const name of Object.keys(env)) globalThis[name] = env[name];
  attachCf(event.request);
  if (typeof event.passThroughOnException !== "function") {
    event.passThroughOnException = () => ctxApi.passThroughOnException();
  }
  // A rejected response fails the request as a module's exception does:
  // logged with its stack, and passed through to the origin if asked.
  const respondWith = event.respondWith.bind(event);
  event.respondWith = (response) => respondWith(Promise.resolve(response).then(settled).catch(fail));
});

/** The fetch listeners added after the shim's own (a service-worker
 * script's), which the build's warm-up calls itself: the engine's fetch
 * event does not exist before the first request. */
const scriptListeners = [];
{
  const add = globalThis.addEventListener;
  globalThis.addEventListener = function addEventListener(type, listener, ...rest) {
    if (type === "fetch" && listener !== null && listener !== undefined) scriptListeners.push(listener);
    return add.call(this ?? globalThis, type, listener, ...rest);
  };
}

/** Dispatch a warm-up `request` to a service-worker script's listeners,
 * as a fetch event: the first `respondWith` answers. Its bindings would
 * be globals, and a warm-up has none. */
async function dispatchScript(request, ctx) {
  let answer;
  const event = {
    type: "fetch",
    request,
    respondWith(response) {
      if (answer !== undefined) throw new Error("respondWith() was already called");
      answer = Promise.resolve(response);
    },
    waitUntil: (promise) => ctx.waitUntil(promise),
    passThroughOnException() {},
  };
  for (const listener of scriptListeners) {
    if (typeof listener === "function") listener.call(globalThis, event);
    else listener.handleEvent(event);
    if (answer !== undefined) break;
  }
  if (answer === undefined) throw new Error("no fetch listener called respondWith()");
  return checked(await answer);
}

/** The Response a fetch handler answered, ready to send; failing the run
 * (as a handler's exception does) when it is not one. */
function answered(response) {
  try {
    return settled(checked(response));
  } catch (e) {
    return fail(e);
  }
}

/** Serve fetch events with `worker.fetch(request, env, ctx)`. */
export function installFetch(worker) {
  if (worker === undefined) {
    serviceWorkerScript = true;
    return;
  }
  let served = false;
  addEventListener("fetch", (event) => {
    if (objectEvents.has(event)) return;
    // The engine would refuse the second event's respondWith with a
    // message that names no cause.
    if (served) {
      ctxApi.abort(
        "this JavaScript component serves one request per instance; build it with `isola build --instance-reuse` to use `instance_reuse`",
      );
    }
    served = true;
    const ctx = new ExecutionContext((promise) => event.waitUntil(promise));
    // A promise chain rather than an async function: in the interpreter
    // each async call costs a generator object and a promise more, and
    // each promise captures the stack.
    let answer;
    try {
      answer = Promise.resolve(callFetch(worker, event.request, ctx));
    } catch (e) {
      answer = Promise.reject(e);
    }
    event.respondWith(answer.then(answered, fail));
  });
}

/** The `wasi:http/incoming-handler` export: `worker.fetch(request, env,
 * ctx)`, then the body, then every waitUntil task (allSettled) before the
 * instance is done. */
export function incomingHandlerExport(worker) {
  recordWholeBodies();
  installLazyHeaders();
  return {
    async handle(incoming, outparam) {
      const cleanup = [];
      const tasks = [];
      const ctx = new ExecutionContext((promise) => tasks.push(promise));
      try {
        let response;
        try {
          const request = toRequest(incoming, cleanup);
          const object = objectRun();
          response =
            object === undefined
              ? checked(await callFetch(worker, request, ctx))
              : await callObject(object, request, ctx);
        } catch (e) {
          fail(e);
        }
        // Undefined when the response went out whole, in one call.
        const streaming = sendResponse(response, outparam);
        if (streaming !== undefined) await streaming;
        if (tasks.length > 0) await Promise.allSettled(tasks);
      } finally {
        for (let i = cleanup.length - 1; i >= 0; i--) cleanup[i]();
        dispose(incoming);
      }
    },
  };
}

/** Run the build's `warm_up` requests (`warm-up.js`) through the
 * worker's fetch, as a request is dispatched to a module worker, a
 * `WorkerEntrypoint` class or a service-worker script's fetch listener;
 * the entry awaits this at its top level, in the Wizer step. */
export async function warmUp(worker, requests) {
  try {
    await runWarmUp(requests, async (request, ctx) =>
      settled(
        worker === undefined
          ? await dispatchScript(request, ctx)
          : checked(await callFetch(worker, request, ctx)),
      ),
    );
  } finally {
    // As if no request had been served.
    currentCtx = undefined;
  }
}

/** Run `body(ctx)` and then every waitUntil task (allSettled). */
async function runTrigger(body) {
  const tasks = [];
  const ctx = new ExecutionContext((promise) => tasks.push(promise));
  try {
    await body(ctx);
  } finally {
    await Promise.allSettled(tasks);
  }
}

/** The `handlers` export: which handlers the default export defines. The
 * build gives every worker all the handler exports, since only running the
 * module tells which it has, and the module runs nowhere but in wasm; the
 * host asks this when it loads the worker. */
export function handlersExport(worker) {
  return {
    implemented() {
      // A service-worker script (no default export) serves fetch events.
      if (worker === undefined) return ["fetch"];
      return ["fetch", "scheduled", "queue"].filter((name) => hasHandler(worker, name));
    },
  };
}

/** The `scheduled` export: `worker.scheduled(controller, env, ctx)`. */
export function scheduledExport(worker) {
  return {
    async handle(event) {
      try {
        await runTrigger((ctx) =>
          callHandler(
            worker,
            "scheduled",
            {
              cron: event.cron,
              scheduledTime: Number(event.scheduledTime),
              type: "scheduled",
              noRetry() {},
            },
            ctx,
          ),
        );
      } catch (e) {
        console.error(`Uncaught ${errorText(e)}`);
        throw e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      }
    },
  };
}

/** The `queue-consumer` export: `worker.queue(batch, env, ctx)`, with
 * per-message ack()/retry() and ackAll()/retryAll(). */
export function queueExport(worker) {
  return {
    async handle(incoming) {
      // Explicit calls win; otherwise a handler that returns acks all and
      // one that throws retries all (as in Workers).
      const decisions = incoming.messages.map(() => undefined);
      let all;
      const messages = incoming.messages.map((m, i) => ({
        id: m.id,
        timestamp: new Date(Number(m.timestamp)),
        body: incomingBody(m),
        attempts: m.attempts,
        ack() {
          decisions[i] ??= { tag: "ack" };
        },
        retry(options = {}) {
          decisions[i] ??= { tag: "retry", val: options.delaySeconds ?? undefined };
        },
      }));
      const batch = {
        queue: incoming.queue,
        messages,
        ackAll() {
          all ??= { tag: "ack" };
        },
        retryAll(options = {}) {
          all ??= { tag: "retry", val: options.delaySeconds ?? undefined };
        },
      };
      let fallback = { tag: "ack" };
      try {
        await runTrigger((ctx) => callHandler(worker, "queue", batch, ctx));
      } catch (e) {
        console.error(`Uncaught ${errorText(e)}`);
        fallback = { tag: "retry", val: undefined };
      }
      return decisions.map((d) => d ?? all ?? fallback);
    },
  };
}
