// The Cache API (`caches.default`, `caches.open(name)`) on `isola:worker/cache`.
//
// Bodies go through the endpoints of the cache's `body` and `upload`
// (`http://cache.isola.internal/...`) with fetch, not through `read` and
// `write`: componentize-js frees what its import glue allocates only when
// an export call returns, so every chunk passed to an import would stay in
// this instance's memory until the request ends, while fetch streams a
// body (either way) chunk by chunk.

import { Cache } from "isola:worker/cache@0.1.0";
import { decoder, encoder } from "./bytes.js";
import { call } from "./errors.js";
import { checkNotWarming } from "./warm-up.js";

/** `headers` as the WIT's list of name and bytes pairs. Through
 * `forEach`, a native call per header, rather than array iteration and
 * destructuring (~20 k instructions an element in the interpreter). */
function headerList(headers) {
  const list = [];
  headers.forEach((value, name) => list.push([name, encoder.encode(value)]));
  return list;
}

// Statuses whose Response may have no body.
const NULL_BODY = new Set([101, 204, 205, 304]);

/** `source` as a stream that frees each chunk once the next is asked for:
 * StarlingMonkey frees a chunk it sends in a response, but not one it sends
 * in a request body, which would then wait for the garbage collector (run
 * only after some tens of MiB: more than a small `memory_mb`). */
function freeingChunks(source) {
  const reader = source.getReader();
  // The engine asks for the next chunk before it writes the last: a chunk
  // is freed two requests later.
  const sent = [];
  return new ReadableStream(
    {
      async pull(controller) {
        if (sent.length >= 2) {
          const old = sent.shift();
          if (old.byteOffset === 0 && old.byteLength === old.buffer.byteLength) {
            old.buffer.transfer(0);
          }
        }
        const { done, value } = await reader.read();
        if (done) {
          controller.close();
          return;
        }
        sent.push(value);
        controller.enqueue(value);
      },
      cancel(reason) {
        return reader.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
}

// The host's `body` or `upload` stays alive while its endpoint is being
// fetched: a resource the collector drops (and the host with it) would
// leave the endpoint with nothing to serve.
const keep = new WeakMap();

export class WorkerCache {
  #name;
  #handle;
  constructor(name) {
    this.#name = name;
  }
  #cache() {
    checkNotWarming(`the cache \`${this.#name}\``);
    this.#handle ??= call(() => Cache.open(this.#name));
    return this.#handle;
  }
  async match(input, options = {}) {
    const request = input instanceof Request ? input : new Request(input);
    if (request.method !== "GET" && !options.ignoreMethod) return undefined;
    const found = call(() => this.#cache().match(request.url, headerList(request.headers)));
    if (found === undefined) return undefined;
    const head = found[0];
    const body = found[1];
    const headers = new Headers();
    for (let i = 0; i < head.headers.length; i++) {
      headers.append(head.headers[i][0], decoder.decode(head.headers[i][1]));
    }
    let stream = null;
    if (!NULL_BODY.has(head.status)) {
      const stored = await fetch(body.endpoint());
      if (!stored.ok) throw new Error(`reading the cached body: ${await stored.text()}`);
      stream = stored.body;
    }
    const response = new Response(stream, { status: head.status, headers });
    keep.set(response, body);
    return response;
  }
  async put(input, response) {
    const request = input instanceof Request ? input : new Request(input);
    if (request.method !== "GET") {
      throw new TypeError("Cannot cache response to non-GET request.");
    }
    if (response.bodyUsed) throw new TypeError("Response body is already used");
    const upload = call(() =>
      this.#cache().put(request.url, headerList(request.headers), {
        status: response.status,
        headers: headerList(response.headers),
      }),
    );
    if (upload === undefined) {
      // Not storable: like Workers, the body is consumed all the same.
      await response.body?.cancel();
      return;
    }
    const stored = await fetch(upload.endpoint(), {
      method: "PUT",
      body: response.body && freeingChunks(response.body),
      duplex: "half",
    });
    const answer = await stored.text();
    keep.set(stored, upload);
    if (!stored.ok) {
      const error = new Error(answer);
      // As a binding call's error: invalid is a TypeError.
      error.name = stored.status === 413 ? "TypeError" : "BackendError";
      throw error;
    }
  }
  async delete(input, options = {}) {
    const request = input instanceof Request ? input : new Request(input);
    if (request.method !== "GET" && !options.ignoreMethod) return false;
    return call(() => this.#cache().delete(request.url, headerList(request.headers)));
  }
}
