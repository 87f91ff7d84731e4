// A service-worker style script, as Workers' older examples are written:
// no default export, its bindings are globals. tests/e2e/js.rs checks it.
/* global GREETING, KV */

addEventListener("fetch", (event) => {
  event.respondWith(handle(event));
});

async function handle(event) {
  const url = new URL(event.request.url);
  if (url.pathname === "/count") {
    const count = Number((await KV.get("count")) ?? 0) + 1;
    event.waitUntil(KV.put("count", String(count)));
    return new Response(String(count));
  }
  if (url.pathname === "/peek") {
    // The stored count, read without writing.
    return new Response(String(await KV.get("count")));
  }
  if (url.pathname === "/throw") {
    event.passThroughOnException();
    throw new Error("thrown after passThroughOnException");
  }
  return new Response(`${GREETING} via ${event.request.cf.httpProtocol}`);
}
