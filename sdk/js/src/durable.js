// Durable Objects on `isola:worker/durable-object` and
// `isola:worker/durable-object-storage`: the namespace a binding gives
// (`env.COUNTER`), its ids and stubs, and, when a run serves an object, the
// object itself: its class's instance, `ctx.storage`, fetch, RPC and alarm
// events.
//
// A stub needs no host resource: its `fetch` is an outbound request to
// `http://<binding>.object.isola.internal/<path>` with the object's id (and
// the name it was made from) in headers, which the host takes off and
// delivers to the object, one event at a time. An RPC call
// (`await stub.increment(5)`) is such a request too: a POST to
// `/__isola/rpc` naming the method in `isola-object-rpc`, the arguments as
// structured-clone bytes (clone.js); the object answers 200 with the
// result's bytes, or 500 with `isola-object-rpc-error` and the error's name
// and message, which the caller throws again.

import * as ctxApi from "isola:worker/ctx@0.1.0";
import * as objectApi from "isola:worker/durable-object@0.1.0";
import * as storageApi from "isola:worker/durable-object-storage@0.1.0";
import { decoder } from "./bytes.js";
import { dataCloneError, deserialize, serialize } from "./clone.js";
import { call, errorText } from "./errors.js";

const OBJECT_HOST_SUFFIX = ".object.isola.internal";
const ID_HEADER = "isola-object-id";
const NAME_HEADER = "isola-object-name";
const RPC_HEADER = "isola-object-rpc";
const RPC_ERROR_HEADER = "isola-object-rpc-error";
const RPC_PATH = "/__isola/rpc";
const CLONE_TYPE = "application/x-isola-clone";
/** Keys one get/put/delete call takes at most, as in Workers. */
const MAX_KEYS = 128;

// ---------------------------------------------------------------------------
// Ids, namespaces and stubs (the caller's side).

const ID_HEX = Symbol("isola.objectId");

export class DurableObjectId {
  constructor(hex, name) {
    Object.defineProperty(this, ID_HEX, { value: hex });
    // `name` is there for ids made by `idFromName`, as in Workers.
    Object.defineProperty(this, "name", { value: name, enumerable: true });
  }
  toString() {
    return this[ID_HEX];
  }
  toJSON() {
    return this[ID_HEX];
  }
  equals(other) {
    return other instanceof DurableObjectId && other[ID_HEX] === this[ID_HEX];
  }
  get jurisdiction() {
    return undefined;
  }
}

