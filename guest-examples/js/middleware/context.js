// The request context a middleware chain passes along, and the
// Cloudflare-style way to carry it between workers: base64 JSON in the
// `x-cf-ctx-payload` header. Headers are small, so the payload is guarded:
// more than 5 KB is the caller's mistake and answers 400. (On Isola,
// `ctx.locals` carries typed values between workers without any header or
// size limit; this example shows the pattern Workers code uses today.)

export const HEADER = "x-cf-ctx-payload";
export const MAX_PAYLOAD_BYTES = 5 * 1024;

export class PayloadTooLarge extends Error {}
export class BadPayload extends Error {}

/** @typedef {{ user: { id: string, role: string } | null, tenant: string | null, trail: string[], note?: string }} RequestContext */

/** @returns {RequestContext} */
export function emptyContext() {
  return { user: null, tenant: null, trail: [] };
}

function toBase64(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

function fromBase64(text) {
  const binary = atob(text);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** @param {RequestContext} context */
export function encode(context) {
  const payload = toBase64(JSON.stringify(context));
  if (payload.length > MAX_PAYLOAD_BYTES) {
    throw new PayloadTooLarge(
      `context payload is ${payload.length} bytes; the limit is ${MAX_PAYLOAD_BYTES}`,
    );
  }
  return payload;
}

/** @returns {RequestContext} */
export function decode(headers) {
  const payload = headers.get(HEADER);
  if (payload === null) throw new BadPayload(`missing ${HEADER}`);
  if (payload.length > MAX_PAYLOAD_BYTES) {
    throw new PayloadTooLarge(`context payload is ${payload.length} bytes`);
  }
  try {
    const context = JSON.parse(fromBase64(payload));
    if (!Array.isArray(context.trail)) throw new Error("no trail");
    return context;
  } catch (e) {
    throw new BadPayload(`malformed ${HEADER}: ${e.message}`);
  }
}
