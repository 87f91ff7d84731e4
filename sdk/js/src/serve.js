// Serving `wasi:http/incoming-handler` in the shim (`--instance-reuse`):
// the incoming request as a Request, and a Response sent back to the host.

import { OutgoingBody } from "wasi:http/types@0.2.10";
import { readHead, respond, respondStreaming } from "isola:worker/http-batch@0.1.0";
import { encoder, READ_CHUNK } from "./bytes.js";
import { errorText } from "./errors.js";
import { appendPacked, EngineRequest, setPackedHeaders } from "./http.js";

// Built with `--instance-reuse`, the shim serves `wasi:http/incoming-handler`
// itself, as StarlingMonkey's fetch event fires only once per instance: an
// instance kept by `instance_reuse` then serves request after request.
// Every binding call goes through componentize-js's generated JavaScript
// glue, ~5 µs each, so the shim reads a request's head with one call and
// sends a response whose body is in memory with one more
// (`isola:worker/http-batch`) instead of ~18 `wasi:http` calls; a streamed
// body's head, body and stream come from one call too.

export const dispose = (resource) => resource?.[Symbol.dispose]();
const isClosed = (e) => e?.payload?.tag === "closed";
// Hop-by-hop headers the host refuses in a response (RFC 9110 7.6.1).
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "transfer-encoding",
  "upgrade",
]);

/** The request body as a stream that reads the host's stream on demand.
 * Reads block the instance: it serves one request at a time, so nothing
 * else waits but this request's own timers and subrequests. */
function requestBody(incoming, cleanup) {
  const body = incoming.consume();
  const stream = body.stream();
  let open = true;
  const close = () => {
    if (!open) return;
    open = false;
    dispose(stream);
    dispose(body);
  };
  cleanup.push(close);
  return new ReadableStream({
    pull(controller) {
      try {
        let chunk;
        do chunk = stream.blockingRead(BigInt(READ_CHUNK));
        while (chunk.byteLength === 0);
        controller.enqueue(chunk);
      } catch (e) {
        close();
        if (isClosed(e)) controller.close();
        else controller.error(new TypeError("the request body could not be read"));
      }
    },
    cancel: close,
  });
}

export function toRequest(incoming, cleanup) {
  const { method, url, headers } = readHead(incoming);
  // The engine's constructor: the global's workaround is for a Request
  // made from a Request. The headers go into the request's own Headers
  // (a Headers passed in the init would be copied once more).
  if (method === "GET" || method === "HEAD") {
    const request = method === "GET" ? new EngineRequest(url) : new EngineRequest(url, { method });
    // Built when first read, unless they carry a content-type, which the
    // engine's body methods read past the `headers` getter.
    if (headers.includes("content-type\n")) appendPacked(request.headers, headers);
    else setPackedHeaders(request, headers);
    return request;
  }
  const body = requestBody(incoming, cleanup);
  const request = new EngineRequest(url, { method, body, duplex: "half" });
  appendPacked(request.headers, headers);
  return request;
}

// What a Response was constructed with, when that body is in memory whole
// (a string or bytes, or none): such a response goes out in one `respond`
// call without reading its stream. Recorded by the global `Response`,
// which `recordWholeBodies` replaces; other bodies (streams, blobs, form
// data, responses from `fetch`) are streamed. Kept in a property under a
// symbol only the shim holds, which Object.keys, JSON and for-in skip: a
// WeakMap entry costs more per response.
const WHOLE_BODY = Symbol("isola.wholeBody");

