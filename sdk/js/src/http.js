// Request, Response and fetch where StarlingMonkey falls short of Workers:
// Response.clone() by teeing the body, the Response a handler returns made
// sendable, and the workarounds for forwarding a request with a body.

import { checkNotWarming } from "./warm-up.js";

// StarlingMonkey's Response has no clone(). Ours tees the body: the clone
// reads one branch, and the original is redirected to the other (its
// `body`, `bodyUsed` and body readers). The engine reads a Response's body
// from its internal slot, not from these properties, so the Response a
// fetch handler returns goes through `settled()`.
const TEED_BODY = Symbol("isola.teedBody");

function redirectBody(response, stream) {
  const read = (method) => async () => new Response(stream)[method]();
  response[TEED_BODY] = stream;
  Object.defineProperties(response, {
    body: { get: () => stream, configurable: true },
    bodyUsed: { get: () => stream.locked, configurable: true },
    text: { value: read("text"), configurable: true },
    json: { value: read("json"), configurable: true },
    arrayBuffer: { value: read("arrayBuffer"), configurable: true },
    blob: { value: read("blob"), configurable: true },
  });
}

export function cloneResponse() {
  if (this.bodyUsed) throw new TypeError("Response.clone: the body has already been used");
  const init = { status: this.status, statusText: this.statusText, headers: new Headers(this.headers) };
  const source = this[TEED_BODY] ?? this.body;
  if (source === null) return new Response(null, init);
  const branches = tee(source);
  redirectBody(this, branches[0]);
  return new Response(branches[1], init);
}

/** Bytes a tee branch holds unread (plus at most one chunk more) before
 * the other branch waits for it: back-pressure, as in workerd, rather than
 * a buffer that grows to the whole body. */
const TEE_HIGH_WATER = 1024 * 1024;

const chunkSize = (chunk) => (typeof chunk?.byteLength === "number" ? chunk.byteLength : 1);

/** A chunk for the second branch: each branch gets bytes of its own, as
 * StarlingMonkey takes over (detaches) the buffer of a chunk of a response
 * it sends, and a chunk shared by both branches arrived empty in the
 * other one. */
function copyChunk(chunk) {
  if (chunk instanceof ArrayBuffer) return chunk.slice(0);
  if (!ArrayBuffer.isView(chunk)) return chunk;
  const bytes = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength).slice();
  return chunk instanceof Uint8Array ? bytes : new chunk.constructor(bytes.buffer);
}

/** Split `source` into two streams that each see every chunk. Written out
 * rather than `source.tee()`: StarlingMonkey sends a response whose body is
 * a branch of a host body straight from the host stream, and the other
 * branch then sees nothing. Reading `source` here keeps both fed.
 *
 * Unlike the spec's tee, which reads as fast as the faster branch and
 * queues everything for the slower one, `source` is read only while every
 * branch that is being read (locked: a reader, `arrayBuffer()`, the engine
 * sending it) holds less than TEE_HIGH_WATER bytes: the faster branch
 * waits for the slower one. A branch nobody reads yet holds no one back
 * (else `await cache.put(request, response.clone()); return response`
 * would wait forever): it queues what the other reads, as in any engine,
 * until it is read. Each branch also reads ahead up to TEE_HIGH_WATER. */
