// Bytes: what the bindings take as a value (strings, buffers, views, blobs,
// streams) as a Uint8Array, and the shared text codecs.

export const encoder = new TextEncoder();
export const decoder = new TextDecoder();

export async function toBytes(value) {
  if (value === null || value === undefined) return new Uint8Array(0);
  if (typeof value === "string") return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) {
    return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  if (value instanceof ReadableStream || value instanceof Blob) {
    return new Uint8Array(await new Response(value).arrayBuffer());
  }
  throw new TypeError(
    "expected a string, ArrayBuffer, ArrayBufferView, Blob or ReadableStream",
  );
}

export const toSeconds = (value) =>
  value === undefined || value === null ? undefined : BigInt(Math.floor(Number(value)));

// One read from a host stream: an R2 object's body, a request's body.
export const READ_CHUNK = 64 * 1024;