export function recordWholeBodies() {
  // The global: `Response` in here is the function declared below.
  const EngineResponse = globalThis.Response;
  // A plain function rather than a Proxy, whose construct trap (and the
  // get trap that `instanceof` and `Response.json` went through) cost
  // microseconds per response. It shares the engine's prototype, so
  // `instanceof Response` holds for every response, the engine's own
  // (`fetch`, `Response.redirect`) included.
  function Response(body, init) {
    // Called without `new`: the engine's own TypeError.
    if (new.target === undefined) return EngineResponse(body, init);
    const response =
      new.target === Response
        ? new EngineResponse(body, init)
        : Reflect.construct(EngineResponse, [body, init], new.target);
    // The constructor copies bytes (Fetch's "extract a body"), so a
    // buffer changed afterwards must not change the response.
    if (typeof body === "string") response[WHOLE_BODY] = body;
    else if (body === null || body === undefined) response[WHOLE_BODY] = "";
    else if (body instanceof ArrayBuffer) response[WHOLE_BODY] = new Uint8Array(body.slice(0));
    else if (ArrayBuffer.isView(body)) {
      const view = new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
      response[WHOLE_BODY] = view.slice();
    }
    return response;
  }
  Response.prototype = EngineResponse.prototype;
  // The engine's statics (`error`, `redirect`) by inheritance.
  Object.setPrototypeOf(Response, EngineResponse);
  // The bundler may rename the declaration (`Response2`).
  Object.defineProperties(Response, {
    name: { value: "Response" },
    length: { value: EngineResponse.length },
  });
  // `Response.json` too: the engine's own would build its response past
  // the global constructor.
  function json(data, init = {}) {
    const text = JSON.stringify(data);
    if (text === undefined) throw new TypeError("Response.json: the value cannot be serialized");
    const headers = new Headers(init.headers);
    if (!headers.has("content-type")) headers.set("content-type", "application/json");
    return new Response(text, { ...init, headers });
  }
  Object.defineProperty(Response, "json", { value: json, writable: true, configurable: true });
  // A response's `constructor` is the global it was made with, as in any
  // engine: `response.constructor === Response` must keep holding.
  Object.defineProperty(EngineResponse.prototype, "constructor", {
    value: Response,
    writable: true,
    configurable: true,
  });
  globalThis.Response = Response;
}

/** The response's whole body when it is known without reading its stream
 * (a recorded one does not touch `response.body`, which makes the engine
 * create a stream). */
function wholeBody(response) {
  const recorded = response[WHOLE_BODY];
  if (recorded === undefined) return response.body === null ? new Uint8Array(0) : undefined;
  if (response.bodyUsed) return undefined;
  return typeof recorded === "string" ? encoder.encode(recorded) : recorded;
}

/** A response's sendable headers packed for `respond`, as UTF-8 bytes. */
function packHeaders(headers) {
  let packed = "";
  for (const entry of headers) {
    if (!HOP_BY_HOP.has(entry[0])) packed += entry[0] + "\n" + entry[1] + "\n";
  }
  return encoder.encode(packed);
}

/** Write `bytes` as fast as the host takes them; true when the last of
 * them may still wait for a flush. */
function writeAll(stream, bytes) {
  // One binding call instead of three for what wasi:io lets it take.
  if (bytes.byteLength <= 4096) {
    stream.blockingWriteAndFlush(bytes);
    return false;
  }
  let offset = 0;
  while (offset < bytes.byteLength) {
    const permitted = Number(stream.checkWrite());
    if (permitted === 0) {
      const ready = stream.subscribe();
      ready.block();
      dispose(ready);
      continue;
    }
    const end = Math.min(bytes.byteLength, offset + permitted);
    stream.write(bytes.subarray(offset, end));
    offset = end;
  }
  return true;
}

/** Send a response whose body is in memory in one call (and answer
 * undefined: no promise to make and await, as for most responses);
 * otherwise answer the promise of `streamResponse`. */
export function sendResponse(response, outparam) {
  const whole = wholeBody(response);
  if (whole === undefined) return streamResponse(response, outparam);
  try {
    respond(outparam, response.status, packHeaders(response.headers), whole);
  } catch (e) {
    throw new TypeError(`the response could not be sent: ${e?.payload ?? errorText(e)}`);
  }
}

/** Hand a response's head to the host, then stream its body. A body that
 * fails midway (or a client that left) ends the response without its
 * terminator, so the client sees it cut short rather than complete. */
async function streamResponse(response, outparam) {
  let body, stream;
  try {
    // One binding call for the head, the body and its stream (indexed,
    // not destructured: see `requestFields`).
    const parts = respondStreaming(outparam, response.status, packHeaders(response.headers));
    body = parts[0];
    stream = parts[1];
  } catch (e) {
    throw new TypeError(`the response could not be sent: ${e?.payload ?? errorText(e)}`);
  }
  let complete = true;
  if (response.body !== null) {
    const reader = response.body.getReader();
    try {
      let unflushed = false;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        unflushed = writeAll(stream, value instanceof Uint8Array ? value : new Uint8Array(value));
      }
      if (unflushed) stream.blockingFlush();
    } catch (e) {
      complete = false;
      reader.cancel().catch(() => {});
      if (!isClosed(e)) console.error(`the response body failed: ${errorText(e)}`);
    }
  }
  dispose(stream);
  if (complete) OutgoingBody.finish(body, undefined);
  else dispose(body);
}
