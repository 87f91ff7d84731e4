// `env.BUCKET`: R2 on `isola:worker/blob`.

import { Bucket, Upload } from "isola:worker/blob@0.1.0";
import { READ_CHUNK, toBytes, toSeconds } from "./bytes.js";
import { call } from "./errors.js";

const HTTP_METADATA_FIELDS = [
  ["contentType", "content-type"],
  ["contentLanguage", "content-language"],
  ["contentDisposition", "content-disposition"],
  ["contentEncoding", "content-encoding"],
  ["cacheControl", "cache-control"],
];

function httpMetadataIn(value) {
  const out = {};
  if (!value) return out;
  const headers = value instanceof Headers ? value : null;
  for (const [field, header] of HTTP_METADATA_FIELDS) {
    const v = headers ? headers.get(header) : value[field];
    if (v !== null && v !== undefined) out[field] = String(v);
  }
  return out;
}

class R2Object {
  constructor(object, range) {
    this.key = object.key;
    this.version = object.etag;
    this.size = Number(object.size);
    this.etag = object.etag;
    this.httpEtag = `"${object.etag}"`;
    this.uploaded = new Date(Number(object.uploaded));
    this.httpMetadata = {};
    for (const [field] of HTTP_METADATA_FIELDS) {
      if (object.httpMetadata[field] !== undefined) {
        this.httpMetadata[field] = object.httpMetadata[field];
      }
    }
    this.customMetadata = Object.fromEntries(object.customMetadata);
    this.checksums = { md5: hexToBytes(object.etag).buffer };
    this.storageClass = "Standard";
    if (range) this.range = range;
  }
  writeHttpMetadata(headers) {
    for (const [field, header] of HTTP_METADATA_FIELDS) {
      if (this.httpMetadata[field] !== undefined) headers.set(header, this.httpMetadata[field]);
    }
  }
}

function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}


class R2ObjectBody extends R2Object {
  #stream;
  constructor(object, body, range) {
    super(object, range);
    this.#stream = new ReadableStream({
      pull(controller) {
        const chunk = call(() => body.read(READ_CHUNK));
        if (chunk.byteLength === 0) controller.close();
        else controller.enqueue(chunk);
      },
    });
  }
  get body() {
    return this.#stream;
  }
  get bodyUsed() {
    return this.#stream.locked;
  }
  // Async so that any failure rejects rather than throws.
  async arrayBuffer() {
    return new Response(this.#stream).arrayBuffer();
  }
  async text() {
    return new Response(this.#stream).text();
  }
  async json() {
    return new Response(this.#stream).json();
  }
  async blob() {
    return new Response(this.#stream).blob();
  }
}

function r2Range(range) {
  if (!range) return undefined;
  if (range instanceof Headers) {
    const match = /^bytes=(\d*)-(\d*)$/.exec(range.get("range") ?? "");
    if (!match) return undefined;
    const [, start, end] = match;
    if (start === "") return { suffix: BigInt(end) };
    return end === ""
      ? { offset: BigInt(start) }
      : { offset: BigInt(start), length: BigInt(end) - BigInt(start) + 1n };
  }
  return {
    offset: toSeconds(range.offset),
    length: toSeconds(range.length),
    suffix: toSeconds(range.suffix),
  };
}

export class R2Bucket {
  #binding;
  #handle;
  constructor(binding) {
    this.#binding = binding;
  }
  #bucket() {
    this.#handle ??= call(() => Bucket.open(this.#binding));
    return this.#handle;
  }
  async head(key) {
    const object = call(() => this.#bucket().head(String(key)));
    return object === undefined ? null : new R2Object(object);
  }
  async get(key, options = {}) {
    const range = r2Range(options.range);
    const found = call(() => this.#bucket().get(String(key), range));
    if (found === undefined) return null;
    const [object, body] = found;
    return new R2ObjectBody(object, body, options.range ? rangeOf(range, object) : undefined);
  }
  async put(key, value, options = {}) {
    const upload = call(() =>
      this.#bucket().put(String(key), {
        httpMetadata: httpMetadataIn(options.httpMetadata),
        customMetadata: Object.entries(options.customMetadata ?? {}).map(([k, v]) => [
          k,
          String(v),
        ]),
      }),
    );
    if (value instanceof ReadableStream) {
      const reader = value.getReader();
      for (;;) {
        const { done, value: chunk } = await reader.read();
        if (done) break;
        const bytes = await toBytes(chunk);
        call(() => upload.write(bytes));
      }
    } else {
      const bytes = await toBytes(value);
      for (let i = 0; i < bytes.byteLength; i += READ_CHUNK) {
        const chunk = bytes.subarray(i, i + READ_CHUNK);
        call(() => upload.write(chunk));
      }
    }
    return new R2Object(call(() => Upload.finish(upload)));
  }
  async delete(keys) {
    const list = Array.isArray(keys) ? keys.map(String) : [String(keys)];
    call(() => this.#bucket().delete(list));
  }
  async list(options = {}) {
    const result = call(() =>
      this.#bucket().list({
        prefix: options.prefix ?? undefined,
        delimiter: options.delimiter ?? undefined,
        cursor: options.cursor || undefined,
        limit: options.limit ?? undefined,
      }),
    );
    const page = {
      objects: result.objects.map((o) => new R2Object(o)),
      delimitedPrefixes: result.delimitedPrefixes,
      truncated: result.truncated,
    };
    if (result.truncated) page.cursor = result.cursor;
    return page;
  }
}

function rangeOf(range, object) {
  const size = Number(object.size);
  if (range.suffix !== undefined) return { suffix: Number(range.suffix) };
  const offset = Number(range.offset ?? 0n);
  const length =
    range.length === undefined ? size - offset : Math.min(Number(range.length), size - offset);
  return { offset, length };
}
