// Exercises the env, ctx and web APIs a JavaScript worker gets on Isola;
// each path answers what the e2e tests (tests/e2e/js.rs) check.
import { greet } from "./sibling/greet.js";

let served = 0; // module state: a fresh instance per request keeps it at 1

const routes = {
  async "/counter"() {
    served += 1;
    return new Response(String(served));
  },

  async "/echo"(request) {
    const body = await request.text();
    const url = new URL(request.url);
    return new Response(body, {
      status: 201,
      headers: {
        "x-echo": `${request.method} ${url.pathname}${url.search} ${request.headers.get("x-note")}`,
      },
    });
  },

  // Busy for `n` rounds of arithmetic (not for a time: the clock stands
  // still while a request runs): something to profile.
  async "/work"(request) {
    const n = Number(new URL(request.url).searchParams.get("n") ?? 1000);
    let x = 0;
    for (let round = 0; round < n; round++) {
      for (let i = 0; i < 1000; i++) x = (x * 31 + i) % 1000003;
    }
    return new Response(String(x));
  },

  // Response shapes: with `instance_reuse` the shim sends one whose body is
  // in memory in one call, and streams the others.
  async "/reply"(request) {
    switch (new URL(request.url).searchParams.get("as")) {
      case "head": {
        const headers = new Headers({ "x-latin1": "caf\u00e9" });
        headers.append("set-cookie", "a=1");
        headers.append("set-cookie", "b=2");
        const probe = new Response("");
        const seen = {
          method: request.method,
          url: request.url,
          headers: [...request.headers],
          constructorIsResponse: probe.constructor === Response && probe instanceof Response,
        };
        return new Response(JSON.stringify(seen), { status: 299, headers });
      }
      case "bytes": {
        const bytes = new Uint8Array([1, 2, 3, 4]);
        const response = new Response(bytes.subarray(1, 3));
        bytes.fill(9); // the response keeps the bytes it was given
        return response;
      }
      case "json":
        return Response.json({ shape: "json", list: [1, "two"] }, { status: 202 });
      case "empty":
        return new Response(null, { status: 204, headers: { "x-empty": "yes" } });
      case "redirect":
        return Response.redirect("https://example.com/elsewhere", 302);
      case "stream": {
        const encoder = new TextEncoder();
        const stream = new ReadableStream({
          async start(controller) {
            controller.enqueue(encoder.encode("streamed, "));
            await new Promise((resolve) => setTimeout(resolve, 5));
            controller.enqueue(encoder.encode("in two chunks"));
            controller.close();
          },
        });
        // Repeated and Latin-1 headers go out with a streamed body too.
        const headers = new Headers({ "x-streamed": "yes", "x-latin1": "caf\u00e9" });
        headers.append("set-cookie", "a=1");
        headers.append("set-cookie", "b=2");
        return new Response(stream, { headers });
      }
      case "bad-length":
        return new Response("four", { headers: { "content-length": "5" } });
      case "piped":
        // A body that is a stream (not recorded as whole), with nothing to
        // wait for: what a proxied response costs to send.
        return new Response(new Response("piped body").body, { headers: { "content-type": "text/plain" } });
      case "bad-stream-length":
        return new Response(new Response("four").body, { headers: { "content-length": "four" } });
      default:
        return new Response("no such shape\n", { status: 400 });
    }
  },

  async "/sibling"() {
    return new Response(greet("isola"));
  },

  // One var, read from a fresh instance's `env` (what the fuel test of
  // tests/e2e/js.rs weighs against `/counter`).
  async "/greeting"(request, env) {
    return new Response(env.GREETING);
  },

  // A Request made from a Request with a body and an init: the shim's
  // workaround copies the RequestInit members of both.
  async "/request-copy"() {
    const first = new Request("http://example.com/", { method: "POST", headers: { a: "b" }, body: "x" });
    const copy = new Request(first, { headers: { c: "d" } });
    return new Response(`${copy.method} ${copy.headers.get("c")}`);
  },

  // `n` KV reads of a key that is not there: binding calls, each through
  // the import glue.
  async "/kv-misses"(request, env) {
    const n = Number(new URL(request.url).searchParams.get("n"));
    let found = 0;
    for (let i = 0; i < n; i++) if ((await env.KV.get("never-written")) !== null) found++;
    return new Response(`${found} of ${n}`);
  },

  // One field of a fresh instance's `request.cf`.
  async "/protocol"(request) {
    return new Response(request.cf.httpProtocol);
  },

  async "/env"(request, env) {
    return Response.json({
      // First, so that enumerating is what reads env from the host.
      keys: Object.keys(env).sort(),
      spreadKeys: Object.keys({ ...env }).length,
      hasKv: "KV" in env,
      hasMissing: "MISSING" in env,
      cfEnumerable: Object.keys(request).includes("cf") || "cf" in request,
      greeting: env.GREETING,
      secretLength: env.API_KEY.length,
      kinds: {
        KV: env.KV.constructor.name,
        DB: env.DB.constructor.name,
        BUCKET: env.BUCKET.constructor.name,
        JOBS: env.JOBS.constructor.name,
        AUTH: env.AUTH.constructor.name,
      },
      cf: request.cf,
    });
  },

  async "/kv"(request, env) {
    const out = {};
    await env.KV.put("text", "hello");
    await env.KV.put("json", JSON.stringify({ a: 1 }), { metadata: { v: 2 } });
    await env.KV.put("bytes", new Uint8Array([1, 2, 3]));
    await env.KV.put("ttl", "soon gone", { expirationTtl: 3600 });
    await env.KV.put("stream", new Response("streamed value").body);
    out.text = await env.KV.get("text");
    out.json = await env.KV.get("json", "json");
    out.jsonOpt = await env.KV.get("json", { type: "json" });
    out.bytes = Array.from(new Uint8Array(await env.KV.get("bytes", "arrayBuffer")));
    out.stream = await new Response(await env.KV.get("stream", "stream")).text();
    out.withMeta = await env.KV.getWithMetadata("json", "json");
    out.missing = await env.KV.get("nope");
    const page = await env.KV.list({ limit: 2 });
    out.page1 = page.keys.map((k) => k.name);
    out.complete1 = page.list_complete;
    const rest = await env.KV.list({ cursor: page.cursor });
    out.page2 = rest.keys.map((k) => k.name);
    out.ttlExpires = (await env.KV.list({ prefix: "ttl" })).keys[0].expiration > Date.now() / 1000;
    await env.KV.delete("text");
    out.deleted = await env.KV.get("text");
    try {
      await env.KV.put("", "x");
    } catch (e) {
      out.badKey = `${e.name}: ${e.message}`;
    }
    return Response.json(out);
  },

  async "/d1"(request, env) {
    const db = env.DB;
    await db.exec("DROP TABLE IF EXISTS t; CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB)");
    const insert = db.prepare("INSERT INTO t (name, score, data) VALUES (?, ?, ?)");
    const run = await insert.bind("ann", 1.5, new Uint8Array([7, 8])).run();
    const batch = await db.batch([insert.bind("bob", 2, null), insert.bind("cy", 3.25, null)]);
    const all = await db.prepare("SELECT id, name, score, data FROM t ORDER BY id").all();
    return Response.json({
      runMeta: { changes: run.meta.changes, lastRowId: run.meta.last_row_id, success: run.success },
      batchLength: batch.length,
      all: all.results,
      first: await db.prepare("SELECT name FROM t WHERE id = ?").bind(2).first(),
      firstColumn: await db.prepare("SELECT count(*) AS n FROM t").first("n"),
      raw: await db.prepare("SELECT id, name FROM t ORDER BY id").raw({ columnNames: true }),
      none: await db.prepare("SELECT * FROM t WHERE id = 99").first(),
      error: await db.prepare("SELECT * FROM missing_table").all().then(
        () => "no error",
        (e) => e.message,
      ),
    });
  },

  async "/r2"(request, env) {
    const b = env.BUCKET;
    const put = await b.put("dir/a.txt", "hello object", {
      httpMetadata: { contentType: "text/plain" },
      customMetadata: { owner: "ann" },
    });
    await b.put("dir/b.txt", new Response("streamed object").body);
    await b.put("top.txt", new Uint8Array([104, 105]));
    const got = await b.get("dir/a.txt");
    const ranged = await b.get("dir/a.txt", { range: { offset: 6, length: 6 } });
    const head = await b.head("dir/b.txt");
    const listed = await b.list({ delimiter: "/" });
    const headers = new Headers();
    got.writeHttpMetadata(headers);
    const out = {
      putSize: put.size,
      etagQuoted: put.httpEtag === `"${put.etag}"`,
      text: await got.text(),
      contentType: headers.get("content-type"),
      owner: got.customMetadata.owner,
      uploadedIsDate: got.uploaded instanceof Date,
      range: await ranged.text(),
      headSize: head.size,
      objects: listed.objects.map((o) => o.key),
      prefixes: listed.delimitedPrefixes,
    };
    await b.delete(["dir/a.txt", "dir/b.txt"]);
    out.afterDelete = await b.get("dir/a.txt");
    return Response.json(out);
  },

  async "/queue"(request, env) {
    await env.JOBS.send({ hello: "queue" });
    await env.JOBS.sendBatch([{ body: "text body", contentType: "text" }, { body: { n: 2 } }]);
    return new Response("sent 3\n");
  },

  async "/service"(request, env) {
    const response = await env.AUTH.fetch("http://auth/whoami?x=1", { headers: { "x-user": "ann" } });
    return new Response(`${response.status} ${await response.text()}`);
  },

  // What the shim must keep while it builds a request's headers and `cf`
  // only when read, and replaces the global Request and Response (with
  // `instance_reuse`): identities, and the headers and `cf` whatever reads
  // them first, however late.
  async "/identity"(request) {
    const first = new URL(request.url).searchParams.get("first");
    let probe;
    switch (first) {
      case "copy":
        probe = new Request(request).headers.get("x-probe");
        break;
      case "init":
        probe = new Request("http://elsewhere/", request).headers.get("x-probe");
        break;
      case "clone":
        probe = request.clone().headers.get("x-probe");
        break;
      case "late":
        await new Promise((resolve) => setTimeout(resolve, 5));
        probe = Object.fromEntries(request.headers)["x-probe"];
        break;
      default:
        probe = request.headers.get("x-probe");
    }
    await new Promise((resolve) => setTimeout(resolve, 1));
    const cf = request.cf;
    class Mine extends Response {}
    const mine = new Mine("mine");
    let called;
    try {
      Response("no new");
      called = "no error";
    } catch (e) {
      called = e.constructor.name;
    }
    const made = new Request("http://example.com/");
    const madeCf = made.cf;
    made.cf = { cacheTtl: 5 };
    const responses = [new Response("x"), new Response(null), Response.json({}), Response.redirect("http://example.com/", 302)];
    return Response.json({
      probe,
      again: request.headers.get("x-probe"),
      cf: { protocol: cf.httpProtocol, requestId: cf.requestId, same: cf === request.cf, in: "cf" in request },
      madeCf: [madeCf === undefined, made.cf.cacheTtl],
      responses: responses.map((r) => r instanceof Response && r.constructor === Response),
      mine: mine instanceof Mine && mine instanceof Response && (await mine.text()) === "mine",
      requests: [request, made, new Request(request)].map((r) => r instanceof Request && r.constructor === Request),
      names: [Response.name, Request.name],
      called,
    });
  },

  async "/whoami"(request) {
    return new Response(`you are ${request.headers.get("x-user")} at ${new URL(request.url).pathname}`);
  },

  async "/wait-until"(request, env, ctx) {
    ctx.waitUntil(
      (async () => {
        await new Promise((resolve) => setTimeout(resolve, 50));
        await env.KV.put("waited", "done after the response");
      })(),
    );
    ctx.waitUntil(Promise.reject(new Error("one failed task")));
    return new Response("answered first\n");
  },

  async "/waited"(request, env) {
    return new Response(String(await env.KV.get("waited")));
  },

  async "/cache"() {
    const cache = await caches.open("mine");
    const url = "https://example.com/cached";
    const before = await cache.match(url);
    await cache.put(url, new Response("cached body", { headers: { "cache-control": "max-age=300" } }));
    const after = await cache.match(url);
    const deleted = await cache.delete(url);
    return Response.json({
      before: before === undefined,
      after: await after.text(),
      deleted,
      gone: (await cache.match(url)) === undefined,
      defaultIsCache: typeof caches.default.match === "function",
    });
  },

  async "/web"() {
    const bytes = new TextEncoder().encode("message");
    const key = await crypto.subtle.importKey(
      "raw",
      new TextEncoder().encode("secret"),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign", "verify"],
    );
    const signature = await crypto.subtle.sign("HMAC", key, bytes);
    const verified = await crypto.subtle.verify("HMAC", key, signature, bytes);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    const random = crypto.getRandomValues(new Uint8Array(8));
    const upper = new TransformStream({
      transform(chunk, controller) {
        controller.enqueue(new TextEncoder().encode(new TextDecoder().decode(chunk).toUpperCase()));
      },
    });
    const transformed = await new Response(new Response("shout").body.pipeThrough(upper)).text();
    const params = new URLSearchParams("a=1&b=two");
    await new Promise((resolve) => setTimeout(resolve, 5));
    // Workers' globals that StarlingMonkey lacks.
    const waited = Date.now();
    await scheduler.wait(5);
    const fromIterable = await new Response(
      // The emoji's surrogate pair is split across two chunks.
      ReadableStream.from(["caf", "\u00e9 \ud83d", "\ude00"]).pipeThrough(new TextEncoderStream()),
    ).text();
    const euro = new TextEncoder().encode("\u20ac");
    const decodedParts = [];
    const decoding = ReadableStream.from([euro.subarray(0, 1), euro.subarray(1)]).pipeThrough(
      new TextDecoderStream(),
    );
    for await (const part of decoding) decodedParts.push(part);
    return Response.json({
      userAgent: navigator.userAgent,
      schedulerWaited: Date.now() - waited >= 4,
      fromIterable,
      decodedParts,
      hmacLength: signature.byteLength,
      verified,
      digestHex: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""),
      equal: crypto.subtle.timingSafeEqual(new Uint8Array([1, 2]), new Uint8Array([1, 2])),
      unequal: crypto.subtle.timingSafeEqual(new Uint8Array([1, 2]), new Uint8Array([1, 3])),
      randomLength: random.length,
      uuid: /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(crypto.randomUUID()),
      base64: btoa("isola"),
      decoded: atob("aXNvbGE="),
      cloned: structuredClone({ nested: { list: [1, 2] } }),
      transformed,
      params: Object.fromEntries(params),
    });
  },

  async "/log"() {
    console.log("hello from console.log");
    console.error("and from console.error");
    return new Response("logged\n");
  },

  async "/busy"() {
    let x = 0;
    for (;;) x = (x + 1) % 1000;
  },

  async "/slow-upstream"(request, env) {
    const response = await fetch(env.SLOW_URL);
    return new Response(`upstream said ${await response.text()}`);
  },

  async "/throw"() {
    throw new Error("something broke in the worker");
  },

  async "/reject"() {
    return Promise.reject(new TypeError("rejected on purpose"));
  },
};

export default {
  async fetch(request, env, ctx) {
    const route = routes[new URL(request.url).pathname];
    if (!route) return new Response("no such route\n", { status: 404 });
    return route(request, env, ctx);
  },
};
