// Serving `wasi:http/incoming-handler` in the shim (`--instance-reuse`):
// the incoming request as a Request, and a Response sent back to the host.

import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from "wasi:http/types@0.2.10";
import { readHead, respond } from "isola:worker/http-batch@0.1.0";
import { encoder, READ_CHUNK } from "./bytes.js";
import { errorText } from "./errors.js";

// Built with `--instance-reuse`, the shim serves `wasi:http/incoming-handler`
// itself, as StarlingMonkey's fetch event fires only once per instance: an
// instance kept by `instance_reuse` then serves request after request.
// Every binding call goes through componentize-js's generated JavaScript
// glue, ~5 µs each, so the shim reads a request's head with one call and
// sends a response whose body is in memory with one more
// (`isola:worker/http-batch`) instead of ~18 `wasi:http` calls.

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

// Header values are byte strings (Fetch's ByteString): one char per byte.
function latin1Bytes(text) {
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

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
  const head = readHead(incoming);
  const init = { method: head.method, headers: unpackHeaders(head.headers) };
  if (head.method !== "GET" && head.method !== "HEAD") {
    init.body = requestBody(incoming, cleanup);
    init.duplex = "half";
  }
  return new Request(head.url, init);
}

// What a Response was constructed with, when that body is in memory whole
// (a string or bytes): such a response goes out in one `respond` call
// without reading its stream. Recorded by the `Response` constructor,
// which `recordWholeBodies` wraps; other bodies (streams, blobs, form
// data, responses from `fetch`) are streamed.
const wholeBodies = new WeakMap();

export function recordWholeBodies() {
  // `Response.json` too: the engine's own would build its response past
  // the wrapped constructor.
  const json = (data, init = {}) => {
    const text = JSON.stringify(data);
    if (text === undefined) throw new TypeError("Response.json: the value cannot be serialized");
    const headers = new Headers(init.headers);
    if (!headers.has("content-type")) headers.set("content-type", "application/json");
    return new globalThis.Response(text, { ...init, headers });
  };
  const recording = new Proxy(Response, {
    get(target, key, receiver) {
      return key === "json" ? json : Reflect.get(target, key, receiver);
    },
    construct(target, args, newTarget) {
      const response = Reflect.construct(target, args, newTarget);
      const body = args[0];
      // The constructor copies bytes (Fetch's "extract a body"), so a
      // buffer changed afterwards must not change the response.
      if (typeof body === "string") wholeBodies.set(response, body);
      else if (body instanceof ArrayBuffer) wholeBodies.set(response, new Uint8Array(body.slice(0)));
      else if (ArrayBuffer.isView(body)) {
        const view = new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
        wholeBodies.set(response, view.slice());
      }
      return response;
    },
  });
  // A response's `constructor` is the global it was made with, as in any
  // engine: `response.constructor === Response` must keep holding.
  Object.defineProperty(Response.prototype, "constructor", {
    value: recording,
    writable: true,
    configurable: true,
  });
  globalThis.Response = recording;
}

/** The response's whole body when it is known without reading its stream. */
function wholeBody(response) {
  if (response.body === null) return new Uint8Array(0);
  if (response.bodyUsed) return undefined;
  const body = wholeBodies.get(response);
  return typeof body === "string" ? encoder.encode(body) : body;
}

/** A response's headers as [name, value] pairs, less those the host refuses. */
function sendableHeaders(headers) {
  const list = [];
  for (const entry of headers) {
    if (!HOP_BY_HOP.has(entry[0])) list.push(entry);
  }
  return list;
}

// `isola:worker/http-batch` packs headers into one string, `name\nvalue\n`
// each: the glue lifts and lowers a list of string pairs string by string
// in interpreted JavaScript, one string natively.
function unpackHeaders(packed) {
  const headers = new Headers();
  const parts = packed.split("\n");
  // The last part is the empty string after the final newline.
  for (let i = 0; i + 1 < parts.length; i += 2) headers.append(parts[i], parts[i + 1]);
  return headers;
}

/** A response's sendable headers packed for `respond`, as UTF-8 bytes. */
function packHeaders(headers) {
  let packed = "";
  for (const entry of headers) {
    if (!HOP_BY_HOP.has(entry[0])) packed += entry[0] + "\n" + entry[1] + "\n";
  }
  return encoder.encode(packed);
}

function responseFields(headers) {
  return Fields.fromList(sendableHeaders(headers).map(([name, value]) => [name, latin1Bytes(value)]));
}

/** Write `bytes` as fast as the host takes them. */
function writeAll(stream, bytes) {
  // One binding call instead of three for what wasi:io lets it take.
  if (bytes.byteLength <= 4096) {
    stream.blockingWriteAndFlush(bytes);
    return;
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
}

/** Send a response whose body is in memory in one call; otherwise hand its
 * head to the host, then stream its body. A body that fails midway (or a
 * client that left) ends the response without its terminator, so the
 * client sees it cut short rather than complete. */
export async function sendResponse(response, outparam) {
  const whole = wholeBody(response);
  if (whole !== undefined) {
    try {
      respond(outparam, response.status, packHeaders(response.headers), whole);
    } catch (e) {
      throw new TypeError(`the response could not be sent: ${e?.payload ?? errorText(e)}`);
    }
    return;
  }
  const outgoing = new OutgoingResponse(responseFields(response.headers));
  outgoing.setStatusCode(response.status);
  const body = outgoing.body();
  const stream = body.write();
  ResponseOutparam.set(outparam, { tag: "ok", val: outgoing });
  let complete = true;
  if (response.body !== null) {
    const reader = response.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        writeAll(stream, value instanceof Uint8Array ? value : new Uint8Array(value));
      }
      stream.blockingFlush();
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
