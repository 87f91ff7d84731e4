// Request, Response and fetch where StarlingMonkey falls short of Workers:
// Response.clone() by teeing the body, the Response a handler returns made
// sendable, and the workarounds for forwarding a request with a body.

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
  const [mine, theirs] = tee(source);
  redirectBody(this, mine);
  return new Response(theirs, init);
}

/** Split `source` into two streams that each see every chunk. Written out
 * rather than `source.tee()`: StarlingMonkey sends a response whose body is
 * a branch of a host body straight from the host stream, and the other
 * branch then sees nothing. Reading `source` here keeps both fed. A slow
 * branch buffers what the other has read. */
function tee(source) {
  const reader = source.getReader();
  const branches = new Set();
  let reading = null;
  const pump = () => {
    reading ??= reader.read().then(
      ({ done, value }) => {
        reading = null;
        for (const controller of branches) {
          if (done) controller.close();
          else controller.enqueue(value);
        }
      },
      (error) => {
        reading = null;
        for (const controller of branches) controller.error(error);
      },
    );
    return reading;
  };
  const branch = () => {
    let mine;
    return new ReadableStream({
      start(controller) {
        mine = controller;
        branches.add(controller);
      },
      pull: pump,
      cancel() {
        branches.delete(mine);
        if (branches.size === 0) reader.cancel();
      },
    });
  };
  return [branch(), branch()];
}

/** A Response the engine can send: a cloned one is rebuilt on its branch,
 * read here in full. Handing the engine the branch itself left the other
 * branch (the clone, typically being cached in waitUntil) empty, so a
 * response that was cloned is buffered instead of streamed. */
export async function settled(response) {
  const stream = response[TEED_BODY];
  if (stream === undefined) return response;
  const body = await new Response(stream).arrayBuffer();
  return new Response(body, {
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

/** The RequestInit members `sources` give, later ones winning. */
function requestFields(...sources) {
  const fields = {};
  for (const source of sources) {
    if (source === undefined || source === null) continue;
    for (const key of REQUEST_INIT_KEYS) {
      // A dictionary member that is undefined is absent (WebIDL).
      if (source[key] !== undefined) fields[key] = source[key];
    }
  }
  return fields;
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

export function installRequestWorkaround() {
  const EngineRequest = Request;
  const engineFetch = globalThis.fetch;
  const forwardable = new Proxy(EngineRequest, {
    construct(target, args, newTarget) {
      const [input, init] = args;
      if (input instanceof EngineRequest && input.body !== null) {
        const fields = { duplex: "half", ...requestFields(input, init) };
        return Reflect.construct(target, [input.url, fields], newTarget);
      }
      return Reflect.construct(target, args, newTarget);
    },
  });
  Object.defineProperty(EngineRequest.prototype, "constructor", {
    value: forwardable,
    writable: true,
    configurable: true,
  });
  globalThis.Request = forwardable;
  Object.defineProperty(EngineRequest.prototype, "clone", {
    value: function clone() {
      if (this.bodyUsed) throw new TypeError("Request.clone: the body has already been used");
      const fields = requestFields(this);
      if (fields.body === undefined || fields.body === null) {
        return new EngineRequest(this.url, fields);
      }
      const [mine, theirs] = tee(fields.body);
      redirectBody(this, mine);
      return new EngineRequest(this.url, { ...fields, body: theirs, duplex: "half" });
    },
    writable: true,
    configurable: true,
  });
  globalThis.fetch = function fetch(input, init) {
    // A rejected promise, never a throw, as Workers' fetch.
    try {
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
