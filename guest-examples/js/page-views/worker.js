// Page views in D1: every page answers at once; the view is counted with an
// upsert in `ctx.waitUntil`, after the response is on its way.
const SCHEMA = `CREATE TABLE IF NOT EXISTS page_views (
  path TEXT PRIMARY KEY,
  views INTEGER NOT NULL
)`;

export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname === "/js/views/top") {
      await env.DB.exec(SCHEMA);
      const { results } = await env.DB.prepare(
        "SELECT path, views FROM page_views ORDER BY views DESC, path LIMIT ?",
      )
        .bind(10)
        .all();
      return Response.json(results);
    }
    ctx.waitUntil(
      (async () => {
        await env.DB.exec(SCHEMA);
        await env.DB.prepare(
          `INSERT INTO page_views (path, views) VALUES (?, 1)
           ON CONFLICT (path) DO UPDATE SET views = views + 1`,
        )
          .bind(url.pathname)
          .run();
      })(),
    );
    return new Response(`you are on ${url.pathname}\n`);
  },
};
