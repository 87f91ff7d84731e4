// Cache warming with KV: answers from KV when it can; on a miss it fetches
// from the origin, answers, and stores the result for an hour
// (`expirationTtl: 3600`) in `ctx.waitUntil`.
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    const key = url.pathname.replace(/^\/js\/kv/, "") || "/";
    const { value, metadata } = await env.CACHE.getWithMetadata(key, { type: "json" });
    if (value !== null) {
      return Response.json(value, {
        headers: { "x-kv": "hit", "x-fetched-at": metadata.fetchedAt },
      });
    }
    const upstream = await fetch(`${env.ORIGIN_URL}${key}`);
    const entry = { status: upstream.status, body: await upstream.text() };
    ctx.waitUntil(
      env.CACHE.put(key, JSON.stringify(entry), {
        expirationTtl: 3600,
        metadata: { fetchedAt: new Date().toISOString() },
      }),
    );
    return Response.json(entry, { headers: { "x-kv": "miss" } });
  },
};
