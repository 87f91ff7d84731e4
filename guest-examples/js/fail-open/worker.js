// Fail open: if this worker throws, the request goes to the origin as if
// the worker were not there (`ctx.passThroughOnException()`).
export default {
  async fetch(request, env, ctx) {
    ctx.passThroughOnException();
    const url = new URL(request.url);
    if (url.searchParams.has("crash")) {
      throw new Error("the enrichment service is down");
    }
    const body = await request.text();
    if (request.method === "POST") {
      JSON.parse(body); // a body that is not JSON throws: the origin answers
    }
    return new Response(
      `enriched by the worker: ${request.method} ${url.pathname} (${body.length} bytes)\n`,
    );
  },
};
