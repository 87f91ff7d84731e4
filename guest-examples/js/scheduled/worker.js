// A cron worker: every firing records itself in KV (in `ctx.waitUntil`, to
// show it runs before the firing ends); `GET /js/cron` shows the last one.
export default {
  async scheduled(controller, env, ctx) {
    const run = { cron: controller.cron, scheduledTime: controller.scheduledTime };
    console.log(`cron ${controller.cron} fired for ${new Date(controller.scheduledTime).toISOString()}`);
    ctx.waitUntil(env.KV.put("last-run", JSON.stringify(run)));
  },

  async fetch(request, env) {
    const last = await env.KV.get("last-run", "json");
    return Response.json({ lastRun: last });
  },
};