function tee(source) {
  const reader = source.getReader();
  const branches = [];
  let reading = false;
  let finished = false;
  // Indexed loops over the (two) branches, not array methods: see
  // `requestFields`.
  const live = () => {
    const open = [];
    for (let i = 0; i < branches.length; i++) if (!branches[i].cancelled) open.push(branches[i]);
    return open;
  };
  // Room for one more chunk: not read by anyone, or under its high water.
  const hasRoom = (branch) =>
    !branch.stream.locked || branch.controller.desiredSize === null || branch.controller.desiredSize > 0;
  const answer = (branch) => {
    const resolve = branch.wanting;
    branch.wanting = null;
    resolve?.();
  };
  const readOnce = () => {
    if (reading || finished) return;
    const open = live();
    let wanted = false;
    for (let i = 0; i < open.length; i++) {
      if (!hasRoom(open[i])) return;
      wanted ||= open[i].wanting !== null;
    }
    if (!wanted) return;
    reading = true;
    reader.read().then(
      ({ done, value }) => {
        reading = false;
        const open = live();
        if (done) finished = true;
        for (let i = 0; i < open.length; i++) {
          if (done) open[i].controller.close();
          else open[i].controller.enqueue(i === 0 ? value : copyChunk(value));
        }
        for (let i = 0; i < open.length; i++) answer(open[i]);
      },
      (error) => {
        reading = false;
        finished = true;
        const open = live();
        for (let i = 0; i < open.length; i++) {
          open[i].controller.error(error);
          answer(open[i]);
        }
      },
    );
  };
  const branch = () => {
    const state = { stream: null, controller: null, wanting: null, cancelled: false };
    state.stream = new ReadableStream(
      {
        start(controller) {
          state.controller = controller;
        },
        // Settled once this branch got a chunk (or the end), so that the
        // stream asks again only while it has room.
        pull() {
          return new Promise((resolve) => {
            state.wanting = resolve;
            readOnce();
          });
        },
        cancel(reason) {
          state.cancelled = true;
          answer(state);
          if (live().length === 0) return reader.cancel(reason);
          // The other branch may have been waiting for this one.
          readOnce();
        },
      },
      { highWaterMark: TEE_HIGH_WATER, size: chunkSize },
    );
    branches.push(state);
    return state.stream;
  };
  return [branch(), branch()];
}

/** A Response the engine can send: a cloned one is rebuilt on its branch,
 * which the engine then streams while the clone is read (the tee above
 * keeps both fed and bounds what waits for the slower one). */
