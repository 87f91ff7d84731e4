// A rate limiter as a Durable Object: one token bucket per client key
// (the `x-client-key` header, else the client's address). Every request
// asks the key's object, over RPC, for a token; the object refills its
// bucket at REFILL_PER_SECOND up to CAPACITY. Requests for one key reach
// one object one at a time, so two of them never spend the same token,
// and the bucket is in the object's storage, so a restart forgets nothing.
import { DurableObject } from "cloudflare:workers";

export class RateLimiter extends DurableObject {
  // The bucket stays in memory while the object is alive; storage has it
  // for the next instance (after an idle eviction or a restart).
  bucket = null;

  /** Take one token: `{ allowed, remaining, retryAfterMs }`. */
  async take(capacity, refillPerSecond) {
    const now = Date.now();
    this.bucket ??= (await this.ctx.storage.get("bucket")) ?? { tokens: capacity, at: now };
    const bucket = this.bucket;
    const refilled = ((now - bucket.at) / 1000) * refillPerSecond;
    bucket.tokens = Math.min(capacity, bucket.tokens + refilled);
    bucket.at = now;
    const allowed = bucket.tokens >= 1;
    if (allowed) bucket.tokens -= 1;
    await this.ctx.storage.put("bucket", bucket);
    const missing = 1 - bucket.tokens;
    return {
      allowed,
      remaining: Math.floor(bucket.tokens),
      retryAfterMs: allowed ? 0 : Math.ceil((missing / refillPerSecond) * 1000),
    };
  }
}

export default {
  async fetch(request, env) {
    const key = request.headers.get("x-client-key") ?? request.cf?.clientAddress ?? "anonymous";
    const capacity = Number(env.CAPACITY ?? 5);
    const limiter = env.LIMITER.getByName(key);
    const { allowed, remaining, retryAfterMs } = await limiter.take(
      capacity,
      Number(env.REFILL_PER_SECOND ?? 1),
    );
    const headers = {
      "x-ratelimit-limit": String(capacity),
      "x-ratelimit-remaining": String(remaining),
    };
    if (!allowed) {
      headers["retry-after"] = String(Math.ceil(retryAfterMs / 1000));
      return new Response(`rate limited: try again in ${retryAfterMs} ms\n`, { status: 429, headers });
    }
    return new Response(`ok, ${key}: ${remaining} left\n`, { headers });
  },
};
