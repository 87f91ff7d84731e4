// A TypeScript worker whose errors come from another module (fail.ts):
// tests/e2e/js_errors.rs checks that the log names their original lines.
import { describe, explode, rejectLater } from "./fail";

interface Env {
  GREETING?: string;
}

export default {
  async fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    const path: string = new URL(request.url).pathname;
    if (path === "/throw") explode("uncaught");
    if (path === "/console") {
      console.error(describe("console.error"));
      return new Response("logged\n");
    }
    if (path === "/wait-until") {
      ctx.waitUntil(rejectLater("waitUntil"));
      return new Response("answered\n");
    }
    return new Response(`${env.GREETING ?? "hello"} from TypeScript\n`);
  },
} satisfies ExportedHandler<Env>;
