// Durable Objects from JavaScript: what tests/e2e/durable.rs checks. The
// worker's own fetch routes to three classes:
//   Counter  extends DurableObject (cloudflare:workers): storage, SQL, RPC,
//            alarms, module state;
//   Plain    an old-style class (`constructor(state, env)`) stored without
//            SQL (`new_classes`), loading its state in blockConcurrencyWhile;
//   Silent   RPC only: no fetch() and no alarm().
import { DurableObject } from "cloudflare:workers";

// Module state: the host keeps one live instance per object, so this
// counts the instances made of it (1 until it is evicted or reset).
let constructed = 0;

export class Counter extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    constructed += 1;
    this.hits = 0;
  }

  async increment(by = 1) {
    const count = ((await this.ctx.storage.get("count")) ?? 0) + by;
    await this.ctx.storage.put("count", count);
    this.hits += 1;
    return count;
  }

  async fetch(request) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/increment": {
        const by = Number(url.searchParams.get("by") ?? 1);
        return new Response(String(await this.increment(by)));
      }
      case "/get":
        return Response.json({
          count: (await this.ctx.storage.get("count")) ?? 0,
          hits: this.hits,
          constructed,
          id: this.ctx.id.toString(),
          name: this.ctx.id.name ?? null,
        });
      case "/echo":
        // What a stub's fetch delivers: method, path, headers, body.
        return Response.json({
          method: request.method,
          url: request.url,
          body: await request.text(),
          headers: Object.fromEntries(request.headers),
        });
      case "/throw":
        throw new RangeError("the object's fetch threw");
      case "/redirect":
        return Response.redirect("https://example.com/elsewhere", 302);
      default:
        return new Response("no such path in the object\n", { status: 404 });
    }
  }

  // RPC: arguments and results that structured clone carries.
  async describe(map, set, date, big) {
    return {
      mapEntries: [...map.entries()],
      mapIsMap: map instanceof Map,
      setSize: set.size,
      dateIso: date.toISOString(),
      big: big * 2n,
      echoed: new Map([...map].map(([k, v]) => [k, { doubled: v * 2 }])),
    };
  }

  async fail(message) {
    const error = new TypeError(message);
    throw error;
  }

  async failCustom() {
    class QuotaError extends Error {
      constructor(message) {
        super(message);
        this.name = "QuotaError";
      }
    }
    throw new QuotaError("over quota");
  }

  async roundTrip(value) {
    await this.ctx.storage.put("value", value);
    return [value, await this.ctx.storage.get("value")];
  }

  async storageChecks() {
    const s = this.ctx.storage;
    const report = {};
    await s.deleteAll();
    await s.put({ "a/1": 1, "a/2": 2, "a/3": 3, "b/1": "b1", "c": { nested: [1, 2] } });
    const keys = async (options) => [...(await s.list(options)).keys()];
    report.all = await keys();
    report.prefix = await keys({ prefix: "a/" });
    report.reverse = await keys({ prefix: "a/", reverse: true });
    report.limit = await keys({ limit: 2 });
    report.startEnd = await keys({ start: "a/2", end: "b/1" });
    report.startAfter = await keys({ startAfter: "a/2" });
    report.reverseLimit = await keys({ reverse: true, limit: 2 });
    report.getMany = Object.fromEntries(await s.get(["c", "a/1", "missing"]));
    report.getMissing = (await s.get("missing")) === undefined;
    report.deleteOne = await s.delete("a/1");
    report.deleteAgain = await s.delete("a/1");
    report.deleteMany = await s.delete(["a/2", "a/3", "nope"]);
    report.afterDelete = await keys();
    try {
      await s.list({ start: "a", startAfter: "b" });
      report.bothStarts = "no error";
    } catch (e) {
      report.bothStarts = `${e.name}: ${e.message}`;
    }
    try {
      await s.put("u", undefined);
      report.putUndefined = "no error";
    } catch (e) {
      report.putUndefined = `${e.name}: ${e.message}`;
    }

    // A transaction that throws leaves nothing behind and re-throws.
    await s.put("balance", 100);
    try {
      await s.transaction(async (txn) => {
        await txn.put("balance", 0);
        await txn.put("ghost", true);
        throw new Error("abort the transfer");
      });
    } catch (e) {
      report.thrownOut = e.message;
    }
    report.afterThrow = { balance: await s.get("balance"), ghost: (await s.get("ghost")) ?? null };
    // rollback() undoes it without a throw.
    const returned = await s.transaction(async (txn) => {
      await txn.put("balance", 1);
      txn.rollback();
      return "rolled back";
    });
    report.rollback = { returned, balance: await s.get("balance") };
    // A committed one.
    await s.transaction(async (txn) => {
      const balance = await txn.get("balance");
      await txn.put("balance", balance - 30);
      await txn.put("spent", 30);
    });
    report.committed = await s.get(["balance", "spent"]).then((m) => Object.fromEntries(m));
    // transactionSync with SQL.
    s.sql.exec("CREATE TABLE IF NOT EXISTS t (x INTEGER)");
    try {
      s.transactionSync(() => {
        s.sql.exec("INSERT INTO t VALUES (1)");
        throw new Error("undo the insert");
      });
    } catch (e) {
      report.syncThrown = e.message;
    }
    report.syncRows = s.sql.exec("SELECT count(*) AS n FROM t").one().n;
    await s.sync();
    return report;
  }

  async sqlChecks() {
    const sql = this.ctx.storage.sql;
    sql.exec("DROP TABLE IF EXISTS items");
    sql.exec(
      "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, data BLOB)",
    );
    const insert = sql.exec(
      "INSERT INTO items (name, price, data) VALUES (?, ?, ?), (?, ?, ?)",
      "apple",
      1.5,
      new Uint8Array([1, 2, 3]),
      "pear",
      2,
      null,
    );
    const cursor = sql.exec("SELECT id, name, price, data FROM items ORDER BY id");
    const columnNames = cursor.columnNames;
    const rows = cursor.toArray().map((row) => ({
      ...row,
      data: row.data === null ? null : [...new Uint8Array(row.data)],
    }));
    const raw = [...sql.exec("SELECT name, price FROM items ORDER BY id").raw()];
    const iterated = [];
    for (const row of sql.exec("SELECT name FROM items ORDER BY name DESC")) iterated.push(row.name);
    let oneError;
    try {
      sql.exec("SELECT * FROM items").one();
    } catch (e) {
      oneError = e.message;
    }
    let badSql;
    try {
      sql.exec("SELECT * FROM no_such_table");
    } catch (e) {
      badSql = `${e.name}: ${e.message}`;
    }
    return {
      columnNames,
      rows,
      raw,
      iterated,
      one: sql.exec("SELECT name FROM items WHERE id = ?", 2).one(),
      oneError,
      badSql,
      rowsWritten: insert.rowsWritten,
      rowsRead: sql.exec("SELECT * FROM items").rowsRead,
      databaseSize: sql.databaseSize > 0,
    };
  }

  async scheduleAlarm(inMs, failFirst) {
    await this.ctx.storage.delete(["alarmLog", "failFirst"]);
    if (failFirst) await this.ctx.storage.put("failFirst", true);
    await this.ctx.storage.setAlarm(Date.now() + inMs);
    return await this.ctx.storage.getAlarm();
  }

  async alarmStatus() {
    return {
      log: (await this.ctx.storage.get("alarmLog")) ?? [],
      alarm: await this.ctx.storage.getAlarm(),
    };
  }

  async alarm(info) {
    const log = (await this.ctx.storage.get("alarmLog")) ?? [];
    log.push({ retryCount: info.retryCount, isRetry: info.isRetry, sawAlarm: await this.ctx.storage.getAlarm() });
    await this.ctx.storage.put("alarmLog", log);
    if (info.retryCount === 0 && (await this.ctx.storage.get("failFirst"))) {
      throw new Error("the alarm's first try fails");
    }
  }
}

