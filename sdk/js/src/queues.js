// `env.QUEUE`: Queues producers on `isola:worker/queue`, and the body of a
// message a consumer receives.

import { Producer } from "isola:worker/queue@0.1.0";
import { decoder, encoder, toBytes } from "./bytes.js";
import { call } from "./errors.js";

const CONTENT_TYPES = {
  json: "application/json",
  text: "text/plain",
  bytes: "application/octet-stream",
  v8: "application/json",
};

async function outgoing(body, options = {}) {
  const type = options.contentType ?? "json";
  const contentType = CONTENT_TYPES[type];
  if (!contentType) {
    throw new TypeError(`unknown contentType "${type}": use json, text, bytes or v8`);
  }
  const bytes =
    type === "json" || type === "v8"
      ? encoder.encode(JSON.stringify(body))
      : await toBytes(body);
  return {
    body: bytes,
    options: { contentType, delaySeconds: options.delaySeconds ?? undefined },
  };
}

export class WorkerQueue {
  #binding;
  #handle;
  constructor(binding) {
    this.#binding = binding;
  }
  #producer() {
    this.#handle ??= call(() => Producer.open(this.#binding));
    return this.#handle;
  }
  async send(body, options = {}) {
    const message = await outgoing(body, options);
    call(() => this.#producer().send(message.body, message.options));
  }
  async sendBatch(messages, options = {}) {
    const batch = [];
    for (const m of messages) {
      batch.push(
        await outgoing(m.body, {
          contentType: m.contentType,
          delaySeconds: m.delaySeconds ?? options.delaySeconds,
        }),
      );
    }
    call(() => this.#producer().sendBatch(batch));
  }
}

export function incomingBody(message) {
  const type = message.contentType.split(";")[0].trim();
  if (type === "application/json") return JSON.parse(decoder.decode(message.body));
  if (type.startsWith("text/")) return decoder.decode(message.body);
  return message.body.slice().buffer;
}
