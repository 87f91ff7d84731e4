// Helpers that fail on known lines and columns: tests/e2e/js_errors.rs
// asserts them. The type annotation before each `new` moves its column in
// the JavaScript esbuild makes, so only a mapped frame names these.

export function explode(reason: string): never {
  const error: Error = new Error(`exploded: ${reason}`);
  throw error;
}

export function describe(what: string): Error {
  const error: Error = new Error(`logged: ${what}`);
  return error;
}

export async function rejectLater(what: string): Promise<void> {
  await Promise.resolve();
  const error: TypeError = new TypeError(`rejected: ${what}`);
  throw error;
}
