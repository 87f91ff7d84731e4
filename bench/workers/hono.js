// Benchmark worker: a Hono app (bench/src/sections/js_workloads.rs). The
// same source is bundled by `isola build` for Isola and by the same esbuild
// for workerd. About 20 routes in two routers, a middleware chain (timing
// header, CORS, secure headers, a per-route guard) and a JSON API that
// validates its body. Answers are deterministic, so that Isola's and
// workerd's can be compared byte for byte.
import { Hono } from "hono";
import { cors } from "hono/cors";
import { secureHeaders } from "hono/secure-headers";
import { validator } from "hono/validator";
import { HTTPException } from "hono/http-exception";

const USERS = Array.from({ length: 50 }, (_, i) => ({
  id: i + 1,
  name: `User ${i + 1}`,
  email: `user${i + 1}@example.com`,
  roles: i % 5 === 0 ? ["admin", "dev"] : ["dev"],
  active: i % 7 !== 0,
}));
const POSTS = Array.from({ length: 30 }, (_, i) => ({
  id: i + 1,
  author: (i % 50) + 1,
  title: `Post number ${i + 1}`,
  tags: ["news", "tech", "ops"].slice(0, (i % 3) + 1),
}));
const PRODUCTS = Array.from({ length: 40 }, (_, i) => ({
  sku: `SKU-${String(i + 1).padStart(4, "0")}`,
  price: Math.round((i + 1) * 3.75 * 100) / 100,
  stock: (i * 13) % 17,
}));

// A string's 32-bit FNV-1a hash, as hex: deterministic ids.
function fnv1a(text) {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, "0");
}

const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;
const ROLES = new Set(["admin", "dev", "ops", "viewer"]);

// The schema of POST /api/users: a list of problems, empty when valid.
function checkUser(body) {
  const errors = [];
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return ["body: expected an object"];
  }
  if (typeof body.name !== "string" || body.name.length < 1 || body.name.length > 100) {
    errors.push("name: a string of 1 to 100 characters");
  }
  if (typeof body.email !== "string" || !EMAIL.test(body.email)) {
    errors.push("email: an email address");
  }
  if (!Number.isInteger(body.age) || body.age < 0 || body.age > 150) {
    errors.push("age: an integer from 0 to 150");
  }
  if (!Array.isArray(body.roles) || body.roles.some((r) => !ROLES.has(r))) {
    errors.push(`roles: a list of ${[...ROLES].join(", ")}`);
  }
  const address = body.address;
  if (address !== undefined) {
    if (typeof address !== "object" || address === null) {
      errors.push("address: an object");
    } else {
      for (const key of ["street", "city", "zip"]) {
        if (typeof address[key] !== "string") errors.push(`address.${key}: a string`);
      }
    }
  }
  return errors;
}

const checkOrder = (body) => {
  const errors = [];
  if (!Array.isArray(body?.items) || body.items.length === 0) {
    errors.push("items: a non-empty list");
  } else {
    body.items.forEach((item, i) => {
      if (!PRODUCTS.some((p) => p.sku === item?.sku)) errors.push(`items[${i}].sku: unknown`);
      if (!Number.isInteger(item?.quantity) || item.quantity < 1) {
        errors.push(`items[${i}].quantity: a positive integer`);
      }
    });
  }
  return errors;
};

const jsonBody = (check) =>
  validator("json", (value, c) => {
    const errors = check(value);
    if (errors.length > 0) return c.json({ ok: false, errors }, 400);
    return value;
  });

const app = new Hono();

// The middleware chain every request goes through.
app.use("*", async (c, next) => {
  const started = Date.now();
  await next();
  c.header("x-response-time", `${Date.now() - started}ms`);
});
app.use("*", cors({ origin: ["https://example.com"], maxAge: 600, credentials: true }));
app.use("*", secureHeaders());
app.use("/api/*", async (c, next) => {
  c.header("x-api-version", "2026-01");
  await next();
});
// A guard on the admin routes (a token check, as an auth middleware does).
const requireToken = async (c, next) => {
  if (c.req.header("authorization") !== "Bearer bench-token") {
    throw new HTTPException(401, { message: "unauthorized" });
  }
  await next();
};

