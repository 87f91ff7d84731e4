// The worker's `env` (its bindings), `ctx`, `request.cf`, and failing a run.

import * as ctxApi from "isola:worker/ctx@0.1.0";
import * as envApi from "isola:worker/env@0.1.0";
import * as requestInfo from "isola:worker/request-info@0.1.0";
import { AnalyticsEngineDataset } from "./analytics.js";
import { D1Database } from "./d1.js";
import { DurableObjectNamespace } from "./durable.js";
import { errorText } from "./errors.js";
import { KVNamespace } from "./kv.js";
import { WorkerQueue } from "./queues.js";
import { R2Bucket } from "./r2.js";
import { Fetcher } from "./service.js";
import { warming, warmUpEnv } from "./warm-up.js";

/** The worker's `env`. Its bindings are read from the host the first time
 * the worker looks at it: host calls go through componentize-js's generated
 * glue (~0.1 M instructions a call, see `glue-realm.js`), and many
 * requests never touch `env` or `cf` at all. The proxy
 * fills its own target, so it behaves as the plain object it becomes. Its
 * handler is one small object per env whose traps are shared (a trap's
 * `this` is the handler): no closures are made per request. */
export function makeEnv() {
  // A build-time warm-up request (`warm-up.js`) has no host to ask.
  if (warming.active) return warmUpEnv();
  return new Proxy({}, { __proto__: envTraps, filled: false });
}

const envTraps = {
  fill(target) {
    if (!this.filled) {
      this.filled = true;
      fillEnv(target);
    }
    return target;
  },
  get(target, key, receiver) {
    return Reflect.get(this.fill(target), key, receiver);
  },
  set(target, key, value, receiver) {
    return Reflect.set(this.fill(target), key, value, receiver);
  },
  has(target, key) {
    return Reflect.has(this.fill(target), key);
  },
  ownKeys(target) {
    return Reflect.ownKeys(this.fill(target));
  },
  getOwnPropertyDescriptor(target, key) {
    return Reflect.getOwnPropertyDescriptor(this.fill(target), key);
  },
  defineProperty(target, key, descriptor) {
    return Reflect.defineProperty(this.fill(target), key, descriptor);
  },
  deleteProperty(target, key) {
    return Reflect.deleteProperty(this.fill(target), key);
  },
};

/** The bindings as the host lists them, with the vars' and secrets'
 * values: one `env.entries-json` call, as each import call and each list
 * element the glue lifts has a fixed cost (see that function's WIT), and
 * JSON.parse is native. Asked once per instance, as a store's `env` never
 * changes (a reused instance reads it again for every request's env
 * otherwise). Each env gets binding objects of its own. */
let bindingList;

function listBindings() {
  bindingList ??= JSON.parse(envApi.entriesJson());
  return bindingList;
}

function fillEnv(env) {
  // An indexed loop: `for…of` costs ~20 k instructions an element (see
  // `requestFields` in http.js).
  const entries = listBindings();
  for (let i = 0; i < entries.length; i++) {
    const { name, kind, value } = entries[i];
    switch (kind) {
      case "var":
      case "secret":
        env[name] = value;
        break;
      case "kv":
        env[name] = new KVNamespace(name);
        break;
      case "sql":
        env[name] = new D1Database(name);
        break;
      case "blob":
        env[name] = new R2Bucket(name);
        break;
      case "analytics":
        env[name] = new AnalyticsEngineDataset(name);
        break;
      case "queue":
        env[name] = new WorkerQueue(name);
        break;
      case "service":
        env[name] = new Fetcher(name);
        break;
      case "durable-object":
        env[name] = new DurableObjectNamespace(name);
        break;
    }
  }
}

/** Request-scoped values that travel with the request through service
 * bindings: Isola's answer to passing context down a middleware chain. */
const locals = {
  get(key) {
    const value = ctxApi.getLocal(String(key));
    return value === undefined ? undefined : JSON.parse(value);
  },
  set(key, value) {
    ctxApi.setLocal(String(key), JSON.stringify(value));
  },
};

/** `ctx` of a fetch event: waitUntil work runs after the response is sent. */
export class ExecutionContext {
  #waitUntil;
  constructor(waitUntil) {
    this.#waitUntil = waitUntil;
  }
  waitUntil(promise) {
    // allSettled semantics: one failed task neither fails the others nor
    // the response; it is logged.
    this.#waitUntil(
      Promise.resolve(promise).catch((e) => {
        console.error(`waitUntil task failed: ${errorText(e)}`);
      }),
    );
  }
  passThroughOnException() {
    ctxApi.passThroughOnException();
  }
  get requestId() {
    return ctxApi.requestId();
  }
  get locals() {
    return locals;
  }
  get props() {
    return {};
  }
}

/** End the run as failed: the host answers 500 (or passes the request to
 * the origin) and logs the stack. */
export function fail(e) {
  ctxApi.abort(`Uncaught ${errorText(e)}`);
  throw e;
}

/** A request's `cf`: CF_PENDING on an incoming request until read, then
 * the object; absent on requests the worker makes. */
const CF = Symbol("isola.cf");
const CF_PENDING = null;

/** `request.cf`, one getter on Request's prototype (defined once, by the
 * shim's top level), so that marking an incoming request costs a property
 * rather than a `defineProperty` and a closure per request. The host is
 * asked when it is first read (see `makeEnv`). */
export function installCf() {
  Object.defineProperty(Request.prototype, "cf", {
    get() {
      const cf = this[CF];
      return cf === CF_PENDING ? (this[CF] = requestCf()) : cf;
    },
    // A request the worker made takes `cf` as its own property, as it did
    // before this getter; the incoming request's stays read-only.
    set(value) {
      if (this[CF] !== undefined) throw new TypeError("request.cf is read-only");
      Object.defineProperty(this, "cf", { value, writable: true, enumerable: true, configurable: true });
    },
    enumerable: true,
    configurable: true,
  });
}

/** Give the incoming `request` its `cf` (a request that already has one
 * keeps it). */
export function attachCf(request) {
  if (request[CF] === undefined) request[CF] = CF_PENDING;
}

function requestCf() {
  // One JSON string rather than the `info` record, which the glue lifts
  // field by field.
  return JSON.parse(requestInfo.getJson());
}
