// The Isola JavaScript SDK shim: runs a Cloudflare-style worker module
// (`export default { fetch, scheduled, queue }`) on the `isola:worker` WIT
// imports and exports. `isola build` bundles it with the worker. Every
// request gets a fresh instance unless the worker sets `instance_reuse`;
// then module state (as in Workers) lives on, and each request's host
// resources are released when it ends.

import * as ctxApi from "isola:worker/ctx@0.1.0";
import * as envApi from "isola:worker/env@0.1.0";
import * as requestInfo from "isola:worker/request-info@0.1.0";
import { Namespace } from "isola:worker/kv@0.1.0";
import { Database } from "isola:worker/sql@0.1.0";
import { Bucket, Upload } from "isola:worker/blob@0.1.0";
import { Cache } from "isola:worker/cache@0.1.0";
import { Dataset } from "isola:worker/analytics@0.1.0";
import { Producer } from "isola:worker/queue@0.1.0";
import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from "wasi:http/types@0.2.10";
import { readHead, respond } from "isola:worker/http-batch@0.1.0";

const SERVICE_HOST_SUFFIX = ".service.isola.internal";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ---------------------------------------------------------------- errors

/** The text of a thrown value, with its stack when it has one. */
function errorText(e) {
  if (e instanceof Error) {
    const stack = e.stack ? `\n${e.stack.trimEnd()}` : "";
    return `${e.name}: ${e.message}${stack}`;
  }
  try {
    return typeof e === "string" ? e : JSON.stringify(e);
  } catch {
    return String(e);
  }
}

// StarlingMonkey prints an Error given to `console.*` as `(new Error("msg",
// "worker.js", 12))`, without its stack; Workers prints the stack, whose
// positions the host then maps to the worker's own files.
for (const level of ["log", "info", "warn", "error", "debug", "trace"]) {
  const print = console[level];
  if (typeof print !== "function") continue;
  console[level] = function (...args) {
    if (!args.some((a) => a instanceof Error)) return print.apply(console, args);
    return print.apply(
      console,
      args.map((a) => (a instanceof Error ? errorText(a) : a)),
    );
  };
}

/** A binding call's `error` variant as a JavaScript Error. */
function bindingError(e) {
  const payload = e && e.payload;
  if (payload && typeof payload.tag === "string") {
    const error = new Error(String(payload.val));
    error.name =
      payload.tag === "invalid"
        ? "TypeError"
        : payload.tag === "subrequest-limit"
          ? "TooManySubrequests"
          : "BackendError";
    return error;
  }
  return e;
}

/** Run a binding call, turning its `error` into an Error. */
function call(f) {
  try {
    return f();
  } catch (e) {
    throw bindingError(e);
  }
}

// ---------------------------------------------------------------- bytes

async function toBytes(value) {
  if (value === null || value === undefined) return new Uint8Array(0);
  if (typeof value === "string") return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) {
    return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  if (value instanceof ReadableStream || value instanceof Blob) {
    return new Uint8Array(await new Response(value).arrayBuffer());
  }
  throw new TypeError(
    "expected a string, ArrayBuffer, ArrayBufferView, Blob or ReadableStream",
  );
}

function concat(chunks) {
  const total = chunks.reduce((n, c) => n + c.byteLength, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.byteLength;
  }
  return out;
}

const toSeconds = (value) =>
  value === undefined || value === null ? undefined : BigInt(Math.floor(Number(value)));
const fromBig = (value) => (value === undefined ? undefined : Number(value));

// ---------------------------------------------------------------- KV

class KVNamespace {
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

// ---------------------------------------------------------------- D1

function sqlValue(value) {
  if (value === null || value === undefined) return { tag: "null" };
  switch (typeof value) {
    case "number":
      return Number.isInteger(value)
        ? { tag: "integer", val: BigInt(value) }
        : { tag: "real", val: value };
    case "bigint":
      return { tag: "integer", val: value };
    case "boolean":
      return { tag: "integer", val: value ? 1n : 0n };
    case "string":
      return { tag: "text", val: value };
  }
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
    return {
      tag: "blob",
      val:
        value instanceof ArrayBuffer
          ? new Uint8Array(value)
          : new Uint8Array(value.buffer, value.byteOffset, value.byteLength),
    };
  }
  throw new TypeError(`D1_TYPE_ERROR: type '${typeof value}' not supported for value '${value}'`);
}

