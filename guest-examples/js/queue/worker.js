// A queue producer and consumer in one worker: `POST /js/jobs?n=5` sends
// five jobs; the consumer adds each job's number to a total in KV, acking
// what it handled and retrying a job marked `fail` until it lands in the
// dead-letter queue.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (request.method === "POST") {
      const n = Number(url.searchParams.get("n") ?? "1");
      const fail = url.searchParams.has("fail");
      const jobs = Array.from({ length: n }, (_, i) => ({ body: { n: i + 1, fail } }));
      await env.JOBS.sendBatch(jobs);
      return new Response(`queued ${n}\n`, { status: 202 });
    }
    const total = Number((await env.STATE.get("total")) ?? "0");
    const handled = Number((await env.STATE.get("handled")) ?? "0");
    return Response.json({ total, handled });
  },

  async queue(batch, env) {
    let total = Number((await env.STATE.get("total")) ?? "0");
    let handled = Number((await env.STATE.get("handled")) ?? "0");
    for (const message of batch.messages) {
      if (message.body.fail) {
        console.log(`job ${message.body.n} failed (attempt ${message.attempts})`);
        message.retry({ delaySeconds: 0 });
        continue;
      }
      total += message.body.n;
      handled += 1;
      message.ack();
    }
    await env.STATE.put("total", String(total));
    await env.STATE.put("handled", String(handled));
  },
};
