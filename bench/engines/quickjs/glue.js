// The wasi:http handler of a QuickJS build of a benchmark worker
// (build.sh; measurement only): the request in as a Request, the
// worker's fetch run to completion, its Response written out.
import { drainJobs } from "./webshim.js";
import types from "wazi:http/types@0.2.10";
import app from "WORKER";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function readBody(request) {
  const body = request.consume();
  const stream = body.stream();
  const chunks = [];
  let total = 0;
  for (;;) {
    let chunk;
    try { chunk = stream.blockingRead(65536); } catch (e) { break; }
    if (chunk.length) { chunks.push(chunk); total += chunk.length; }
  }
  stream[Symbol.dispose]();
  body[Symbol.dispose]();
  if (total === 0) return null;
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}

export const incomingHandler = {
  handle(request, responseOut) {
    const method = request.method();
    const name = method.tag === "other" ? method.val : method.tag.toUpperCase();
    const headers = new Headers();
    for (const [k, v] of request.headers().entries()) headers.append(k, decoder.decode(v));
    const url = `http://${request.authority() ?? "localhost"}${request.pathWithQuery() ?? "/"}`;
    const body = name === "GET" || name === "HEAD" ? null : readBody(request);
    const req = new Request(url, { method: name, headers, body: body ?? undefined });
    let result, failure;
    Promise.resolve(app.fetch(req, {}, { waitUntil() {}, passThroughOnException() {} })).then(
      (r) => { result = r; },
      (e) => { failure = e; },
    );
    drainJobs();
    if (!result) throw failure ?? new Error("the handler did not finish");
    const fields = types.Fields.fromList([...result.headers].map(([k, v]) => [k, encoder.encode(v)]));
    const response = new types.OutgoingResponse(fields);
    response.setStatusCode(result.status);
    const out = response.body();
    types.ResponseOutparam.set(responseOut, { tag: "ok", val: response });
    const stream = out.write();
    const bytes = result.bytes ?? new Uint8Array(0);
    for (let at = 0; at < bytes.length; at += 4096) stream.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
    stream[Symbol.dispose]();
    types.OutgoingBody.finish(out, null);
  },
};
