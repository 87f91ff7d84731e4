// `env.KV`: Workers KV on `isola:worker/kv`.

import { Namespace } from "isola:worker/kv@0.1.0";
import { decoder, toBytes, toSeconds } from "./bytes.js";
import { call } from "./errors.js";

export class KVNamespace {
  #binding;
  #handle;
  constructor(binding) {
    this.#binding = binding;
  }
  #ns() {
    this.#handle ??= call(() => Namespace.open(this.#binding));
    return this.#handle;
  }

  async get(key, options) {
    const type = typeof options === "string" ? options : (options?.type ?? "text");
    const value = call(() => this.#ns().get(String(key)));
    return value === undefined ? null : decodeKv(value.data, type);
  }

  async getWithMetadata(key, options) {
    const type = typeof options === "string" ? options : (options?.type ?? "text");
    const value = call(() => this.#ns().get(String(key)));
    if (value === undefined) return { value: null, metadata: null, cacheStatus: null };
    return {
      value: decodeKv(value.data, type),
      metadata: value.metadata === undefined ? null : JSON.parse(value.metadata),
      cacheStatus: null,
    };
  }

  async put(key, value, options = {}) {
    const data = await toBytes(value);
    const metadata =
      options.metadata === undefined ? undefined : JSON.stringify(options.metadata);
    call(() =>
      this.#ns().put(String(key), data, {
        expirationTtl: toSeconds(options.expirationTtl),
        expiration: toSeconds(options.expiration),
        metadata,
      }),
    );
  }

  async delete(key) {
    call(() => this.#ns().delete(String(key)));
  }

  async list(options = {}) {
    const result = call(() =>
      this.#ns().list({
        prefix: options.prefix ?? undefined,
        limit: options.limit ?? undefined,
        cursor: options.cursor || undefined,
      }),
    );
    const keys = result.keys.map((k) => {
      const key = { name: k.name };
      if (k.expiration !== undefined) key.expiration = Number(k.expiration);
      if (k.metadata !== undefined) key.metadata = JSON.parse(k.metadata);
      return key;
    });
    const page = { keys, list_complete: result.listComplete, cacheStatus: null };
    if (!result.listComplete) page.cursor = result.cursor;
    return page;
  }
}

function decodeKv(bytes, type) {
  switch (type) {
    case "text":
      return decoder.decode(bytes);
    case "json":
      return JSON.parse(decoder.decode(bytes));
    case "arrayBuffer":
      return bytes.slice().buffer;
    case "stream":
      return new Response(bytes).body;
    default:
      throw new TypeError(`unknown KV type "${type}": use text, json, arrayBuffer or stream`);
  }
}
