// Experiment: hono.js with its two benchmarked routes run once at module
// initialisation, i.e. inside the build's Wizer snapshot, so that a fresh
// instance starts with that first-run work done (bench/RESULTS.md, "JS
// workloads (issue 30, point 1)"). Not in the bench's tables; build it with
// `isola build bench/workers/hono-warm.js` to compare with hono.js.
import app from "./hono.js";
const user = `{"name":" Ada Lovelace ","email":"Ada@Example.com","age":36,"roles":["dev","admin","dev"],"address":{"street":"12 St James's Square","city":"London","zip":"SW1Y 4JH"}}`;
for (let i = 0; i < 3; i++) {
  await app.fetch(new Request("http://localhost/api/users/7"));
  await app.fetch(
    new Request("http://localhost/api/users", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: user,
    }),
  );
}
export default app;
