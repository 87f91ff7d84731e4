// A worker written as a `WorkerEntrypoint` class, with the module-level
// `env` and `waitUntil` of `cloudflare:workers`; tests/e2e/js.rs checks it.
import { WorkerEntrypoint, env, waitUntil } from "cloudflare:workers";

export default class extends WorkerEntrypoint {
  async fetch(request) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/later":
        // Runs after the response, as with ctx.waitUntil.
        waitUntil(
          (async () => {
            await scheduler.wait(20);
            await env.KV.put("later", "done");
          })(),
        );
        return new Response("accepted", { status: 202 });
      case "/read":
        return new Response(await this.env.KV.get(url.searchParams.get("key")));
      default:
        return Response.json({
          greeting: this.env.GREETING,
          moduleEnv: env.GREETING,
          ctx: typeof this.ctx.waitUntil,
        });
    }
  }

  async scheduled(controller) {
    await this.env.KV.put("cron", controller.cron);
  }
}
