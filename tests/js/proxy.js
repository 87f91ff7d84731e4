// A forwarding proxy for tests/e2e/js_proxy.rs. Paths are
// `/<route>/<form>/...`: `<route>` only picks the worker (outbound_override
// or an allowed origin, fresh or reused instances); `<form>` picks how the
// incoming request is forwarded. The request goes to its own URL, so the
// client's Host header names the origin. `/<route>/async/<kind>` checks
// that a failing Workers API call returns a rejected promise.

const forms = {
  // fetch(request)
  direct: (request) => fetch(request),
  // fetch(request.url, request)
  url: (request) => fetch(request.url, request),
  // fetch(new Request(url, request))
  new: (request) => fetch(new Request(request.url, request)),
  // new Request(request, { headers }) then fetch
  headers(request) {
    const headers = new Headers(request.headers);
    headers.set("x-proxied", "yes");
    return fetch(new Request(request, { headers }));
  },
  // new Request(request) then fetch
  copy: (request) => fetch(new Request(request)),
  // request.clone() then fetch
  clone: (request) => fetch(request.clone()),
  // fetch(request, { headers })
  init(request) {
    const headers = new Headers(request.headers);
    headers.set("x-proxied", "yes");
    return fetch(request, { headers });
  },
  // The seed example: a cache put of a POST rejects inside waitUntil.
  async seed(request, env, ctx) {
    let res = await fetch(request);
    res = new Response(res.body, res);
    res.headers.set("x-a", "b");
    ctx.waitUntil(caches.default.put(request, res.clone()));
    return res;
  },
};

// One failing call per binding kind; each must return a promise that
// rejects, never throw synchronously.
const failing = {
  kv: (env) => env.KV.put("key", 42),
  "kv-host": (env) => env.KV.get("x".repeat(4096)),
  d1: (env) => env.DB.prepare("SELEC nonsense").all(),
  "d1-first": (env) => env.DB.prepare("SELECT 1 AS one").first("missing"),
  "d1-batch": (env) => env.DB.batch([{}]),
  "d1-exec": (env) => env.DB.exec("NOT SQL"),
  r2: (env) => env.BUCKET.get("key", { range: { offset: "not a number" } }),
  async "r2-body"(env) {
    await env.BUCKET.put("twice", "read me once");
    const object = await env.BUCKET.get("twice");
    await object.text();
    return object.text();
  },
  cache: () => caches.default.put(new Request("http://cache.test/", { method: "POST" }), new Response("x")),
  "cache-url": () => caches.default.match("http://["),
  async "cache-clone"() {
    const response = new Response("once");
    response.clone();
    await response.text();
    return response.text();
  },
  queue: (env) => env.JOBS.send("x", { contentType: "bogus" }),
  service: (env) => env.AUTH.fetch("http://["),
  "service-init": (env) => env.AUTH.fetch("http://auth/", { method: "GET", body: "no body on GET" }),
  fetch: () => fetch("http://["),
  "fetch-none": () => fetch(),
  async "fetch-used"() {
    const request = new Request("http://refused.invalid/", { method: "POST", body: "once" });
    await request.text();
    return fetch(request);
  },
  "fetch-refused": () => fetch("http://refused.invalid/"),
  "fetch-init": () => fetch("http://refused.invalid/", { method: "GET", body: "no body on GET" }),
};

async function checkRejects(kind, env) {
  let promise;
  try {
    promise = failing[kind](env);
  } catch (e) {
    return new Response(`threw synchronously: ${e?.name}: ${e?.message}`, { status: 500 });
  }
  if (!(promise instanceof Promise)) {
    return new Response(`returned ${typeof promise}, not a Promise`, { status: 500 });
  }
  try {
    await promise;
    return new Response("resolved", { status: 500 });
  } catch (e) {
    return new Response(`rejected: ${e?.name}: ${e?.message}`);
  }
}

export default {
  async fetch(request, env, ctx) {
    const [, , form, kind] = new URL(request.url).pathname.split("/");
    if (form === "async") return checkRejects(kind, env);
    const forward = forms[form];
    if (!forward) return new Response(`no form ${form}`, { status: 404 });
    return forward(request, env, ctx);
  },
};