export function settled(response) {
  const stream = response[TEED_BODY];
  if (stream === undefined) return response;
  return new Response(stream, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}

// Forwarding the fetch event's request with a body meets three
// StarlingMonkey (componentize-js 0.23) bugs, worked around here (issue 28);
// the body stays a stream throughout:
// - `fetch(request)` and `new Request(request[, init])` trap with "wasm
//   trap: uninitialized element" (a 500). `fetch(request)` works once
//   something has read `request.body` (the body is then a stream, not the
//   bare incoming-body handle), `new Request(request)` traps even then, and
//   `new Request(request.url, request)` always works. So a Request made
//   from a Request with a body is made from its URL and fields.
// - its `clone()` throws (the number 0), even for a GET: replaced by one
//   that tees the body as `Response.clone` does.
// - an outgoing request whose body is the incoming body's stream and that
//   has a Content-Length now and then ends the event loop before the
//   response (one 10 MiB upload in four here: the engine's 500 "no
//   fetch-event handler triggered", "JS event loop terminated without
//   completing the request" in the log); chunked uploads and bodies read
//   through JavaScript do not. So `fetch` re-reads a stream body in JS.
const REQUEST_INIT_KEYS = [
  "method",
  "headers",
  "body",
  "redirect",
  "signal",
  "referrer",
  "referrerPolicy",
  "mode",
  "credentials",
  "cache",
  "integrity",
  "keepalive",
  "duplex",
];

/** The RequestInit members of `request` and then `init` (either may be
 * absent), the later winning. Indexed loops: SpiderMonkey only interprets
 * here (no JIT in wasm), where `for…of` over an array runs the self-hosted
 * iterator's `next` per element, ~20 k instructions each against ~1.5 k
 * (the same holds for array destructuring and `forEach`/`map`/`filter`
 * callbacks): this runs on every `fetch`. */
function requestFields(request, init) {
  const fields = {};
  copyRequestFields(fields, request);
  copyRequestFields(fields, init);
  return fields;
}

function copyRequestFields(fields, source) {
  if (source === undefined || source === null) return;
  for (let i = 0; i < REQUEST_INIT_KEYS.length; i++) {
    const key = REQUEST_INIT_KEYS[i];
    // A dictionary member that is undefined is absent (WebIDL).
    if (source[key] !== undefined) fields[key] = source[key];
  }
}

/** `source` re-read by JavaScript, one chunk per pull. */
function pullThrough(source) {
  const reader = source.getReader();
  return new ReadableStream({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel: (reason) => reader.cancel(reason),
  });
}

/** The engine's Request, captured when this module is evaluated (before
 * the shim's top level replaces the global): the shim's own requests need
 * no workaround. */
export const EngineRequest = Request;

// `isola:worker/http-batch` packs headers into one string, `name\nvalue\n`
// each: the glue lifts and lowers a list of string pairs string by string
// in interpreted JavaScript, one string natively.
export function appendPacked(headers, packed) {
  const parts = packed.split("\n");
  // The last part is the empty string after the final newline.
  for (let i = 0; i + 1 < parts.length; i += 2) headers.append(parts[i], parts[i + 1]);
}

// An incoming request's headers, packed, until its `headers` are first
// read (~2 µs a header to append, and many requests never read them):
// with `--instance-reuse`, where the shim makes the request.
const PACKED_HEADERS = Symbol("isola.packedHeaders");

export function setPackedHeaders(request, packed) {
  request[PACKED_HEADERS] = packed;
}

/** Make `request.headers` append a request's packed headers when first
 * read. The engine reads a request's headers past this getter when it
 * copies a Request (`new Request(request)`: the global below reads them
 * first), sends one (`fetch` below reads its fields first) or reads a body
 * with a content-type (`serve.js` appends those at once). */
export function installLazyHeaders() {
  const { get } = Object.getOwnPropertyDescriptor(EngineRequest.prototype, "headers");
  Object.defineProperty(EngineRequest.prototype, "headers", {
    get() {
      const headers = get.call(this);
      const packed = this[PACKED_HEADERS];
      if (packed !== undefined) {
        this[PACKED_HEADERS] = undefined;
        appendPacked(headers, packed);
      }
      return headers;
    },
    enumerable: true,
    configurable: true,
  });
}

export function installRequestWorkaround() {
  const engineFetch = globalThis.fetch;
  // A plain function rather than a Proxy (whose construct trap costs more
  // per request), sharing the engine's prototype so that `instanceof
  // Request` holds for every request.
  function Request(input, init) {
    // Called without `new`: the engine's own TypeError.
    if (new.target === undefined) return EngineRequest(input, init);
    if (input instanceof EngineRequest) {
      if (input.body !== null) {
        const fields = { duplex: "half", ...requestFields(input, init) };
        return Reflect.construct(EngineRequest, [input.url, fields], new.target);
      }
      // The engine copies the headers it holds: any still packed first.
      if (input[PACKED_HEADERS] !== undefined) void input.headers;
    }
    return new.target === Request
      ? new EngineRequest(input, init)
      : Reflect.construct(EngineRequest, [input, init], new.target);
  }
  Request.prototype = EngineRequest.prototype;
  Object.setPrototypeOf(Request, EngineRequest);
  // The bundler may rename the declaration (`Request2`).
  Object.defineProperties(Request, {
    name: { value: "Request" },
    length: { value: EngineRequest.length },
  });
  Object.defineProperty(EngineRequest.prototype, "constructor", {
    value: Request,
    writable: true,
    configurable: true,
  });
  globalThis.Request = Request;
  Object.defineProperty(EngineRequest.prototype, "clone", {
    value: function clone() {
      if (this.bodyUsed) throw new TypeError("Request.clone: the body has already been used");
      const fields = requestFields(this);
      if (fields.body === undefined || fields.body === null) {
        return new EngineRequest(this.url, fields);
      }
      const branches = tee(fields.body);
      redirectBody(this, branches[0]);
      return new EngineRequest(this.url, { ...fields, body: branches[1], duplex: "half" });
    },
    writable: true,
    configurable: true,
  });
  globalThis.fetch = function fetch(input, init) {
    // A rejected promise, never a throw, as Workers' fetch.
    try {
      checkNotWarming(`fetch(${input instanceof EngineRequest ? input.url : String(input)})`);
      const fromRequest = input instanceof EngineRequest;
      if (fromRequest && init?.body === undefined && input.bodyUsed) {
        throw new TypeError("fetch: the request's body has already been used");
      }
      const fields = requestFields(fromRequest ? input : undefined, init);
      if (!(fields.body instanceof ReadableStream)) return engineFetch.apply(this, arguments);
      fields.body = pullThrough(fields.body);
      fields.duplex = "half";
      return engineFetch(new EngineRequest(fromRequest ? input.url : input, fields));
    } catch (e) {
      return Promise.reject(e);
    }
  };
}
