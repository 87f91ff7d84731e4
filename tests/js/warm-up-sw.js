// A service-worker script for `warm_up` (tests/e2e/js_warm_up.rs): the
// build's warm-up dispatches to its fetch listener as a request would.

/** Requests this instance's listener answered: module state, which a
 * fresh instance takes from the snapshot. */
let answered = 0;

addEventListener("fetch", (event) => {
  event.waitUntil(Promise.resolve());
  event.respondWith(new Response(`answered before: ${answered++}`));
});
