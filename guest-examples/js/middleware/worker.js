// A middleware chain of three workers built from this one module, told
// apart by their ROLE var: `auth` checks the bearer token, `tenant` picks
// the tenant, `app` answers with the context they built. Each calls the
// next through a service binding and hands the context on in the
// `x-cf-ctx-payload` header (see context.js).
import { BadPayload, HEADER, PayloadTooLarge, decode, emptyContext, encode } from "./context.js";

const TOKENS = { "token-alice": { id: "alice", role: "admin" }, "token-bob": { id: "bob", role: "reader" } };

function forward(service, request, context) {
  const headers = new Headers(request.headers);
  headers.set(HEADER, encode(context));
  return service.fetch(new Request(request.url, { method: request.method, headers }));
}

const steps = {
  async auth(request, env) {
    const token = (request.headers.get("authorization") ?? "").replace(/^Bearer /, "");
    const user = TOKENS[token];
    if (!user) return new Response("unauthorized\n", { status: 401 });
    const context = emptyContext();
    context.user = user;
    context.trail.push("auth");
    const note = new URL(request.url).searchParams.get("note");
    if (note) context.note = note;
    return forward(env.TENANT, request, context);
  },
  async tenant(request, env) {
    const context = decode(request.headers);
    context.tenant = request.headers.get("x-tenant") ?? "default";
    context.trail.push("tenant");
    return forward(env.APP, request, context);
  },
  async app(request) {
    const context = decode(request.headers);
    context.trail.push("app");
    return Response.json(context);
  },
};

export default {
  async fetch(request, env) {
    const step = steps[env.ROLE];
    if (!step) return new Response(`unknown ROLE ${env.ROLE}\n`, { status: 500 });
    try {
      return await step(request, env);
    } catch (e) {
      if (e instanceof PayloadTooLarge || e instanceof BadPayload) {
        return new Response(`bad request: ${e.message}\n`, { status: 400 });
      }
      throw e;
    }
  },
};