export class Plain {
  constructor(state, env) {
    this.state = state;
    this.env = env;
    this.loaded = null;
    state.blockConcurrencyWhile(async () => {
      this.loaded = (await state.storage.get("visits")) ?? 0;
    });
  }

  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/sql") {
      try {
        this.state.storage.sql.exec("SELECT 1");
        return new Response("sql worked\n");
      } catch (e) {
        return new Response(`${e.name}: ${e.message}`, { status: 400 });
      }
    }
    if (url.pathname === "/alarm") {
      try {
        await this.state.storage.setAlarm(Date.now() + 60_000);
        return new Response("alarm set\n");
      } catch (e) {
        return new Response(`${e.name}: ${e.message}`, { status: 400 });
      }
    }
    this.loaded += 1;
    await this.state.storage.put("visits", this.loaded);
    return Response.json({
      visits: this.loaded,
      id: this.state.id.toString(),
      name: this.state.id.name ?? null,
      greeting: this.env.GREETING ?? null,
    });
  }
}

export class Silent extends DurableObject {
  async ping(x) {
    return `pong ${x}`;
  }
}

const json = (value, status = 200) => Response.json(value, { status });

function errorOf(e) {
  return { name: e?.name, message: e?.message, remote: e?.remote ?? null };
}

async function ids(env) {
  const a = env.COUNTER.idFromName("alice");
  const again = env.COUNTER.idFromName("alice");
  const unique = env.COUNTER.newUniqueId();
  const parsed = env.COUNTER.idFromString(unique.toString().toUpperCase());
  return {
    hex: a.toString(),
    name: a.name,
    sameName: a.equals(again),
    otherName: a.equals(env.COUNTER.idFromName("bob")),
    otherNamespace: a.toString() === env.PLAIN.idFromName("alice").toString(),
    unique: unique.toString(),
    uniqueName: unique.name ?? null,
    uniqueAgain: unique.equals(env.COUNTER.newUniqueId()),
    parsed: parsed.toString(),
    parsedEquals: parsed.equals(unique),
    stubId: env.COUNTER.get(a).id.toString(),
    stubName: env.COUNTER.getByName("alice").name,
  };
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const [, route, name, action] = url.pathname.split("/");
    switch (route) {
      case "counter": {
        const stub = env.COUNTER.getByName(decodeURIComponent(name));
        switch (action ?? "") {
          case "":
            return stub.fetch("http://counter/get");
          case "increment":
            return stub.fetch(`http://counter/increment${url.search}`);
          case "rpc-increment":
            return new Response(String(await stub.increment(Number(url.searchParams.get("by") ?? 1))));
          case "echo":
            return stub.fetch(
              new Request("https://example.com/echo?q=1", {
                method: "POST",
                headers: { "x-note": "from the caller", "isola-object-rpc": "increment" },
                body: "the body",
              }),
            );
          case "throw":
            try {
              await stub.fetch("http://counter/throw");
              return json({ thrown: false });
            } catch (e) {
              return json({ thrown: errorOf(e), isRangeError: e instanceof RangeError });
            }
          case "redirect": {
            // The object's redirect comes back as it is, not followed.
            const response = await stub.fetch("http://counter/redirect");
            return json({ status: response.status, location: response.headers.get("location") });
          }
          case "storage":
            return json(await stub.storageChecks());
          case "sql":
            return json(await stub.sqlChecks());
          case "alarm": {
            const inMs = Number(url.searchParams.get("in") ?? 0);
            const at = await stub.scheduleAlarm(inMs, url.searchParams.has("fail"));
            return json({ at });
          }
          case "alarm-status":
            return json(await stub.alarmStatus());
        }
        break;
      }
      case "rpc": {
        const stub = env.COUNTER.getByName(decodeURIComponent(name));
        const report = {};
        const described = await stub.describe(
          new Map([["a", 1], ["b", 2]]),
          new Set([1, 2, 3]),
          new Date(Date.UTC(2026, 0, 2, 3, 4, 5)),
          21n,
        );
        report.described = {
          ...described,
          big: String(described.big),
          echoed: [...described.echoed],
          echoedIsMap: described.echoed instanceof Map,
        };
        try {
          await stub.fail("bad input");
          report.fail = "no error";
        } catch (e) {
          report.fail = errorOf(e);
          report.failIsTypeError = e instanceof TypeError;
        }
        try {
          await stub.failCustom();
        } catch (e) {
          report.failCustom = errorOf(e);
        }
        try {
          await stub.noSuchMethod();
        } catch (e) {
          report.missing = errorOf(e);
        }
        try {
          await stub.increment(() => 1);
        } catch (e) {
          report.functionArgument = errorOf(e);
        }
        report.awaitedStubIsStub = (await stub) === stub;
        return json(report);
      }
      case "clone": {
        const stub = env.COUNTER.getByName(decodeURIComponent(name));
        const cyclic = { label: "loop" };
        cyclic.self = cyclic;
        const shared = [1, 2];
        const value = {
          nums: [NaN, Infinity, -Infinity, -0, 0, 1.5],
          undef: undefined,
          nil: null,
          big: 12345678901234567890n,
          date: new Date(0),
          re: /a+b/gi,
          bytes: new Uint8Array([1, 2, 255]),
          floats: new Float64Array([0.5, -2]),
          buffer: new Uint8Array([9, 8]).buffer,
          view: new DataView(new Uint8Array([7, 6, 5]).buffer),
          map: new Map([[{ k: 1 }, "object key"], ["s", new Set(["x"])]]),
          nested: { deep: { deeper: ["ok", true, false] } },
          cyclic,
          sharedA: shared,
          sharedB: shared,
          error: new RangeError("kept"),
        };
        const [echoed, stored] = await stub.roundTrip(value);
        const describe = (v) => ({
          nums: v.nums.map((n) => (Object.is(n, -0) ? "-0" : String(n))),
          hasUndef: "undef" in v && v.undef === undefined,
          nil: v.nil,
          big: typeof v.big === "bigint" ? String(v.big) : "not a bigint",
          date: v.date instanceof Date ? v.date.getTime() : "not a date",
          re: v.re instanceof RegExp ? `${v.re.source}/${v.re.flags}` : "not a regexp",
          bytes: v.bytes instanceof Uint8Array ? [...v.bytes] : "not bytes",
          floats: v.floats instanceof Float64Array ? [...v.floats] : "not floats",
          buffer: v.buffer instanceof ArrayBuffer ? [...new Uint8Array(v.buffer)] : "not a buffer",
          view: v.view instanceof DataView ? v.view.getUint8(2) : "not a view",
          mapKey: v.map instanceof Map ? [...v.map.keys()][0].k : "not a map",
          mapSet: v.map instanceof Map && v.map.get("s") instanceof Set ? [...v.map.get("s")] : "no set",
          nested: v.nested.deep.deeper,
          cycle: v.cyclic.self === v.cyclic,
          shared: v.sharedA === v.sharedB,
          error: v.error instanceof RangeError ? v.error.message : "not a RangeError",
        });
        let cloneError;
        try {
          await stub.roundTrip({ f() {} });
        } catch (e) {
          cloneError = errorOf(e);
        }
        return json({ echoed: describe(echoed), stored: describe(stored), cloneError });
      }
      case "ids":
        return json(await ids(env));
      case "id-from-string":
        try {
          const binding = url.searchParams.get("binding") ?? "COUNTER";
          return json({ id: env[binding].idFromString(url.searchParams.get("id")).toString() });
        } catch (e) {
          return json({ error: errorOf(e) }, 400);
        }
      case "foreign-id": {
        // An id PLAIN made, given to COUNTER.
        const foreign = env.PLAIN.newUniqueId().toString();
        try {
          env.COUNTER.idFromString(foreign);
          return json({ accepted: true });
        } catch (e) {
          return json({ error: errorOf(e) }, 400);
        }
      }
      case "raw-bad-id": {
        // A hand-made request with a garbled id: the host refuses it.
        const response = await fetch("http://counter.object.isola.internal/get", {
          headers: { "isola-object-id": "not-an-id" },
        });
        const reason = response.headers.get("x-isola-error");
        return new Response(`${reason}: ${await response.text()}`, { status: response.status });
      }
      case "unique": {
        const stub = env.COUNTER.get(env.COUNTER.idFromString(name));
        return stub.fetch("http://counter/increment");
      }
      case "plain": {
        const stub = env.PLAIN.getByName(decodeURIComponent(name));
        return stub.fetch(`http://plain/${action ?? ""}`);
      }
      case "silent": {
        const stub = env.SILENT.getByName(decodeURIComponent(name));
        const pong = await stub.ping(7);
        let fetchError;
        try {
          await stub.fetch("http://silent/");
        } catch (e) {
          fetchError = errorOf(e);
        }
        return json({ pong, fetchError });
      }
    }
    return new Response("not found\n", { status: 404 });
  },
};
