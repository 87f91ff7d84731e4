// `node:crypto` for workers: unenv's module (randomBytes, randomUUID,
// randomInt, webcrypto, getRandomValues, ...) plus the synchronous hashing
// that Workers' `node:crypto` has and unenv leaves unimplemented:
// createHash, createHmac, hash, pbkdf2, timingSafeEqual, getHashes.
// StarlingMonkey's `crypto.subtle` is asynchronous, so the hashes are
// @noble/hashes' audited pure-JS implementations.

import unenvCrypto from "unenv/node/crypto";
import { Buffer } from "unenv/node/buffer";
import { md5, ripemd160, sha1 } from "@noble/hashes/legacy.js";
import { sha224, sha256, sha384, sha512, sha512_224, sha512_256 } from "@noble/hashes/sha2.js";
import { sha3_224, sha3_256, sha3_384, sha3_512 } from "@noble/hashes/sha3.js";
import { hmac } from "@noble/hashes/hmac.js";
import { pbkdf2 as noblePbkdf2 } from "@noble/hashes/pbkdf2.js";

export * from "unenv/node/crypto";

const HASHES = {
  md5,
  sha1,
  sha224,
  sha256,
  sha384,
  sha512,
  "sha512-224": sha512_224,
  "sha512-256": sha512_256,
  "sha3-224": sha3_224,
  "sha3-256": sha3_256,
  "sha3-384": sha3_384,
  "sha3-512": sha3_512,
  ripemd160,
  rmd160: ripemd160,
};

/** The hash for a Node/OpenSSL digest name: `sha256`, `SHA256`,
 * `RSA-SHA256`, `sha-256` all name SHA-256. */
function hashFor(name) {
  const key = String(name)
    .toLowerCase()
    .replace(/^rsa-/, "")
    .replace(/^sha-(\d)/, "sha$1")
    .replace(/^sha2-(\d)/, "sha$1");
  const found = Object.hasOwn(HASHES, key) ? HASHES[key] : undefined;
  if (!found) {
    const error = new Error(`Digest method not supported: ${name}`);
    error.code = "ERR_CRYPTO_INVALID_DIGEST";
    throw error;
  }
  return found;
}

/** Node's `BinaryLike`: a string in `encoding` (utf8 by default), a typed
 * array, a DataView or an ArrayBuffer. */
function bytesOf(data, encoding) {
  if (typeof data === "string") return Buffer.from(data, encoding ?? "utf8");
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (data && typeof data.export === "function") return bytesOf(data.export());
  throw new TypeError(
    'The "data" argument must be of type string or an instance of Buffer, TypedArray, or DataView.',
  );
}

function output(bytes, encoding) {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return encoding === undefined || encoding === "buffer" ? buffer : buffer.toString(encoding);
}

class Digest {
  #state;
  #done = false;

  constructor(state) {
    this.#state = state;
  }

  update(data, inputEncoding) {
    if (this.#done) throw new Error("Digest already called");
    this.#state.update(bytesOf(data, inputEncoding));
    return this;
  }

  digest(encoding) {
    if (this.#done) throw new Error("Digest already called");
    this.#done = true;
    return output(this.#state.digest(), encoding);
  }

  copy() {
    if (this.#done) throw new Error("Digest already called");
    return new this.constructor(this.#state.clone());
  }
}

export class Hash extends Digest {}
export class Hmac extends Digest {}

export function createHash(algorithm) {
  return new Hash(hashFor(algorithm).create());
}

export function createHmac(algorithm, key) {
  return new Hmac(hmac.create(hashFor(algorithm), bytesOf(key)));
}

/** Node 21.7's one-shot `crypto.hash(algorithm, data, outputEncoding)`. */
export function hash(algorithm, data, outputEncoding = "hex") {
  return output(hashFor(algorithm)(bytesOf(data)), outputEncoding);
}

export function getHashes() {
  return Object.keys(HASHES);
}

export function pbkdf2Sync(password, salt, iterations, keylen, digest) {
  const key = noblePbkdf2(hashFor(digest), bytesOf(password), bytesOf(salt), {
    c: iterations,
    dkLen: keylen,
  });
  return output(key);
}

export function pbkdf2(password, salt, iterations, keylen, digest, callback) {
  let result;
  try {
    result = pbkdf2Sync(password, salt, iterations, keylen, digest);
  } catch (error) {
    queueMicrotask(() => callback(error));
    return;
  }
  queueMicrotask(() => callback(null, result));
}

/** Compares in time that depends only on the length, as Node's does. */
export function timingSafeEqual(a, b) {
  const left = bytesOf(a);
  const right = bytesOf(b);
  if (left.byteLength !== right.byteLength) {
    const error = new RangeError("Input buffers must have the same byte length");
    error.code = "ERR_CRYPTO_TIMING_SAFE_EQUAL_LENGTH";
    throw error;
  }
  let difference = 0;
  for (let i = 0; i < left.byteLength; i++) difference |= left[i] ^ right[i];
  return difference === 0;
}

export default {
  ...unenvCrypto,
  Hash,
  Hmac,
  createHash,
  createHmac,
  hash,
  getHashes,
  pbkdf2,
  pbkdf2Sync,
  timingSafeEqual,
};
