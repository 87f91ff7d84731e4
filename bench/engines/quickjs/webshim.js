// A minimal Web API layer for QuickJS (componentize-qjs), just enough for
// the benchmark's Hono app: what StarlingMonkey has built in and QuickJS
// lacks. Measurement only.

// QuickJS's sync export never runs the job queue, so promises are a
// userland implementation drained by the handler (async functions are
// lowered to generators over it by esbuild).
const queue = [];
export function drainJobs() {
  for (let i = 0; i < queue.length; i++) queue[i]();
  queue.length = 0;
}
class SyncPromise {
  constructor(executor) {
    this.state = 0; this.value = undefined; this.callbacks = [];
    const resolve = (v) => this.#resolve(v);
    const reject = (e) => this.#settle(2, e);
    try { executor(resolve, reject); } catch (e) { reject(e); }
  }
  #resolve(v) {
    if (this.state !== 0 || this.locked) return;
    if (v === this) return this.#settle(2, new TypeError("cycle"));
    if (v !== null && (typeof v === "object" || typeof v === "function")) {
      let then;
      try { then = v.then; } catch (e) { return this.#settle(2, e); }
      if (typeof then === "function") {
        this.locked = true;
        let done = false;
        queue.push(() => {
          try {
            then.call(v, (x) => { if (!done) { done = true; this.locked = false; this.#resolve(x); } },
              (e) => { if (!done) { done = true; this.locked = false; this.#settle(2, e); } });
          } catch (e) { if (!done) { done = true; this.locked = false; this.#settle(2, e); } }
        });
        return;
      }
    }
    this.#settle(1, v);
  }
  #settle(state, value) {
    if (this.state !== 0) return;
    this.state = state; this.value = value;
    for (const cb of this.callbacks) queue.push(cb);
    this.callbacks = null;
  }
  then(onFulfilled, onRejected) {
    return new SyncPromise((resolve, reject) => {
      const run = () => {
        const handler = this.state === 1 ? onFulfilled : onRejected;
        if (typeof handler !== "function") return (this.state === 1 ? resolve : reject)(this.value);
        try { resolve(handler(this.value)); } catch (e) { reject(e); }
      };
      if (this.state === 0) this.callbacks.push(run); else queue.push(run);
    });
  }
  catch(onRejected) { return this.then(undefined, onRejected); }
  finally(f) { return this.then((v) => { f(); return v; }, (e) => { f(); throw e; }); }
  static resolve(v) { return v instanceof SyncPromise ? v : new SyncPromise((r) => r(v)); }
  static reject(e) { return new SyncPromise((_, r) => r(e)); }
  static all(items) {
    return new SyncPromise((resolve, reject) => {
      const list = [...items]; const out = new Array(list.length); let left = list.length;
      if (left === 0) resolve(out);
      list.forEach((p, i) => SyncPromise.resolve(p).then((v) => { out[i] = v; if (--left === 0) resolve(out); }, reject));
    });
  }
}
globalThis.Promise = SyncPromise;

class TextEncoder {
  get encoding() { return "utf-8"; }
  encode(s = "") {
    s = String(s);
    const out = new Uint8Array(s.length * 3); let n = 0;
    for (let i = 0; i < s.length; i++) {
      let c = s.charCodeAt(i);
      if (c < 0x80) { out[n++] = c; continue; }
      if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
        const d = s.charCodeAt(i + 1);
        if (d >= 0xdc00 && d < 0xe000) { c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00); i++; }
      }
      if (c < 0x800) { out[n++] = 0xc0 | (c >> 6); out[n++] = 0x80 | (c & 63); }
      else if (c < 0x10000) { out[n++] = 0xe0 | (c >> 12); out[n++] = 0x80 | ((c >> 6) & 63); out[n++] = 0x80 | (c & 63); }
      else { out[n++] = 0xf0 | (c >> 18); out[n++] = 0x80 | ((c >> 12) & 63); out[n++] = 0x80 | ((c >> 6) & 63); out[n++] = 0x80 | (c & 63); }
    }
    return out.slice(0, n);
  }
}
class TextDecoder {
  get encoding() { return "utf-8"; }
  decode(input) {
    if (!input) return "";
    const b = input instanceof Uint8Array ? input : new Uint8Array(input.buffer ?? input);
    let s = "";
    for (let i = 0; i < b.length;) {
      const c = b[i++];
      if (c < 0x80) s += String.fromCharCode(c);
      else if (c < 0xe0) s += String.fromCharCode(((c & 31) << 6) | (b[i++] & 63));
      else if (c < 0xf0) s += String.fromCharCode(((c & 15) << 12) | ((b[i++] & 63) << 6) | (b[i++] & 63));
      else { const p = (((c & 7) << 18) | ((b[i++] & 63) << 12) | ((b[i++] & 63) << 6) | (b[i++] & 63)) - 0x10000; s += String.fromCharCode(0xd800 + (p >> 10), 0xdc00 + (p & 1023)); }
    }
    return s;
  }
}
globalThis.TextEncoder = TextEncoder;
globalThis.TextDecoder = TextDecoder;

class Headers {
  constructor(init) {
    this.map = new Map();
    if (init instanceof Headers) init.forEach((v, k) => this.append(k, v));
    else if (Array.isArray(init)) for (const [k, v] of init) this.append(k, v);
    else if (init) for (const k of Object.keys(init)) this.append(k, init[k]);
  }
  append(k, v) { k = k.toLowerCase(); const old = this.map.get(k); this.map.set(k, old === undefined ? String(v) : `${old}, ${v}`); }
  set(k, v) { this.map.set(k.toLowerCase(), String(v)); }
  get(k) { const v = this.map.get(k.toLowerCase()); return v === undefined ? null : v; }
  has(k) { return this.map.has(k.toLowerCase()); }
  delete(k) { this.map.delete(k.toLowerCase()); }
  forEach(f, self) { for (const [k, v] of this.map) f.call(self, v, k, this); }
  entries() { return this.map.entries(); }
  keys() { return this.map.keys(); }
  values() { return this.map.values(); }
  getSetCookie() { const v = this.map.get("set-cookie"); return v === undefined ? [] : [v]; }
  [Symbol.iterator]() { return this.map.entries(); }
}
globalThis.Headers = Headers;

function toBytes(body) {
  if (body === null || body === undefined) return null;
  if (typeof body === "string") return new TextEncoder().encode(body);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  return new TextEncoder().encode(String(body));
}
class Body {
  get body() { return this.bytes; }
  get bodyUsed() { return false; }
  arrayBuffer() { const b = this.bytes ?? new Uint8Array(0); return Promise.resolve(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)); }
  text() { return Promise.resolve(new TextDecoder().decode(this.bytes ?? new Uint8Array(0))); }
  json() { return this.text().then(JSON.parse); }
  blob() { throw new Error("Blob is not available"); }
  formData() { throw new Error("FormData is not available"); }
}
class Request extends Body {
  constructor(input, init = {}) {
    super();
    if (input instanceof Request) {
      this.url = input.url; this.method = input.method; this.headers = new Headers(input.headers); this.bytes = input.bytes;
    } else {
      this.url = String(input); this.method = "GET"; this.headers = new Headers(); this.bytes = null;
    }
    if (init.method) this.method = init.method.toUpperCase();
    if (init.headers) this.headers = new Headers(init.headers);
    if (init.body !== undefined) this.bytes = toBytes(init.body);
  }
  clone() { return new Request(this); }
}
class Response extends Body {
  constructor(body = null, init = {}) {
    super();
    this.bytes = toBytes(body);
    this.status = init.status ?? 200;
    this.statusText = init.statusText ?? "";
    this.headers = new Headers(init.headers);
    if (typeof body === "string" && !this.headers.has("content-type")) this.headers.set("content-type", "text/plain;charset=UTF-8");
  }
  get ok() { return this.status >= 200 && this.status < 300; }
  clone() { return new Response(this.bytes, this); }
  static json(data, init = {}) {
    const r = new Response(JSON.stringify(data), init);
    r.headers.set("content-type", "application/json");
    return r;
  }
}
globalThis.Request = Request;
globalThis.Response = Response;
globalThis.console ??= { log() {}, error() {}, warn() {}, info() {}, debug() {} };
// A minimal URL: what the benchmark's workers read (pathname, search).
class URL {
  constructor(input) {
    const m = /^([a-z][a-z0-9+.-]*:)\/\/([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?$/i.exec(String(input));
    if (!m) throw new TypeError(`Invalid URL: ${input}`);
    this.protocol = m[1]; this.host = m[2]; this.pathname = m[3] || "/"; this.search = m[4] ?? ""; this.hash = m[5] ?? "";
    this.searchParams = { get: (k) => { for (const part of this.search.slice(1).split("&")) { const [a, b = ""] = part.split("="); if (decodeURIComponent(a) === k) return decodeURIComponent(b); } return null; } };
  }
  get href() { return `${this.protocol}//${this.host}${this.pathname}${this.search}${this.hash}`; }
  toString() { return this.href; }
}
globalThis.URL = URL;
