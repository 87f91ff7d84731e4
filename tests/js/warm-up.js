// A worker for `warm_up` (tests/e2e/js_warm_up.rs): a router over a JSON
// API whose first request does what a real app's does (build its matcher,
// compile the regular expressions it runs and the functions it calls),
// which is most of a fresh instance's work, and routes that do what a
// warm-up request cannot (bindings, outbound fetch) or fail.

import { env as workersEnv } from "cloudflare:workers";
// The host's interface itself, which a module may import (the shim's
// guards are on `env`, `fetch` and `caches`).
import * as hostEnv from "isola:worker/env@0.1.0";

/** GET / served by this instance: module state, which a fresh instance
 * takes from the snapshot, so what the warm-up left here is in it. */
let served = 0;

/** Routes by method and pattern (`/api/users/:id`). As Hono's routers
 * do, it builds its matcher on the first request: one regular expression
 * per route, and the routes grouped by method. */
class Router {
  constructor() {
    this.routes = [];
    this.matcher = undefined;
  }
  add(method, pattern, handler) {
    this.routes.push({ method, pattern, handler });
    this.matcher = undefined;
    return this;
  }
  build() {
    const byMethod = new Map();
    for (const route of this.routes) {
      const names = [];
      const source = route.pattern
        .split("/")
        .map((part) => {
          if (part === "*") return ".*";
          if (!part.startsWith(":")) return part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
          const [name, constraint] = part.slice(1).split("{");
          names.push(name);
          return constraint ? `(${constraint.slice(0, -1)})` : "([^/]+)";
        })
        .join("/");
      const compiled = { regex: new RegExp(`^${source}/?$`), names, handler: route.handler };
      for (const method of route.method === "*" ? ["GET", "POST", "PUT", "DELETE"] : [route.method]) {
        if (!byMethod.has(method)) byMethod.set(method, []);
        byMethod.get(method).push(compiled);
      }
    }
    return byMethod;
  }
  match(method, path) {
    this.matcher ??= this.build();
    for (const route of this.matcher.get(method) ?? []) {
      const found = route.regex.exec(path);
      if (!found) continue;
      const params = {};
      route.names.forEach((name, i) => {
        params[name] = decodeURIComponent(found[i + 1]);
      });
      return { handler: route.handler, params };
    }
    return undefined;
  }
}

const ROLES = ["admin", "editor", "viewer", "guest"];
const CITIES = ["Lisbon", "Oslo", "Kyoto", "Quito", "Accra", "Perth"];

function makeUser(id) {
  const seed = (id * 2654435761) % 4294967296;
  return {
    id,
    name: `user-${id}`,
    email: `user${id}@example.com`,
    role: ROLES[seed % ROLES.length],
    address: { city: CITIES[seed % CITIES.length], zip: String(10000 + (seed % 89999)) },
    tags: Array.from({ length: 1 + (seed % 5) }, (_, i) => `tag-${(seed >> i) % 97}`),
    createdAt: new Date(Date.UTC(2024, seed % 12, 1 + (seed % 28))).toISOString(),
    active: seed % 3 !== 0,
  };
}

function validate(body) {
  const errors = [];
  if (typeof body !== "object" || body === null) return ["body must be an object"];
  if (typeof body.name !== "string" || body.name.length < 2) errors.push("name: at least 2 characters");
  if (body.email !== undefined && !/^[^@\s]+@[^@\s]+\.[a-z]{2,}$/i.test(body.email)) {
    errors.push("email: not an address");
  }
  if (body.role !== undefined && !ROLES.includes(body.role)) errors.push(`role: one of ${ROLES.join(", ")}`);
  return errors;
}

function paginate(items, url) {
  const page = Math.max(1, Number(url.searchParams.get("page") ?? 1));
  const size = Math.min(50, Math.max(1, Number(url.searchParams.get("size") ?? 10)));
  const start = (page - 1) * size;
  return { page, size, total: items.length, items: items.slice(start, start + size) };
}

function summarize(users) {
  const byRole = {};
  const byCity = new Map();
  for (const user of users) {
    byRole[user.role] = (byRole[user.role] ?? 0) + 1;
    byCity.set(user.address.city, (byCity.get(user.address.city) ?? 0) + 1);
  }
  return {
    byRole,
    byCity: Object.fromEntries([...byCity].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))),
    active: users.filter((u) => u.active).length,
  };
}

function json(value, status = 200) {
  return new Response(JSON.stringify(value), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" },
  });
}

function etag(text) {
  let hash = 2166136261;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 16777619) >>> 0;
  }
  return `"${hash.toString(16)}"`;
}