app.get("/", (c) => c.text("Hono on a worker\n"));
app.get("/health", (c) => c.json({ ok: true }));
app.get("/about", (c) => c.html("<h1>About</h1><p>A benchmark app.</p>"));
app.get("/docs/*", (c) => c.text(`docs for ${c.req.path.slice(6)}\n`));

const api = new Hono();
api.get("/users", (c) => {
  const limit = Math.min(Number(c.req.query("limit") ?? 20) || 20, 50);
  const active = c.req.query("active");
  const users = USERS.filter((u) => active === undefined || String(u.active) === active);
  return c.json({ users: users.slice(0, limit), total: users.length });
});
api.get("/users/:id{[0-9]+}", (c) => {
  const user = USERS.find((u) => u.id === Number(c.req.param("id")));
  if (!user) return c.json({ error: "no such user" }, 404);
  const posts = POSTS.filter((p) => p.author === user.id).map((p) => p.id);
  return c.json({ ...user, posts });
});
api.post("/users", jsonBody(checkUser), (c) => {
  const body = c.req.valid("json");
  const user = {
    id: fnv1a(body.email),
    name: body.name.trim(),
    email: body.email.toLowerCase(),
    age: body.age,
    roles: [...new Set(body.roles)].sort(),
    address: body.address ?? null,
    admin: body.roles.includes("admin"),
  };
  return c.json({ ok: true, user }, 201);
});
api.put("/users/:id{[0-9]+}", jsonBody(checkUser), (c) =>
  c.json({ ok: true, id: Number(c.req.param("id")), user: c.req.valid("json") }),
);
api.delete("/users/:id{[0-9]+}", requireToken, (c) =>
  c.json({ ok: true, deleted: Number(c.req.param("id")) }),
);
api.get("/posts", (c) => c.json({ posts: POSTS }));
api.get("/posts/:id{[0-9]+}", (c) => {
  const post = POSTS.find((p) => p.id === Number(c.req.param("id")));
  return post ? c.json(post) : c.json({ error: "no such post" }, 404);
});
api.get("/posts/:id{[0-9]+}/comments", (c) =>
  c.json({ post: Number(c.req.param("id")), comments: [] }),
);
api.post("/posts/:id{[0-9]+}/comments", async (c) => {
  const body = await c.req.json();
  return c.json({ post: Number(c.req.param("id")), comment: String(body.text ?? "") }, 201);
});
api.get("/tags", (c) => c.json({ tags: [...new Set(POSTS.flatMap((p) => p.tags))] }));
api.get("/tags/:tag", (c) =>
  c.json({ posts: POSTS.filter((p) => p.tags.includes(c.req.param("tag"))).map((p) => p.id) }),
);
api.get("/search", (c) => {
  const q = (c.req.query("q") ?? "").toLowerCase();
  return c.json({ q, users: USERS.filter((u) => u.name.toLowerCase().includes(q)).length });
});
api.get("/products", (c) => c.json({ products: PRODUCTS }));
api.get("/products/:sku", (c) => {
  const product = PRODUCTS.find((p) => p.sku === c.req.param("sku"));
  return product ? c.json(product) : c.json({ error: "no such product" }, 404);
});
api.post("/orders", jsonBody(checkOrder), (c) => {
  const { items } = c.req.valid("json");
  const total = items.reduce(
    (sum, item) => sum + PRODUCTS.find((p) => p.sku === item.sku).price * item.quantity,
    0,
  );
  return c.json({ ok: true, total: Math.round(total * 100) / 100 }, 201);
});
api.get("/admin/stats", requireToken, (c) =>
  c.json({ users: USERS.length, posts: POSTS.length, products: PRODUCTS.length }),
);
app.route("/api", api);

app.notFound((c) => c.json({ error: "not found", path: c.req.path }, 404));
app.onError((err, c) => {
  if (err instanceof HTTPException) return c.json({ error: err.message }, err.status);
  return c.json({ error: "internal error" }, 500);
});

export default app;
