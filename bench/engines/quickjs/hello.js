// A QuickJS hello that calls wasi:http directly (build.sh): the engine's
// floor, with no Web API layer.
import types from "wazi:http/types@0.2.10";

function bytes(s) { const b = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i); return b; }
export const incomingHandler = {
  handle(request, responseOut) {
    const headers = types.Fields.fromList([["content-type", bytes("text/plain")]]);
    const response = new types.OutgoingResponse(headers);
    response.setStatusCode(200);
    const body = response.body();
    types.ResponseOutparam.set(responseOut, { tag: "ok", val: response });
    const stream = body.write();
    stream.blockingWriteAndFlush(bytes("Hello from Isola!\n"));
    stream[Symbol.dispose]();
    types.OutgoingBody.finish(body, null);
  },
};
