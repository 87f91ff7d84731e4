// In-memory backing store for workerd's `kvNamespace` binding.
//
// workerd turns each KV call into an HTTP request to this service
// (src/workerd/api/kv.c++):
//   get(key)    -> GET    https://fake-host/<key>?urlencoded=true[&cache_ttl=N]
//   put(key, v) -> PUT    https://fake-host/<key>?urlencoded=true[&expiration..]  body = value
//   delete(key) -> DELETE https://fake-host/<key>?urlencoded=true
// The key is a single percent-encoded path segment; a missing key must be
// answered with 404 (or 410), which get() maps to null. Any non-2xx status on
// put/delete makes the JS call throw. list()/bulk get are not implemented.
const store = new Map();

export default {
  async fetch(request) {
    const url = new URL(request.url);
    const key = decodeURIComponent(url.pathname.slice(1));
    if (key === "") {
      return new Response("list not supported\n", { status: 501 });
    }
    switch (request.method) {
      case "GET": {
        const value = store.get(key);
        if (value === undefined) return new Response(null, { status: 404 });
        return new Response(value);
      }
      case "PUT":
        store.set(key, await request.arrayBuffer());
        return new Response(null, { status: 204 });
      case "DELETE":
        store.delete(key);
        return new Response(null, { status: 204 });
      default:
        return new Response("method not allowed\n", { status: 405 });
    }
  },
};