const router = new Router()
  .add("GET", "/", () => new Response(String(served++)))
  .add("GET", "/api/users/:id{[0-9]+}", (request, params) => {
    const user = makeUser(Number(params.id));
    const body = JSON.stringify({ user, links: { self: `/api/users/${user.id}`, team: "/api/teams/1" } });
    return new Response(body, { headers: { "content-type": "application/json", etag: etag(user.email) } });
  })
  .add("GET", "/api/users", (request) => {
    const url = new URL(request.url);
    const users = Array.from({ length: 40 }, (_, i) => makeUser(i + 1));
    const role = url.searchParams.get("role");
    const page = paginate(role ? users.filter((u) => u.role === role) : users, url);
    return json({ ...page, summary: summarize(page.items) });
  })
  .add("POST", "/api/users", async (request) => {
    const body = await request.json();
    const errors = validate(body);
    if (errors.length > 0) return json({ errors }, 422);
    return json({ created: { id: 1000, ...body, role: body.role ?? "viewer" } }, 201);
  })
  // What a request's ctx, env and cf are: a warm-up request's have no host
  // behind them (`in` asks without throwing).
  .add("GET", "/ctx", (request, params, env, ctx) => {
    ctx.waitUntil(Promise.resolve("later"));
    ctx.passThroughOnException();
    return json({
      requestId: ctx.requestId,
      cfRequestId: request.cf.requestId,
      greeting: "GREETING" in env ? env.GREETING : "not configured",
      workersGreeting: "GREETING" in workersEnv ? workersEnv.GREETING : "not configured",
    });
  })
  .add("GET", "/api/teams", () => json({ items: [], kind: "teams" }))
  .add("GET", "/api/teams/:id{[0-9]+}", (request, params) => json({ id: Number(params.id), kind: "teams" }))
  .add("GET", "/api/projects", () => json({ items: [], kind: "projects" }))
  .add("GET", "/api/projects/:id{[0-9]+}", (request, params) => json({ id: Number(params.id), kind: "projects" }))
  .add("GET", "/api/posts", () => json({ items: [], kind: "posts" }))
  .add("GET", "/api/posts/:id{[0-9]+}", (request, params) => json({ id: Number(params.id), kind: "posts" }))
  .add("GET", "/api/comments", () => json({ items: [], kind: "comments" }))
  .add("GET", "/api/comments/:id{[0-9]+}", (request, params) => json({ id: Number(params.id), kind: "comments" }))
  .add("GET", "/api/invoices", () => json({ items: [], kind: "invoices" }))
  .add("GET", "/api/invoices/:id{[0-9]+}", (request, params) => json({ id: Number(params.id), kind: "invoices" }))
  .add("GET", "/api/orders", () => json({ items: [], kind: "orders" }))
  .add("GET", "/api/orders/:id{[0-9]+}", (request, params) => json({ id: Number(params.id), kind: "orders" }))
  .add("GET", "/api/products", () => json({ items: [], kind: "products" }))
  .add("GET", "/api/products/:id{[0-9]+}", (request, params) => json({ id: Number(params.id), kind: "products" }))
  .add("GET", "/api/reviews", () => json({ items: [], kind: "reviews" }))
  .add("GET", "/api/reviews/:id{[0-9]+}", (request, params) => json({ id: Number(params.id), kind: "reviews" }))
  .add("GET", "/api/tickets", () => json({ items: [], kind: "tickets" }))
  .add("GET", "/api/tickets/:id{[0-9]+}", (request, params) => json({ id: Number(params.id), kind: "tickets" }))
  .add("GET", "/api/events", () => json({ items: [], kind: "events" }))
  .add("GET", "/api/events/:id{[0-9]+}", (request, params) => json({ id: Number(params.id), kind: "events" }))
  .add("GET", "/health", () => new Response("ok"))
  .add("GET", "/static/*", () => new Response("static"))
  .add("GET", "/kv", async (request, params, env) => new Response(await env.SOME_KV.get("x")))
  .add("GET", "/outbound", () => fetch("http://example.com/"))
  .add("GET", "/host-import", () => new Response(String(hostEnv.bindings().length)))
  // Waits for what never comes at build time.
  .add("GET", "/never", () => new Promise(() => {}))
  .add("GET", "/throw", () => {
    throw new Error("the warm-up route failed on purpose");
  })
  .add("GET", "/missing", () => json({ error: "not here" }, 404));

export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    const found = router.match(request.method, url.pathname);
    if (!found) return json({ error: `no route for ${request.method} ${url.pathname}` }, 404);
    return found.handler(request, found.params, env, ctx);
  },
};
