// The Cache API (`caches.default`, `caches.open(name)`) on `isola:worker/cache`.

import { Cache } from "isola:worker/cache@0.1.0";
import { decoder, encoder } from "./bytes.js";
import { call } from "./errors.js";

function headerList(headers) {
  return [...headers].map(([name, value]) => [name, encoder.encode(value)]);
}

export class WorkerCache {
  #name;
  #handle;
  constructor(name) {
    this.#name = name;
  }
  #cache() {
    this.#handle ??= call(() => Cache.open(this.#name));
    return this.#handle;
  }
  async match(input, options = {}) {
    const request = input instanceof Request ? input : new Request(input);
    if (request.method !== "GET" && !options.ignoreMethod) return undefined;
    const found = call(() => this.#cache().match(request.url, headerList(request.headers)));
    if (found === undefined) return undefined;
    const headers = new Headers();
    for (const [name, value] of found.headers) headers.append(name, decoder.decode(value));
    return new Response(found.status === 204 || found.status === 304 ? null : found.body, {
      status: found.status,
      headers,
    });
  }
  async put(input, response) {
    const request = input instanceof Request ? input : new Request(input);
    if (request.method !== "GET") {
      throw new TypeError("Cannot cache response to non-GET request.");
    }
    if (response.bodyUsed) throw new TypeError("Response body is already used");
    const body = new Uint8Array(await response.arrayBuffer());
    call(() =>
      this.#cache().put(request.url, headerList(request.headers), {
        status: response.status,
        headers: headerList(response.headers),
        body,
      }),
    );
  }
  async delete(input, options = {}) {
    const request = input instanceof Request ? input : new Request(input);
    if (request.method !== "GET" && !options.ignoreMethod) return false;
    return call(() => this.#cache().delete(request.url, headerList(request.headers)));
  }
}
