// Proxy benchmark worker: identical source is served by Isola and by
// workerd. env.ORIGIN is the origin's base URL (http://127.0.0.1:PORT).
//
//   GET /       hello (the servers' readiness probe)
//   GET /fetch  `return fetch(origin)`, nothing else
//   GET /seed   the seeds' proxy: fetch the origin, add a header, answer,
//               and put a clone into caches.default in ctx.waitUntil
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/":
        return new Response("Hello from Isola!\n", {
          headers: { "content-type": "text/plain" },
        });
      case "/fetch":
        return fetch(`${env.ORIGIN}/`);
      case "/seed": {
        const upstream = await fetch(`${env.ORIGIN}/`, {
          headers: { accept: request.headers.get("accept") ?? "*/*" },
        });
        const response = new Response(upstream.body, upstream);
        response.headers.set("x-foo", "bar");
        if (request.method === "GET" && response.ok) {
          ctx.waitUntil(caches.default.put(request, response.clone()));
        }
        return response;
      }
      default:
        return new Response("not found\n", { status: 404 });
    }
  },
};
