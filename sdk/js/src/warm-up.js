// `warm_up`: requests the build runs through the worker's own `fetch`
// inside the Wizer snapshot step, after the worker's module ran, so that
// every fresh instance starts with the code they reached compiled (and its
// shapes and inline caches built) rather than compiling it on its request.
//
// The Wizer step has none of the host's imports: a call to one traps the
// whole build ("attempted to call an unknown imported function"). So while
// the warm-up runs, `env` has no bindings (reading one throws), `ctx` keeps
// its work to itself, and `fetch` and `caches` reject, each with an error
// that says why (the shim's `fetch`, `caches` and `env` look at
// `warming`: no global is replaced). Afterwards everything is as before,
// and the snapshot is as if no request had been served, but for the
// engine's compiled code and the worker's own module state.
//
// The build reads what this writes to stderr: a line per request before
// it runs (so that a trap the shim could not prevent still names its
// request), on failure the error, and a last line once every request is
// done (`snapshot.mjs`'s `warmUpFailure`). Wizer snapshots when the event
// loop has nothing left to run, finished or not: a request that waits for
// what never comes at build time (a host call, a promise nobody settles)
// would leave a snapshot taken halfway, with the warm-up still on.

import { errorText } from "./errors.js";

/** Lines the build looks for on the Wizer step's stderr. */
export const START_MARK = "isola:warm-up:start ";
export const ERROR_MARK = "isola:warm-up:error ";
export const DONE_MARK = "isola:warm-up:done";

/** Whether warm-up requests are running. */
export const warming = { active: false };

const WHY = "a warm_up request runs when the worker is built, where it has";

/** The error of `what` (`fetch(https://…)`, `caches.default.match()`)
 * called during the warm-up. */
export function unavailable(what) {
  return new Error(`${what} is not available during warm-up: ${WHY} no network, cache or bindings`);
}

/** Throw if the warm-up is running (a host call would trap the build). */
export function checkNotWarming(what) {
  if (warming.active) throw unavailable(what);
}

/** The `env` of a warm-up request: reading a binding, a var or a secret
 * throws (their values come from the host, which is not there), and it
 * lists no keys. */
export function warmUpEnv() {
  return new Proxy(
    {},
    {
      get(_, key) {
        // Symbols and `then` (`await env`) are not bindings.
        if (typeof key === "symbol" || key === "then" || key === "toJSON") return undefined;
        throw new Error(`env.${key} is not available during warm-up: ${WHY} no bindings, vars or secrets`);
      },
      has: () => false,
      ownKeys: () => [],
      set: () => true,
    },
  );
}

/** `ctx` of a warm-up request: `waitUntil` work is awaited after the
 * response, its failures ignored; the rest does nothing. */
export class WarmUpContext {
  #tasks;
  #locals = new Map();
  constructor(tasks) {
    this.#tasks = tasks;
  }
  waitUntil(promise) {
    this.#tasks.push(Promise.resolve(promise).catch(() => {}));
  }
  passThroughOnException() {}
  get requestId() {
    return "warm-up";
  }
  get locals() {
    const locals = this.#locals;
    return {
      get: (key) => locals.get(String(key)),
      set: (key, value) => void locals.set(String(key), value),
    };
  }
  get props() {
    return {};
  }
}

const describe = ({ method, url }) => `${method} ${url}`;

/** An error's text without the stack frames of the shim's dispatch (the
 * frames of the worker's own code are the ones above it). */
function workerFrames(text) {
  const lines = text.split("\n");
  const shim = lines.findIndex((line, i) => i > 0 && /^(callHandler|callFetch|dispatchScript|runWarmUp|warmUp)\b/.test(line));
  return (shim === -1 ? lines : lines.slice(0, shim)).join("\n");
}

/** Report a failed warm-up to the build and fail the snapshot. */
export function failWarmUp(message) {
  console.error(`${ERROR_MARK}${JSON.stringify(message)}`);
  throw new Error(message);
}

/** Run `requests` in order: `serve(request, ctx)` answers each (the
 * worker's fetch, as a real request is dispatched), whose body is then
 * read to its end, then its `waitUntil` work is awaited. */
export async function runWarmUp(requests, serve) {
  warming.active = true;
  try {
    for (const spec of requests) {
      console.error(`${START_MARK}${describe(spec)}`);
      const tasks = [];
      let response;
      let body;
      try {
        const init = { method: spec.method, headers: spec.headers };
        if (spec.body !== undefined && spec.body !== null) init.body = spec.body;
        const request = new Request(spec.url, init);
        // As the host reports it for a request (`request.cf`), less what
        // only the host knows.
        request.cf = { httpProtocol: "HTTP/1.1", requestId: "warm-up" };
        response = await serve(request, new WarmUpContext(tasks));
        body = await response.arrayBuffer();
      } catch (e) {
        failWarmUp(`warm_up request ${describe(spec)} failed: ${workerFrames(errorText(e))}`);
      }
      if (response.status < 200 || response.status >= 400) {
        const text = new TextDecoder().decode(body).trim();
        const shown = text.length > 300 ? `${text.slice(0, 300)}…` : text;
        failWarmUp(
          `warm_up request ${describe(spec)} answered ${response.status}; a warm-up request must succeed (2xx or 3xx)${
            shown ? `. Its body: ${shown}` : ""
          }`,
        );
      }
      await Promise.allSettled(tasks);
    }
    console.error(DONE_MARK);
  } finally {
    warming.active = false;
  }
}
