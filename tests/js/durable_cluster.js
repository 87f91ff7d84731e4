// Durable Objects on two nodes: what tests/e2e/durable_cluster.rs checks.
// Each node runs this worker with its own `NODE` var; an object reports
// the node its instance lives on and the instance itself, so the test can
// tell that every event of one object ran in one place.
import { DurableObject } from "cloudflare:workers";

export class Counter extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.node = env.NODE;
    this.instance = `${env.NODE}:${Date.now()}:${Math.random()}`;
  }

  async increment() {
    const count = ((await this.ctx.storage.get("count")) ?? 0) + 1;
    await this.ctx.storage.put("count", count);
    return { count, node: this.node, instance: this.instance };
  }

  async scheduleAlarm(inMs) {
    await this.ctx.storage.setAlarm(Date.now() + inMs);
    return { node: this.node };
  }

  async alarm(info) {
    const fired = (await this.ctx.storage.get("alarms")) ?? [];
    fired.push({ node: this.node, retryCount: info.retryCount });
    await this.ctx.storage.put("alarms", fired);
  }

  async fetch(request) {
    return Response.json({
      count: (await this.ctx.storage.get("count")) ?? 0,
      alarms: (await this.ctx.storage.get("alarms")) ?? [],
      node: this.node,
      instance: this.instance,
      // What the stub sent, as the object got it (forwarded or not).
      method: request.method,
      url: request.url,
      note: request.headers.get("x-note"),
    });
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const stub = env.COUNTER.getByName(url.searchParams.get("name") ?? "default");
    switch (url.pathname) {
      case "/increment":
        return Response.json(await stub.increment());
      case "/alarm":
        return Response.json(await stub.scheduleAlarm(Number(url.searchParams.get("in") ?? 0)));
      case "/state":
        return stub.fetch(`http://counter/state${url.search}`, {
          method: "PATCH",
          headers: { "x-note": `from ${env.NODE}` },
        });
    }
    return new Response("not found\n", { status: 404 });
  },
};
