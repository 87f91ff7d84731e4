// A caching reverse proxy: forwards to ORIGIN_URL, adds `x-foo: bar`, and
// stores the response in `caches.default` inside `ctx.waitUntil`, after the
// client already has it.
export default {
  async fetch(request, env, ctx) {
    const cache = caches.default;
    const hit = await cache.match(request);
    if (hit) {
      const response = new Response(hit.body, hit);
      response.headers.set("x-cache", "HIT");
      return response;
    }
    const url = new URL(request.url);
    const path = url.pathname.replace(/^\/js\/proxy/, "") || "/";
    const upstream = await fetch(`${env.ORIGIN_URL}${path}${url.search}`, {
      headers: { accept: request.headers.get("accept") ?? "*/*" },
    });
    const response = new Response(upstream.body, upstream);
    response.headers.set("x-foo", "bar");
    if (!response.headers.has("cache-control")) {
      response.headers.set("cache-control", "public, max-age=60");
    }
    if (request.method === "GET" && response.ok) {
      ctx.waitUntil(cache.put(request, response.clone()));
    }
    response.headers.set("x-cache", "MISS");
    return response;
  },
};
