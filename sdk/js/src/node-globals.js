// Globals a worker with Workers' `nodejs_compat` can use without importing
// them. esbuild's `inject` binds a free `Buffer` or `process` in the worker
// to these exports; a worker that never names them gets neither.
export { Buffer } from "unenv/node/buffer";
export { default as process } from "unenv/node/process";