function jsValue(value) {
  switch (value.tag) {
    case "null":
      return null;
    case "integer":
      return Number(value.val);
    case "real":
      return value.val;
    case "text":
      return value.val;
    case "blob":
      return Array.from(value.val);
  }
}

function d1Meta(meta) {
  return {
    duration: meta.durationMs,
    rows_read: Number(meta.rowsRead),
    rows_written: Number(meta.rowsWritten),
    last_row_id: Number(meta.lastRowId),
    changed_db: meta.changedDb,
    changes: Number(meta.changes),
    size_after: 0,
    served_by: "isola",
  };
}

function d1Objects(rows) {
  return rows.rows.map((row) => {
    const object = {};
    rows.columns.forEach((column, i) => {
      object[column] = jsValue(row[i]);
    });
    return object;
  });
}

function d1Result(rows) {
  return { success: true, meta: d1Meta(rows.meta), results: d1Objects(rows) };
}

class D1PreparedStatement {
  #db;
  constructor(db, sql, params = []) {
    this.#db = db;
    this.sql = sql;
    this.params = params;
  }
  bind(...values) {
    return new D1PreparedStatement(this.#db, this.sql, values.map(sqlValue));
  }
  statement() {
    return { sql: this.sql, params: this.params };
  }
  #query() {
    return call(() => this.#db.handle().query(this.statement()));
  }
  async first(column) {
    const rows = this.#query();
    const [first] = d1Objects(rows);
    if (first === undefined) return null;
    if (column === undefined) return first;
    if (!(column in first)) throw new Error(`D1_COLUMN_NOTFOUND: Column not found (${column})`);
    return first[column];
  }
  async all() {
    return d1Result(this.#query());
  }
  async run() {
    return d1Result(this.#query());
  }
  async raw(options = {}) {
    const rows = this.#query();
    const values = rows.rows.map((row) => row.map(jsValue));
    return options.columnNames ? [rows.columns, ...values] : values;
  }
}

class D1Database {
  #binding;
  #handle;
  constructor(binding) {
    this.#binding = binding;
  }
  handle() {
    this.#handle ??= call(() => Database.open(this.#binding));
    return this.#handle;
  }
  prepare(sql) {
    return new D1PreparedStatement(this, sql);
  }
  async batch(statements) {
    for (const s of statements) {
      if (!(s instanceof D1PreparedStatement)) {
        throw new TypeError("D1 batch: every item must be a statement from prepare()");
      }
    }
    const results = call(() => this.handle().batch(statements.map((s) => s.statement())));
    return results.map(d1Result);
  }
  async exec(sql) {
    const result = call(() => this.handle().exec(sql));
    return { count: result.count, duration: result.durationMs };
  }
}

// ---------------------------------------------------------------- R2

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

const READ_CHUNK = 64 * 1024;

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

class R2Bucket {
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

// ---------------------------------------------------------------- Queues

const CONTENT_TYPES = {
  json: "application/json",
  text: "text/plain",
  bytes: "application/octet-stream",
  v8: "application/json",
};

async function outgoing(body, options = {}) {
  const type = options.contentType ?? "json";
  const contentType = CONTENT_TYPES[type];
  if (!contentType) {
    throw new TypeError(`unknown contentType "${type}": use json, text, bytes or v8`);
  }
  const bytes =
    type === "json" || type === "v8"
      ? encoder.encode(JSON.stringify(body))
      : await toBytes(body);
  return {
    body: bytes,
    options: { contentType, delaySeconds: options.delaySeconds ?? undefined },
  };
}

class WorkerQueue {
  #binding;
  #handle;
  constructor(binding) {
    this.#binding = binding;
  }
  #producer() {
    this.#handle ??= call(() => Producer.open(this.#binding));
    return this.#handle;
  }
  async send(body, options = {}) {
    const message = await outgoing(body, options);
    call(() => this.#producer().send(message.body, message.options));
  }
  async sendBatch(messages, options = {}) {
    const batch = [];
    for (const m of messages) {
      batch.push(
        await outgoing(m.body, {
          contentType: m.contentType,
          delaySeconds: m.delaySeconds ?? options.delaySeconds,
        }),
      );
    }
    call(() => this.#producer().sendBatch(batch));
  }
}

function incomingBody(message) {
  const type = message.contentType.split(";")[0].trim();
  if (type === "application/json") return JSON.parse(decoder.decode(message.body));
  if (type.startsWith("text/")) return decoder.decode(message.body);
  return message.body.slice().buffer;
}

// ---------------------------------------------------------------- Analytics

class AnalyticsEngineDataset {
  #binding;
  #handle;
  constructor(binding) {
    this.#binding = binding;
  }
  writeDataPoint(point = {}) {
    this.#handle ??= call(() => Dataset.open(this.#binding));
    const bytes = (v) =>
      v === null || v === undefined
        ? new Uint8Array(0)
        : typeof v === "string"
          ? encoder.encode(v)
          : v instanceof ArrayBuffer
            ? new Uint8Array(v)
            : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    call(() =>
      this.#handle.writeDataPoint({
        blobs: (point.blobs ?? []).map(bytes),
        doubles: (point.doubles ?? []).map(Number),
        indexes: (point.indexes ?? []).map(bytes),
      }),
    );
  }
}

// ---------------------------------------------------------------- services

class Fetcher {
  #host;
  constructor(binding) {
    this.#host = `${binding.toLowerCase()}${SERVICE_HOST_SUFFIX}`;
  }
  // Async, as every Promise-returning Workers method: a bad URL or init
  // rejects the promise rather than throwing at the call.
  async fetch(input, init) {
    const request = new Request(input, init);
    const url = new URL(request.url);
    url.protocol = "http:";
    url.host = this.#host;
    return fetch(new Request(url, request));
  }
}

// ---------------------------------------------------------------- env, ctx

/** The worker's `env`. Its bindings are read from the host the first time
 * the worker looks at it: host calls go through componentize-js's generated
 * glue (`env.bindings()` and `request-info.get()` cost ~135 µs a request
 * together), and many requests never touch `env` or `cf` at all. The proxy
 * fills its own target, so it behaves as the plain object it becomes. */
function makeEnv() {
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
class ExecutionContext {
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
function fail(e) {
  ctxApi.abort(`Uncaught ${errorText(e)}`);
  throw e;
}

/** `request.cf`, asked of the host when first read (see `makeEnv`). */
function attachCf(request) {
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

// ---------------------------------------------------------------- Cache API

function headerList(headers) {
  return [...headers].map(([name, value]) => [name, encoder.encode(value)]);
}

class WorkerCache {
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

// ---------------------------------------------------------------- globals

/** Workers' `crypto.subtle.timingSafeEqual`: compares in time that depends
 * only on the length. */
function timingSafeEqual(a, b) {
  const x = a instanceof ArrayBuffer ? new Uint8Array(a) : new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const y = b instanceof ArrayBuffer ? new Uint8Array(b) : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  if (x.byteLength !== y.byteLength) {
    throw new TypeError("Input buffers must have the same byte length");
  }
  let diff = 0;
  for (let i = 0; i < x.byteLength; i++) diff |= x[i] ^ y[i];
  return diff === 0;
}

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

function cloneResponse() {
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
async function settled(response) {
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

function installRequestWorkaround() {
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

function installGlobals() {
  installRequestWorkaround();
  if (typeof Response.prototype.clone !== "function") {
    Object.defineProperty(Response.prototype, "clone", { value: cloneResponse, configurable: true });
  }
  const named = new Map();
  const caches = {
    default: new WorkerCache("default"),
    async open(name) {
      if (!named.has(name)) named.set(name, new WorkerCache(String(name)));
      return named.get(name);
    },
  };
  Object.defineProperty(globalThis, "caches", { value: caches, enumerable: true });
  if (globalThis.crypto?.subtle && !crypto.subtle.timingSafeEqual) {
    Object.defineProperty(crypto.subtle, "timingSafeEqual", { value: timingSafeEqual });
  }
  if (typeof Response.json !== "function") {
    Response.json = (data, init = {}) => {
      const headers = new Headers(init.headers);
      if (!headers.has("content-type")) headers.set("content-type", "application/json");
      return new Response(JSON.stringify(data), { ...init, headers });
    };
  }
  installWorkersGlobals();
}

/** Globals Workers has and StarlingMonkey lacks. `navigator.userAgent`
 * is Workers' own, as libraries test it to pick their Workers code path
 * (the APIs Isola provides). */
function installWorkersGlobals() {
  if (globalThis.navigator === undefined) {
    const navigator = { userAgent: "Cloudflare-Workers", hardwareConcurrency: 1, language: "en" };
    Object.defineProperty(globalThis, "navigator", { value: navigator, enumerable: true });
  }
  if (globalThis.scheduler === undefined) {
    const scheduler = {
      wait: (ms, options) =>
        new Promise((resolve, reject) => {
          const signal = options?.signal;
          if (signal?.aborted) return reject(signal.reason);
          const timer = setTimeout(resolve, ms);
          signal?.addEventListener("abort", () => {
            clearTimeout(timer);
            reject(signal.reason);
          });
        }),
    };
    Object.defineProperty(globalThis, "scheduler", { value: scheduler, enumerable: true });
  }
  if (typeof ReadableStream.from !== "function") {
    ReadableStream.from = (iterable) => {
      const iterator =
        iterable[Symbol.asyncIterator]?.() ?? iterable[Symbol.iterator]?.() ??
        (() => {
          throw new TypeError("ReadableStream.from: the argument is not iterable");
        })();
      return new ReadableStream({
        async pull(controller) {
          const { value, done } = await iterator.next();
          if (done) controller.close();
          else controller.enqueue(await value);
        },
        async cancel(reason) {
          await iterator.return?.(reason);
        },
      });
    };
  }
  if (typeof ReadableStream.prototype[Symbol.asyncIterator] !== "function") {
    // `for await (const chunk of stream)`, cancelling the stream when the
    // loop ends early unless told not to.
    function values({ preventCancel = false } = {}) {
      const reader = this.getReader();
      return {
        async next() {
          const result = await reader.read();
          if (result.done) reader.releaseLock();
          return result;
        },
        async return(value) {
          const cancelled = preventCancel ? undefined : reader.cancel(value);
          reader.releaseLock();
          await cancelled;
          return { done: true, value };
        },
        [Symbol.asyncIterator]() {
          return this;
        },
      };
    }
    Object.defineProperty(ReadableStream.prototype, "values", { value: values, configurable: true, writable: true });
    Object.defineProperty(ReadableStream.prototype, Symbol.asyncIterator, {
      value: values,
      configurable: true,
      writable: true,
    });
  }
  if (globalThis.TextDecoderStream === undefined) {
    class TextDecoderStream extends TransformStream {
      constructor(label = "utf-8", options = {}) {
        const decoder = new TextDecoder(label, options);
        super({
          transform(chunk, controller) {
            const text = decoder.decode(chunk, { stream: true });
            if (text) controller.enqueue(text);
          },
          flush(controller) {
            const text = decoder.decode();
            if (text) controller.enqueue(text);
          },
        });
        this.encoding = decoder.encoding;
      }
    }
    globalThis.TextDecoderStream = TextDecoderStream;
  }
  if (globalThis.TextEncoderStream === undefined) {
    class TextEncoderStream extends TransformStream {
      constructor() {
        const encoder = new TextEncoder();
        // A surrogate pair split across chunks is held until its second half.
        let pending = "";
        super({
          transform(chunk, controller) {
            let text = pending + String(chunk);
            pending = "";
            const last = text.charCodeAt(text.length - 1);
            if (last >= 0xd800 && last <= 0xdbff) {
              pending = text.slice(-1);
              text = text.slice(0, -1);
            }
            if (text) controller.enqueue(encoder.encode(text));
          },
          flush(controller) {
            if (pending) controller.enqueue(encoder.encode(pending));
          },
        });
        this.encoding = "utf-8";
      }
    }
    globalThis.TextEncoderStream = TextEncoderStream;
  }
}

installGlobals();

// ---------------------------------------------------------------- handlers

/** The `ctx` of the request (or trigger) being handled, for
 * `cloudflare:workers`' `waitUntil`. */
let currentCtx;

Object.defineProperty(globalThis, Symbol.for("isola.cloudflare-workers"), {
  value: {
    env: makeEnv,
    waitUntil(promise) {
      if (!currentCtx) throw new Error("waitUntil() is only available while handling a request");
      currentCtx.waitUntil(promise);
    },
  },
});

const hasHandler = (worker, name) =>
  typeof worker?.[name] === "function" ||
  (typeof worker === "function" && typeof worker.prototype?.[name] === "function");

/** Call handler `name` of the default export: an object's
 * `name(event, env, ctx)`, or, for a `WorkerEntrypoint` class, `name(event)`
 * on a new instance that has `this.env` and `this.ctx`, as Workers does. */
function callHandler(worker, name, event, ctx) {
  currentCtx = ctx;
  const env = makeEnv();
  if (typeof worker === "function" && typeof worker.prototype?.[name] === "function") {
    return new worker(ctx, env)[name](event);
  }
  return worker[name](event, env, ctx);
}

/** `worker.fetch(request, env, ctx)`, which must answer a Response. */
async function callFetch(worker, request, ctx) {
  if (!hasHandler(worker, "fetch")) {
    throw new Error("the worker's default export has no fetch handler");
  }
  attachCf(request);
  const response = await callHandler(worker, "fetch", request, ctx);
  if (!(response instanceof Response)) {
    throw new TypeError(
      `the fetch handler returned ${response === null ? "null" : typeof response}, not a Response`,
    );
  }
  return response;
}

/** Set when the worker is a service-worker style script (no default
 * export): it registers its own fetch listener. */
let serviceWorkerScript = false;

// Registered by the shim's top level, so before any listener of the
// worker's: gives a service-worker script what Workers gives it, its
// bindings as globals, `request.cf` and `event.passThroughOnException()`,
// and the error handling module workers get.
addEventListener("fetch", (event) => {
  if (!serviceWorkerScript) return;
  const env = makeEnv();
  for (const name of Object.keys(env)) globalThis[name] = env[name];
  attachCf(event.request);
  if (typeof event.passThroughOnException !== "function") {
    event.passThroughOnException = () => ctxApi.passThroughOnException();
  }
  // A rejected response fails the request as a module's exception does:
  // logged with its stack, and passed through to the origin if asked.
  const respondWith = event.respondWith.bind(event);
  event.respondWith = (response) => respondWith(Promise.resolve(response).then(settled).catch(fail));
});

/** Serve fetch events with `worker.fetch(request, env, ctx)`. */
export function installFetch(worker) {
  if (worker === undefined) {
    serviceWorkerScript = true;
    return;
  }
  let served = false;
  addEventListener("fetch", (event) => {
    // The engine would refuse the second event's respondWith with a
    // message that names no cause.
    if (served) {
      ctxApi.abort(
        "this JavaScript component serves one request per instance; build it with `isola build --instance-reuse` to use `instance_reuse`",
      );
    }
    served = true;
    const ctx = new ExecutionContext((promise) => event.waitUntil(promise));
    event.respondWith(
      (async () => {
        try {
          return await settled(await callFetch(worker, event.request, ctx));
        } catch (e) {
          return fail(e);
        }
      })(),
    );
  });
}

// Built with `--instance-reuse`, the shim serves `wasi:http/incoming-handler`
// itself, as StarlingMonkey's fetch event fires only once per instance: an
// instance kept by `instance_reuse` then serves request after request.
// Every binding call goes through componentize-js's generated JavaScript
// glue, ~5 µs each, so the shim reads a request's head with one call and
// sends a response whose body is in memory with one more
// (`isola:worker/http-batch`) instead of ~18 `wasi:http` calls.

const dispose = (resource) => resource?.[Symbol.dispose]();
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

function toRequest(incoming, cleanup) {
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

function recordWholeBodies() {
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
async function sendResponse(response, outparam) {
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

/** The `wasi:http/incoming-handler` export: `worker.fetch(request, env,
 * ctx)`, then the body, then every waitUntil task (allSettled) before the
 * instance is done. */
export function incomingHandlerExport(worker) {
  recordWholeBodies();
  return {
    async handle(incoming, outparam) {
      const cleanup = [];
      const tasks = [];
      const ctx = new ExecutionContext((promise) => tasks.push(promise));
      try {
        let response;
        try {
          response = await callFetch(worker, toRequest(incoming, cleanup), ctx);
        } catch (e) {
          fail(e);
        }
        await sendResponse(response, outparam);
        await Promise.allSettled(tasks);
      } finally {
        for (const release of cleanup.reverse()) release();
        dispose(incoming);
      }
    },
  };
}

/** Run `body(ctx)` and then every waitUntil task (allSettled). */
async function runTrigger(body) {
  const tasks = [];
  const ctx = new ExecutionContext((promise) => tasks.push(promise));
  try {
    await body(ctx);
  } finally {
    await Promise.allSettled(tasks);
  }
}

/** The `handlers` export: which handlers the default export defines. The
 * build gives every worker all the handler exports, since only running the
 * module tells which it has, and the module runs nowhere but in wasm; the
 * host asks this when it loads the worker. */
export function handlersExport(worker) {
  return {
    implemented() {
      // A service-worker script (no default export) serves fetch events.
      if (worker === undefined) return ["fetch"];
      return ["fetch", "scheduled", "queue"].filter((name) => hasHandler(worker, name));
    },
  };
}

/** The `scheduled` export: `worker.scheduled(controller, env, ctx)`. */
export function scheduledExport(worker) {
  return {
    async handle(event) {
      try {
        await runTrigger((ctx) =>
          callHandler(
            worker,
            "scheduled",
            {
              cron: event.cron,
              scheduledTime: Number(event.scheduledTime),
              type: "scheduled",
              noRetry() {},
            },
            ctx,
          ),
        );
      } catch (e) {
        console.error(`Uncaught ${errorText(e)}`);
        throw e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      }
    },
  };
}

/** The `queue-consumer` export: `worker.queue(batch, env, ctx)`, with
 * per-message ack()/retry() and ackAll()/retryAll(). */
export function queueExport(worker) {
  return {
    async handle(incoming) {
      // Explicit calls win; otherwise a handler that returns acks all and
      // one that throws retries all (as in Workers).
      const decisions = incoming.messages.map(() => undefined);
      let all;
      const messages = incoming.messages.map((m, i) => ({
        id: m.id,
        timestamp: new Date(Number(m.timestamp)),
        body: incomingBody(m),
        attempts: m.attempts,
        ack() {
          decisions[i] ??= { tag: "ack" };
        },
        retry(options = {}) {
          decisions[i] ??= { tag: "retry", val: options.delaySeconds ?? undefined };
        },
      }));
      const batch = {
        queue: incoming.queue,
        messages,
        ackAll() {
          all ??= { tag: "ack" };
        },
        retryAll(options = {}) {
          all ??= { tag: "retry", val: options.delaySeconds ?? undefined };
        },
      };
      let fallback = { tag: "ack" };
      try {
        await runTrigger((ctx) => callHandler(worker, "queue", batch, ctx));
      } catch (e) {
        console.error(`Uncaught ${errorText(e)}`);
        fallback = { tag: "retry", val: undefined };
      }
      return decisions.map((d) => d ?? all ?? fallback);
    },
  };
}
