// Globals Workers has and StarlingMonkey lacks, installed by the shim's top
// level before the worker's module runs: `caches`, Request/Response/fetch
// fixes, `crypto.subtle.timingSafeEqual`, `navigator`, `scheduler`, stream
// helpers.

import { WorkerCache } from "./cache.js";
import { cloneResponse, installRequestWorkaround } from "./http.js";

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

export function installGlobals() {
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
