// Durable Objects benchmark worker: identical source is served by Isola
// (bench/src/sections/durable.rs) and by workerd (bench/workerd/durable.capnp).
// A counter per name, as guest-examples/rust/durable-counter has it:
//   POST /counter/<name>/increment  `await stub.increment()` over RPC: the
//                                   object adds 1 and stores the count;
//   GET  /counter/<name>            the count (`x-count`) and how many events
//                                   the object's current instance has served
//                                   (`x-served-by-live-instance`).
import { DurableObject } from "cloudflare:workers";

export class Counter extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    // Kept for as long as the object's instance lives: it is the object's
    // only writer, so the cached count stays right.
    this.count = undefined;
    this.events = 0;
  }

  async increment() {
    this.events += 1;
    this.count ??= (await this.ctx.storage.get("count")) ?? 0;
    this.count += 1;
    await this.ctx.storage.put("count", this.count);
    return this.count;
  }

  async read() {
    this.events += 1;
    this.count ??= (await this.ctx.storage.get("count")) ?? 0;
    return { count: this.count, events: this.events };
  }
}

export default {
  async fetch(request, env) {
    const match = new URL(request.url).pathname.match(/^\/counter\/([^/]+)(\/increment)?$/);
    if (match === null) {
      return new Response("not found\n", { status: 404 });
    }
    const stub = env.COUNTER.getByName(decodeURIComponent(match[1]));
    if (match[2] !== undefined && request.method === "POST") {
      const count = await stub.increment();
      return new Response(`${count}\n`, { headers: { "x-count": String(count) } });
    }
    if (match[2] === undefined && request.method === "GET") {
      const { count, events } = await stub.read();
      return new Response(`${count}\n`, {
        headers: { "x-count": String(count), "x-served-by-live-instance": String(events) },
      });
    }
    return new Response("not found\n", { status: 404 });
  },
};
