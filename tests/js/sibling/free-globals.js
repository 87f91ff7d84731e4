// Names `Buffer` and `process` without importing them, as code written for
// Workers' `nodejs_compat` may: the build binds them to node:buffer's
// `Buffer` and node:process.
export function freeGlobals() {
  return [Buffer.from("free").toString("base64"), typeof process.nextTick, typeof global.setTimeout];
}
