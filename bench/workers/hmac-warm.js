// Experiment: hmac.js with a digest and an HMAC run once at module
// initialisation, i.e. inside the build's Wizer snapshot, so that a fresh
// instance starts with that first-run work done (bench/RESULTS.md, "JS
// workloads (issue 30, point 1)"). Not in the bench's tables; build it with
// `isola build bench/workers/hmac-warm.js` to compare with hmac.js.
import worker from "./hmac.js";
for (let i = 0; i < 3; i++) {
  await worker.fetch(new Request("http://localhost/sign", { method: "POST", body: "warm-up" }));
}
export default worker;
