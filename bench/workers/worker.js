// Benchmark worker: identical source is served by Isola and by workerd.
// Standard ES-module Worker; env.KV is a Workers KV namespace (get/put).
const KV_KEY = "bench";

export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (request.method !== "GET") {
      return new Response("not found\n", { status: 404 });
    }
    switch (url.pathname) {
      case "/":
        return new Response("Hello from Isola!\n", {
          headers: { "content-type": "text/plain" },
        });
      case "/kv": {
        let value = await env.KV.get(KV_KEY);
        if (value === null) {
          value = "x".repeat(1024);
          await env.KV.put(KV_KEY, value);
        }
        return new Response(value, {
          headers: { "content-type": "text/plain" },
        });
      }
      case "/sleep": {
        const ms = Number(url.searchParams.get("ms") ?? 0) || 0;
        await new Promise((resolve) => setTimeout(resolve, ms));
        return new Response("slept\n", {
          headers: { "content-type": "text/plain" },
        });
      }
      default:
        return new Response("not found\n", { status: 404 });
    }
  },
};
