// In-memory backing store for workerd's Cache API (`cacheApiOutbound`), so
// that `caches.default.put` in the proxy benchmark stores something, as it
// does on Isola (whose default cache backend is in memory too).
//
// workerd turns cache.put(request, response) into a PUT of the request's
// URL to this service, the body being the response serialized as HTTP/1.1
// (status line, headers, body); match is a GET of the URL, answered with
// that serialization. Only put and match are implemented.
const store = new Map();

export default {
  async fetch(request) {
    switch (request.method) {
      case "PUT":
        store.set(request.url, await request.arrayBuffer());
        return new Response(null, { status: 204 });
      case "GET": {
        const value = store.get(request.url);
        if (value === undefined) return new Response(null, { status: 504 });
        return new Response(value);
      }
      case "PURGE":
        store.delete(request.url);
        return new Response(null, { status: 200 });
      default:
        return new Response("method not allowed\n", { status: 405 });
    }
  },
};
