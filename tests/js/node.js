// Node.js built-in modules, as a worker with Workers' `nodejs_compat` uses
// them; each path answers what tests/e2e/js.rs checks.
import { Buffer } from "node:buffer";
import { EventEmitter, once } from "node:events";
import crypto, { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import path from "node:path";
import util from "node:util";
import { StringDecoder } from "node:string_decoder";
import querystring from "node:querystring";
import assert from "node:assert";
import { AsyncLocalStorage } from "node:async_hooks";
import { readFileSync } from "node:fs";
import { Readable, Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import events from "events"; // the bare name means the built-in too
import { freeGlobals } from "./sibling/free-globals.js";

const encoder = new TextEncoder();

/** HTTP Basic authentication the way Workers' examples write it. */
function basicAuth(request) {
  const authorization = request.headers.get("Authorization");
  const challenge = {
    status: 401,
    headers: { "WWW-Authenticate": 'Basic realm="isola", charset="UTF-8"' },
  };
  if (!authorization) return new Response("You need to login.", challenge);
  const [scheme, encoded] = authorization.split(" ");
  if (!encoded || scheme !== "Basic") return new Response("Malformed authorization header.", { status: 400 });
  const credentials = Buffer.from(encoded, "base64").toString();
  const index = credentials.indexOf(":");
  const user = credentials.substring(0, index);
  const pass = credentials.substring(index + 1);
  const expected = encoder.encode("admin:s3cr\u00e9t");
  const given = encoder.encode(`${user}:${pass}`);
  if (given.byteLength !== expected.byteLength || !crypto.subtle.timingSafeEqual(given, expected)) {
    return new Response("Invalid credentials.", challenge);
  }
  return new Response(`Welcome, ${user}`);
}

async function checks() {
  const emitter = new EventEmitter();
  let heard = 0;
  emitter.on("ping", (n) => (heard += n));
  emitter.emit("ping", 2);
  emitter.emit("ping", 3);
  setTimeout(() => emitter.emit("later", "done"), 1);
  const [later] = await once(emitter, "later");

  const sleep = util.promisify((ms, callback) => setTimeout(() => callback(null, ms), ms));
  const storage = new AsyncLocalStorage();
  const decoder = new StringDecoder("utf8");
  const euro = Buffer.from("\u20ac");
  const split = decoder.write(euro.subarray(0, 1)) + decoder.write(euro.subarray(1));

  const big = Buffer.alloc(6);
  big.writeUInt32BE(0xdeadbeef, 0);
  big.writeUInt16LE(0x1234, 4);

  const chunks = [];
  await pipeline(
    Readable.from(["node ", "streams"]),
    new Transform({
      transform(chunk, _encoding, callback) {
        callback(null, chunk.toString().toUpperCase());
      },
    }),
    new Writable({
      write(chunk, _encoding, callback) {
        chunks.push(chunk.toString());
        callback();
      },
    }),
  );

  const hmacKey = createHmac("sha256", "key");
  return {
    freeGlobals: freeGlobals(),
    bufferHex: Buffer.from("h\u00e9llo").toString("hex"),
    bufferBase64: Buffer.from("isola").toString("base64"),
    bufferConcat: Buffer.concat([Buffer.from("ab"), Buffer.from([0x63])]).toString(),
    bufferReads: [big.readUInt32BE(0).toString(16), big.readUInt16LE(4).toString(16), big.toString("hex")],
    byteLength: Buffer.byteLength("\u20ac"),
    isBuffer: [Buffer.isBuffer(big), Buffer.isBuffer(new Uint8Array(1))],
    events: [heard, later, emitter.listenerCount("ping"), typeof events.EventEmitter],
    sha256: createHash("sha256").update("abc").digest("hex"),
    sha256Chunks: createHash("SHA-256").update("a").update(Buffer.from("bc")).digest("base64"),
    sha1: createHash("sha1").update("abc").digest("hex"),
    md5: createHash("md5").update("").digest("hex"),
    sha512Length: createHash("sha512").update("x").digest().length,
    hmac: hmacKey.update("The quick brown fox jumps over the lazy dog").digest("hex"),
    oneShot: crypto.hash("sha1", "abc"),
    pbkdf2: crypto.pbkdf2Sync("password", "salt", 1, 32, "sha256").toString("hex"),
    unknownDigest: (() => {
      try {
        createHash("whirlpool-9000");
        return "accepted";
      } catch (error) {
        return error.code;
      }
    })(),
    randomBytes: randomBytes(16).length,
    randomUUID: /^[0-9a-f-]{36}$/.test(crypto.randomUUID()),
    timingSafeEqual: [
      timingSafeEqual(Buffer.from("same"), Buffer.from("same")),
      timingSafeEqual(Buffer.from("same"), Buffer.from("diff")),
    ],
    path: [path.join("/a", "../b", "c.txt"), path.extname("x/y.tar.gz"), path.basename("/p/q.js", ".js")],
    format: util.format("%s=%d %j", "n", 42, { ok: true }),
    promisified: await sleep(2),
    isDate: util.types.isDate(new Date()),
    stringDecoder: split,
    stream: chunks.join(""),
    querystring: querystring.stringify({ q: "a b", n: 1 }),
    asyncLocalStorage: storage.run("inside", () => storage.getStore()),
    assert: (() => {
      assert.strictEqual(1, 1);
      try {
        assert.deepStrictEqual({ a: 1 }, { a: 2 });
        return "no throw";
      } catch (error) {
        return error instanceof assert.AssertionError ? "AssertionError" : String(error);
      }
    })(),
    processEnv: typeof process.env,
    nextTick: await new Promise((resolve) => process.nextTick(() => resolve("ticked"))),
  };
}

export default {
  async fetch(request) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/admin":
        return basicAuth(request);
      case "/node":
        return Response.json(await checks());
      case "/fs":
        // Not implemented (as on Workers without a file system): it throws.
        return new Response(readFileSync("/etc/hostname", "utf8"));
      default:
        return new Response("not found", { status: 404 });
    }
  },
};
