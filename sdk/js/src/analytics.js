// `env.EVENTS`: Analytics Engine on `isola:worker/analytics`.

import { Dataset } from "isola:worker/analytics@0.1.0";
import { encoder } from "./bytes.js";
import { call } from "./errors.js";

export class AnalyticsEngineDataset {
  #binding;
  #handle;
  constructor(binding) {
    this.#binding = binding;
  }
  writeDataPoint(point = {}) {
    this.#handle ??= call(() => Dataset.open(this.#binding));
    const bytes = (v) =>
      v === null || v === undefined
        ? new Uint8Array(0)
        : typeof v === "string"
          ? encoder.encode(v)
          : v instanceof ArrayBuffer
            ? new Uint8Array(v)
            : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    call(() =>
      this.#handle.writeDataPoint({
        blobs: (point.blobs ?? []).map(bytes),
        doubles: (point.doubles ?? []).map(Number),
        indexes: (point.indexes ?? []).map(bytes),
      }),
    );
  }
}
