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

/** The worker's `env`. Its bindings are read from the host the first time
 * the worker looks at it: host calls go through componentize-js's generated
 * glue (`env.bindings()` and `request-info.get()` cost ~135 µs a request
 * together), and many requests never touch `env` or `cf` at all. The proxy
 * fills its own target, so it behaves as the plain object it becomes. */
export function makeEnv() {
  const env = {};
  let filled = false;
  const fill = () => {
    if (!filled) {
      filled = true;
      fillEnv(env);
    }
    return env;
  };
  return new Proxy(env, {
    get: (target, key, receiver) => Reflect.get(fill(), key, receiver),
    set: (target, key, value, receiver) => Reflect.set(fill(), key, value, receiver),
    has: (target, key) => Reflect.has(fill(), key),
    ownKeys: () => Reflect.ownKeys(fill()),
    getOwnPropertyDescriptor: (target, key) => Reflect.getOwnPropertyDescriptor(fill(), key),
    defineProperty: (target, key, descriptor) => Reflect.defineProperty(fill(), key, descriptor),
    deleteProperty: (target, key) => Reflect.deleteProperty(fill(), key),
  });
}

function fillEnv(env) {
  for (const { name, kind } of envApi.bindings()) {
    switch (kind) {
      case "var":
      case "secret":
        env[name] = envApi.var(name);
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

/** `request.cf`, asked of the host when first read (see `makeEnv`). */
export function attachCf(request) {
  let cf;
  try {
    Object.defineProperty(request, "cf", {
      get() {
        cf ??= requestCf();
        return cf;
      },
      enumerable: true,
    });
  } catch {
    // A request that already has `cf` keeps it.
  }
}

function requestCf() {
  const info = requestInfo.get();
  const cf = {
    httpProtocol: info.protocol,
    requestId: info.requestId,
  };
  if (info.clientAddress !== undefined) cf.clientAddress = info.clientAddress;
  if (info.tlsVersion !== undefined) cf.tlsVersion = info.tlsVersion;
  if (info.colo !== undefined) cf.colo = info.colo;
  if (info.country !== undefined) cf.country = info.country;
  return cf;
}
