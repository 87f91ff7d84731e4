// `cloudflare:workers`, as far as Isola goes: `WorkerEntrypoint` (a class
// default export: `export default class extends WorkerEntrypoint { fetch(request)
// { this.env ... } }`), `DurableObject` (the base of a Durable Object class:
// `export class Counter extends DurableObject { ... this.ctx.storage ... }`),
// the module-level `env` and `waitUntil`. The shim lends this module its
// `env` and the current request's `ctx` through two symbols, so that the
// worker's bundle does not carry a second shim. Workflows are not there:
// their classes can be declared (a module may export one it binds
// elsewhere), not constructed.

const hooks = () => globalThis[Symbol.for("isola.cloudflare-workers")];

export class WorkerEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

function unavailable(what) {
  return class {
    constructor() {
      throw new Error(`${what} are not available on Isola`);
    }
  };
}

/** The base of a Durable Object class: the shim constructs the exported
 * class once per object with the object's state (`this.ctx`: `id`,
 * `storage`, `waitUntil`, `blockConcurrencyWhile`) and the worker's `env`. */
export class DurableObject {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

export const WorkflowEntrypoint = unavailable("Workflows");
export class RpcTarget {}

/** The worker's `env`, read from the host when first used (not at build
 * time, when the module's top level runs). */
let current;
function real() {
  if (current !== undefined) return current;
  const env = hooks().env();
  // A build-time warm-up request's env (no bindings) is not kept.
  if (!hooks().warming?.()) current = env;
  return env;
}
export const env = new Proxy(
  {},
  {
    get: (_, key) => Reflect.get(real(), key),
    has: (_, key) => Reflect.has(real(), key),
    ownKeys: () => Reflect.ownKeys(real()),
    getOwnPropertyDescriptor: (_, key) => Reflect.getOwnPropertyDescriptor(real(), key),
  },
);

/** `ctx.waitUntil` of the request being served. */
export function waitUntil(promise) {
  hooks().waitUntil(promise);
}

export default { WorkerEntrypoint, DurableObject, WorkflowEntrypoint, RpcTarget, env, waitUntil };
