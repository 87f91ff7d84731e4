// `env.DB`: D1 on `isola:worker/sql`.

import { Database } from "isola:worker/sql@0.1.0";
import { call } from "./errors.js";

function sqlValue(value) {
  if (value === null || value === undefined) return { tag: "null" };
  switch (typeof value) {
    case "number":
      return Number.isInteger(value)
        ? { tag: "integer", val: BigInt(value) }
        : { tag: "real", val: value };
    case "bigint":
      return { tag: "integer", val: value };
    case "boolean":
      return { tag: "integer", val: value ? 1n : 0n };
    case "string":
      return { tag: "text", val: value };
  }
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
    return {
      tag: "blob",
      val:
        value instanceof ArrayBuffer
          ? new Uint8Array(value)
          : new Uint8Array(value.buffer, value.byteOffset, value.byteLength),
    };
  }
  throw new TypeError(`D1_TYPE_ERROR: type '${typeof value}' not supported for value '${value}'`);
}

function jsValue(value) {
  switch (value.tag) {
    case "null":
      return null;
    case "integer":
      return Number(value.val);
    case "real":
      return value.val;
    case "text":
      return value.val;
    case "blob":
      return Array.from(value.val);
  }
}

function d1Meta(meta) {
  return {
    duration: meta.durationMs,
    rows_read: Number(meta.rowsRead),
    rows_written: Number(meta.rowsWritten),
    last_row_id: Number(meta.lastRowId),
    changed_db: meta.changedDb,
    changes: Number(meta.changes),
    size_after: 0,
    served_by: "isola",
  };
}

function d1Objects(rows) {
  return rows.rows.map((row) => {
    const object = {};
    rows.columns.forEach((column, i) => {
      object[column] = jsValue(row[i]);
    });
    return object;
  });
}

function d1Result(rows) {
  return { success: true, meta: d1Meta(rows.meta), results: d1Objects(rows) };
}

class D1PreparedStatement {
  #db;
  constructor(db, sql, params = []) {
    this.#db = db;
    this.sql = sql;
    this.params = params;
  }
  bind(...values) {
    return new D1PreparedStatement(this.#db, this.sql, values.map(sqlValue));
  }
  statement() {
    return { sql: this.sql, params: this.params };
  }
  #query() {
    return call(() => this.#db.handle().query(this.statement()));
  }
  async first(column) {
    const rows = this.#query();
    const [first] = d1Objects(rows);
    if (first === undefined) return null;
    if (column === undefined) return first;
    if (!(column in first)) throw new Error(`D1_COLUMN_NOTFOUND: Column not found (${column})`);
    return first[column];
  }
  async all() {
    return d1Result(this.#query());
  }
  async run() {
    return d1Result(this.#query());
  }
  async raw(options = {}) {
    const rows = this.#query();
    const values = rows.rows.map((row) => row.map(jsValue));
    return options.columnNames ? [rows.columns, ...values] : values;
  }
}

export class D1Database {
  #binding;
  #handle;
  constructor(binding) {
    this.#binding = binding;
  }
  handle() {
    this.#handle ??= call(() => Database.open(this.#binding));
    return this.#handle;
  }
  prepare(sql) {
    return new D1PreparedStatement(this, sql);
  }
  async batch(statements) {
    for (const s of statements) {
      if (!(s instanceof D1PreparedStatement)) {
        throw new TypeError("D1 batch: every item must be a statement from prepare()");
      }
    }
    const results = call(() => this.handle().batch(statements.map((s) => s.statement())));
    return results.map(d1Result);
  }
  async exec(sql) {
    const result = call(() => this.handle().exec(sql));
    return { count: result.count, duration: result.durationMs };
  }
}
