// Globals a worker can use without importing them, bound by esbuild's
// `inject` only where a module names them free: a worker that never does
// gets none of this code.
// `Buffer` and `process`, as Workers' `nodejs_compat` has them.
export { Buffer } from "unenv/node/buffer";
export { default as process } from "unenv/node/process";
