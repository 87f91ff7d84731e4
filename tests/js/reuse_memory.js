// A worker for `instance_reuse`'s retirement of grown instances
// (tests/e2e/js_reuse.rs). Its live heap, built at the top level (so in
// the snapshot), makes every full collection of SpiderMonkey's heap
// costly; each request's objects live on for the next 40 requests, long
// enough for minor collections to move them to the tenured heap, which
// then fills with garbage until a full collection.

const live = [];
for (let i = 0; i < 200000; i++) live.push({ i, name: `live-${i}` });

const recent = new Array(40);
let served = 0; // module state: the requests this instance has served

export default {
  async fetch(request) {
    const url = new URL(request.url);
    served += 1;
    if (url.pathname === "/spin") {
      // A worker that really spins must still hit cpu_ms.
      for (;;) served = (served * 31 + 7) % 1000003;
    }
    const n = Number(url.searchParams.get("n") ?? 2000);
    const made = [];
    for (let i = 0; i < n; i++) made.push({ i, pair: [i, served], name: `r-${i}` });
    recent[served % recent.length] = made;
    return new Response(`${served} ${live.length}`);
  },
};