export class DurableObjectNamespace {
  #binding;
  #host;
  constructor(binding) {
    this.#binding = binding;
    this.#host = `${binding.toLowerCase()}${OBJECT_HOST_SUFFIX}`;
  }
  idFromName(name) {
    name = String(name);
    return new DurableObjectId(
      call(() => objectApi.idFromName(this.#binding, name)),
      name,
    );
  }
  newUniqueId(_options) {
    return new DurableObjectId(call(() => objectApi.newUniqueId(this.#binding)), undefined);
  }
  idFromString(id) {
    return new DurableObjectId(
      call(() => objectApi.idFromString(this.#binding, String(id))),
      undefined,
    );
  }
  get(id, _options) {
    if (!(id instanceof DurableObjectId)) {
      throw new TypeError(
        "get() takes a DurableObjectId: use idFromName(), newUniqueId() or idFromString() first, or getByName()",
      );
    }
    return makeStub(this.#host, id);
  }
  getByName(name, options) {
    return this.get(this.idFromName(name), options);
  }
  /** Jurisdictions place objects in Workers; Isola has one place. */
  jurisdiction(_name) {
    return this;
  }
}

/** The headers that address `id`'s object. */
function addressHeaders(headers, id) {
  headers.set(ID_HEADER, id.toString());
  if (id.name !== undefined) headers.set(NAME_HEADER, encodeURIComponent(id.name));
  else headers.delete(NAME_HEADER);
}

/** The error an object answered, thrown again at the caller. */
function remoteError(bytes) {
  let name = "Error";
  let message = "the Durable Object failed";
  try {
    const sent = deserialize(bytes);
    name = String(sent?.name ?? name);
    message = String(sent?.message ?? message);
  } catch {
    message = decoder.decode(bytes);
  }
  const Type = ["Error", "EvalError", "RangeError", "ReferenceError", "SyntaxError", "TypeError", "URIError"].includes(name)
    ? globalThis[name]
    : Error;
  const error = new Type(message);
  if (error.name !== name) error.name = name;
  // As Workers marks an exception that came from another isolate.
  error.remote = true;
  return error;
}

/** Names a stub answers itself; any other is a method called over RPC.
 * `then` is none, so that a stub is no thenable (awaiting one gives it). */
const STUB_OWN = new Set(["fetch", "id", "name", "then", "connect"]);

function makeStub(host, id) {
  const stub = {
    id,
    name: id.name,
    async fetch(input, init) {
      const request = new Request(input, init);
      const url = new URL(request.url);
      const headers = new Headers(request.headers);
      // Only RPC calls set it: a request from user code never triggers one.
      headers.delete(RPC_HEADER);
      addressHeaders(headers, id);
      const target = `http://${host}${url.pathname}${url.search}`;
      const outgoing = { method: request.method, headers, redirect: "manual" };
      if (request.body !== null) {
        outgoing.body = request.body;
        outgoing.duplex = "half";
      }
      const response = await fetch(target, outgoing);
      // The object threw (or could not be made): the caller's fetch throws
      // it, as in Workers.
      if (response.headers.has(RPC_ERROR_HEADER)) {
        throw remoteError(new Uint8Array(await response.arrayBuffer()));
      }
      return response;
    },
    connect() {
      throw new Error("connect() on a Durable Object stub is not available on Isola");
    },
  };
  return new Proxy(stub, {
    get(target, key, receiver) {
      if (typeof key === "symbol" || STUB_OWN.has(key) || key in target) {
        return key === "then" ? undefined : Reflect.get(target, key, receiver);
      }
      return (...args) => callMethod(host, id, key, args);
    },
  });
}

/** `stub[method](...args)` over RPC. */
async function callMethod(host, id, method, args) {
  // Encoding throws DataCloneError for a function argument: rejected, as
  // an async call in Workers.
  const body = serialize(args);
  const headers = new Headers({ "content-type": CLONE_TYPE, [RPC_HEADER]: encodeURIComponent(method) });
  addressHeaders(headers, id);
  const response = await fetch(`http://${host}${RPC_PATH}`, { method: "POST", headers, body });
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (response.headers.has(RPC_ERROR_HEADER)) throw remoteError(bytes);
  if (response.status !== 200) {
    const text = decoder.decode(bytes).trim();
    throw new Error(
      `Durable Object RPC ${method}() failed: ${response.status}${text ? ` ${text}` : ""}`,
    );
  }
  return deserialize(bytes);
}

// ---------------------------------------------------------------------------
// Storage (`ctx.storage`): the object's own keys, SQL and alarm.

function keyOf(key, what = "key") {
  if (key === undefined) throw new TypeError(`the ${what} is undefined`);
  return String(key);
}

function keyList(keys) {
  if (keys.length > MAX_KEYS) throw new RangeError(`Maximum number of keys is ${MAX_KEYS}.`);
  return keys.filter((key) => key !== undefined).map((key) => keyOf(key));
}

const byKey = (a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);

function entriesMap(entries) {
  const map = new Map();
  for (const [key, bytes] of entries) map.set(key, deserialize(bytes));
  return map;
}

function alarmTime(time) {
  const ms = time instanceof Date ? time.getTime() : Number(time);
  if (!Number.isFinite(ms)) throw new TypeError("setAlarm() takes a Date or milliseconds since the epoch");
  return BigInt(Math.max(0, Math.floor(ms)));
}

/** get, put, delete and list: what a storage and a transaction share. */
class StorageOperations {
  /** Throws when this handle may no longer be used. */
  check(_op) {}

  async get(keys, _options) {
    this.check("get");
    if (Array.isArray(keys)) {
      const list = keyList(keys);
      const found = call(() => storageApi.get(list));
      return entriesMap(found.sort(byKey));
    }
    const key = keyOf(keys);
    const [found] = call(() => storageApi.get([key]));
    return found === undefined ? undefined : deserialize(found[1]);
  }

  async put(keyOrEntries, value, _options) {
    this.check("put");
    let entries;
    if (typeof keyOrEntries === "string") {
      if (value === undefined) throw new TypeError("put() called with undefined value.");
      entries = [[keyOrEntries, serialize(value)]];
    } else if (keyOrEntries !== null && typeof keyOrEntries === "object") {
      const pairs = Object.entries(keyOrEntries);
      if (pairs.length > MAX_KEYS) throw new RangeError(`Maximum number of pairs is ${MAX_KEYS}.`);
      entries = pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [k, serialize(v)]);
    } else {
      if (keyOrEntries === undefined) throw new TypeError("put() takes a key and a value, or an object of entries");
      if (value === undefined) throw new TypeError("put() called with undefined value.");
      entries = [[String(keyOrEntries), serialize(value)]];
    }
    if (entries.length > 0) call(() => storageApi.put(entries));
  }

  async delete(keys, _options) {
    this.check("delete");
    if (Array.isArray(keys)) {
      const list = keyList(keys);
      return list.length === 0 ? 0 : call(() => storageApi.delete(list));
    }
    const key = keyOf(keys);
    return call(() => storageApi.delete([key])) > 0;
  }

  async list(options = {}) {
    this.check("list");
    const { start, startAfter, end, prefix, reverse, limit } = options ?? {};
    if (start !== undefined && startAfter !== undefined) {
      throw new TypeError("list() cannot be called with both start and startAfter values.");
    }
    if (limit !== undefined && !(Number(limit) > 0)) throw new TypeError("List limit must be positive.");
    const found = call(() =>
      storageApi.list({
        start: start === undefined ? undefined : String(start),
        startAfter: startAfter === undefined ? undefined : String(startAfter),
        end: end === undefined ? undefined : String(end),
        prefix: prefix === undefined ? undefined : String(prefix),
        reverse: Boolean(reverse),
        limit: limit === undefined ? undefined : Math.min(Math.floor(Number(limit)), 0xffffffff),
      }),
    );
    return entriesMap(found);
  }

  async getAlarm(_options) {
    this.check("getAlarm");
    const at = call(() => storageApi.getAlarm());
    return at === undefined ? null : Number(at);
  }

  async setAlarm(time, _options) {
    this.check("setAlarm");
    const at = alarmTime(time);
    call(() => storageApi.setAlarm(at));
  }

  async deleteAlarm(_options) {
    this.check("deleteAlarm");
    call(() => storageApi.deleteAlarm());
  }
}

export class DurableObjectTransaction extends StorageOperations {
  #rolledBack = false;
  #done = false;
  check(op) {
    if (this.#rolledBack) throw new Error(`Cannot ${op}() on rolled back transaction`);
    if (this.#done) {
      throw new Error(
        `Cannot call ${op}() on transaction that has already committed: did you move \`txn\` outside of the closure?`,
      );
    }
  }
  async deleteAll() {
    throw new Error("Cannot call deleteAll() within a transaction");
  }
  rollback() {
    if (this.#rolledBack) return;
    this.check("rollback");
    this.#rolledBack = true;
    call(() => storageApi.rollback());
  }
  /** For `transaction()`: whether `rollback()` ended it; marks it done. */
  finish() {
    this.#done = true;
    return this.#rolledBack;
  }
}

/** A SQL value for `sql-exec`. */
function sqlParam(value) {
  if (value === null || value === undefined) return { tag: "null" };
  switch (typeof value) {
    case "number":
      return Number.isSafeInteger(value) && !Object.is(value, -0)
        ? { tag: "integer", val: BigInt(value) }
        : { tag: "real", val: value };
    case "bigint":
      return { tag: "integer", val: value };
    case "boolean":
      return { tag: "integer", val: value ? 1n : 0n };
    case "string":
      return { tag: "text", val: value };
  }
  if (value instanceof ArrayBuffer) return { tag: "blob", val: new Uint8Array(value) };
  if (ArrayBuffer.isView(value)) {
    return { tag: "blob", val: new Uint8Array(value.buffer, value.byteOffset, value.byteLength) };
  }
  throw new TypeError(`SQL bindings take numbers, bigints, strings, booleans, null and ArrayBuffers, not ${typeof value}`);
}

/** A column's value as Workers' SQL API gives it. */
function sqlResult(value) {
  switch (value.tag) {
    case "null":
      return null;
    case "integer": {
      const n = Number(value.val);
      if (!Number.isSafeInteger(n)) {
        throw new RangeError(`the integer ${value.val} is beyond Number.MAX_SAFE_INTEGER: CAST it to TEXT`);
      }
      return n;
    }
    case "real":
      return value.val;
    case "text":
      return value.val;
    case "blob":
      return value.val.slice().buffer;
  }
}

export class SqlStorageCursor {
  #columns;
  #rows;
  #next = 0;
  constructor(cursor) {
    this.#columns = cursor.columns;
    this.#rows = cursor.rows;
    this.rowsRead = Number(cursor.rowsRead);
    this.rowsWritten = Number(cursor.rowsWritten);
  }
  get columnNames() {
    return this.#columns.slice();
  }
  #object(row) {
    const object = {};
    this.#columns.forEach((column, i) => {
      object[column] = sqlResult(row[i]);
    });
    return object;
  }
  next() {
    if (this.#next >= this.#rows.length) return { done: true, value: undefined };
    return { done: false, value: this.#object(this.#rows[this.#next++]) };
  }
  toArray() {
    const rows = this.#rows.slice(this.#next).map((row) => this.#object(row));
    this.#next = this.#rows.length;
    return rows;
  }
  one() {
    const left = this.#rows.length - this.#next;
    if (left === 0) throw new Error("Expected exactly one result from SQL query, but got no results.");
    if (left > 1) throw new Error("Expected exactly one result from SQL query, but got multiple results.");
    return this.next().value;
  }
  raw() {
    const cursor = this;
    const rows = this.#rows;
    const iterator = {
      next() {
        if (cursor.#next >= rows.length) return { done: true, value: undefined };
        return { done: false, value: rows[cursor.#next++].map(sqlResult) };
      },
      toArray() {
        const left = rows.slice(cursor.#next).map((row) => row.map(sqlResult));
        cursor.#next = rows.length;
        return left;
      },
      [Symbol.iterator]() {
        return this;
      },
    };
    return iterator;
  }
  [Symbol.iterator]() {
    return this;
  }
}

export class SqlStorage {
  exec(query, ...bindings) {
    const params = bindings.map(sqlParam);
    return new SqlStorageCursor(call(() => storageApi.sqlExec(String(query), params)));
  }
  get databaseSize() {
    return Number(call(() => storageApi.databaseSize()));
  }
}

export class DurableObjectStorage extends StorageOperations {
  #sql;
  #hasAlarm;
  constructor(hasAlarm) {
    super();
    this.#hasAlarm = hasAlarm;
  }
  get sql() {
    this.#sql ??= new SqlStorage();
    return this.#sql;
  }
  async setAlarm(time, options) {
    if (!this.#hasAlarm()) {
      throw new TypeError(
        "Your Durable Object class must have an alarm() handler in order to call setAlarm()",
      );
    }
    return super.setAlarm(time, options);
  }
  async deleteAll(_options) {
    call(() => storageApi.deleteAll());
  }
  async transaction(closure) {
    call(() => storageApi.begin());
    const txn = new DurableObjectTransaction();
    let result;
    try {
      result = await closure(txn);
    } catch (e) {
      if (!txn.finish()) call(() => storageApi.rollback());
      throw e;
    }
    if (!txn.finish()) call(() => storageApi.commit());
    return result;
  }
  transactionSync(closure) {
    call(() => storageApi.begin());
    let result;
    try {
      result = closure();
    } catch (e) {
      call(() => storageApi.rollback());
      throw e;
    }
    call(() => storageApi.commit());
    return result;
  }
  /** Every write is durable when its call returns: nothing to wait for. */
  async sync() {}
  getCurrentBookmark() {
    return Promise.reject(new Error("point-in-time recovery is not available on Isola"));
  }
}

// ---------------------------------------------------------------------------
// The object's side: the class's instance and its events.

/** The `ctx` of the event being served, for `state.waitUntil`. */
let eventCtx;

export class DurableObjectState {
  #pending = [];
  constructor(object, hasAlarm) {
    this.id = new DurableObjectId(object.id, object.name);
    this.storage = new DurableObjectStorage(hasAlarm);
    this.props = {};
  }
  waitUntil(promise) {
    if (eventCtx === undefined) {
      throw new Error("waitUntil() is only available while the object handles an event");
    }
    eventCtx.waitUntil(promise);
  }
  /** Events are delivered one at a time already; the next waits for
   * `callback` as well (an object whose callback throws is made anew). */
  blockConcurrencyWhile(callback) {
    const done = (async () => callback())();
    this.#pending.push(done);
    return done;
  }
  /** Wait for every `blockConcurrencyWhile` callback so far. */
  async settle() {
    while (this.#pending.length > 0) {
      const pending = this.#pending;
      this.#pending = [];
      await Promise.all(pending);
    }
  }
  /** End the run and reset the object's instance (its storage stays). */
  abort(reason) {
    ctxApi.abort(`the Durable Object aborted: ${reason === undefined ? "abort()" : errorText(reason)}`);
  }
  acceptWebSocket() {
    throw new Error("WebSocket hibernation is not available on Isola's Durable Objects yet");
  }
  getWebSockets() {
    return [];
  }
  getTags() {
    return [];
  }
  setWebSocketAutoResponse() {}
  getWebSocketAutoResponse() {
    return null;
  }
}

/** The object a run serves and the event it delivers, or undefined. */
export function currentObject() {
  return objectApi.current();
}

/** Class name and id → { instance, state }: the host keeps one instance
 * per object alive across its events, so the class is constructed once. */
const instances = new Map();

async function objectInstance(module, object, makeEnv) {
  const key = `${object.className}\0${object.id}`;
  let entry = instances.get(key);
  if (entry === undefined) {
    const Class = Object.hasOwn(module, object.className) ? module[object.className] : undefined;
    if (typeof Class !== "function" || object.className === "default") {
      throw new TypeError(
        `the worker's main module exports no class \`${object.className}\`: a Durable Object class is exported by name (\`export class ${object.className} { ... }\`)`,
      );
    }
    let instance;
    const state = new DurableObjectState(object, () => typeof instance?.alarm === "function" || typeof Class.prototype?.alarm === "function");
    instance = new Class(state, makeEnv());
    entry = { instance, state };
    instances.set(key, entry);
  } else if (object.name !== undefined && entry.state.id.name === undefined) {
    // Made for an event that did not say the name (an alarm): the first
    // that does names it.
    entry.state.id = new DurableObjectId(object.id, object.name);
  }
  try {
    await entry.state.settle();
  } catch (e) {
    // As in Workers, a failed blockConcurrencyWhile resets the object.
    instances.delete(key);
    throw e;
  }
  return entry.instance;
}

/** An error answered to the caller, who throws it again. */
function errorResponse(e) {
  const error =
    e instanceof Error ? { name: e.name, message: e.message } : { name: "Error", message: errorText(e) };
  let body;
  try {
    body = serialize(error);
  } catch {
    body = serialize({ name: "Error", message: String(error.message) });
  }
  return new Response(body, {
    status: 500,
    headers: { "content-type": CLONE_TYPE, [RPC_ERROR_HEADER]: "1" },
  });
}

/** Methods an RPC call may not name: the constructor, the handlers the
 * host calls, and Object's own. */
const NOT_RPC = new Set(["constructor", "fetch", "alarm", "webSocketMessage", "webSocketClose", "webSocketError"]);

async function rpc(instance, request) {
  const method = decodeURIComponent(request.headers.get(RPC_HEADER));
  if (NOT_RPC.has(method) || method in Object.prototype || typeof instance[method] !== "function") {
    throw new TypeError(`The RPC receiver does not implement the method "${method}".`);
  }
  const args = deserialize(new Uint8Array(await request.arrayBuffer()));
  const result = await instance[method](...(Array.isArray(args) ? args : []));
  if (result instanceof Response) {
    throw dataCloneError("a Response cannot be returned over RPC: return it from fetch() instead");
  }
  return new Response(serialize(result), { status: 200, headers: { "content-type": CLONE_TYPE } });
}

/** Deliver the run's event to its object: `current` is what
 * `currentObject()` answered, `module` the worker's module namespace. */
export async function serveObject(module, current, request, ctx, makeEnv) {
  const [object, event] = current;
  eventCtx = ctx;
  let instance;
  try {
    instance = await objectInstance(module, object, makeEnv);
  } catch (e) {
    console.error(`Uncaught ${errorText(e)}`);
    if (event.tag === "alarm") return new Response(`the Durable Object could not be made: ${errorText(e)}\n`, { status: 500 });
    return errorResponse(e);
  }
  if (event.tag === "alarm") {
    const retryCount = event.val;
    if (typeof instance.alarm !== "function") {
      const message = `Durable Object class \`${object.className}\` has no alarm() handler, yet its alarm went off`;
      console.error(message);
      return new Response(`${message}\n`, { status: 500 });
    }
    try {
      await instance.alarm({ retryCount, isRetry: retryCount > 0 });
    } catch (e) {
      console.error(`Uncaught ${errorText(e)}`);
      return new Response(`the alarm failed: ${e instanceof Error ? `${e.name}: ${e.message}` : errorText(e)}\n`, {
        status: 500,
      });
    }
    return new Response(null, { status: 204 });
  }
  try {
    if (request.headers.has(RPC_HEADER)) return await rpc(instance, request);
    if (typeof instance.fetch !== "function") {
      throw new TypeError(
        `Durable Object class \`${object.className}\` has no fetch() handler: define fetch(request), or call its methods over RPC`,
      );
    }
    const response = await instance.fetch(request);
    if (!(response instanceof Response)) {
      throw new TypeError(
        `the Durable Object's fetch() returned ${response === null ? "null" : typeof response}, not a Response`,
      );
    }
    return response;
  } catch (e) {
    return errorResponse(e);
  }
}
