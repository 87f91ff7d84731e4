// Values as bytes, as structured clone carries them: what a Durable
// Object's storage keeps and what an RPC call to one sends and answers.
//
// The bytes are JSON text (readable in the object's database). A string,
// a boolean, null or a finite number other than -0 is itself; anything else
// is an array whose first element names its type:
//
//   ["u"] undefined            ["n", "NaN" | "Infinity" | "-Infinity" | "-0"]
//   ["I", "123"] BigInt        ["D", ms] Date          ["R", source, flags] RegExp
//   ["B", base64] ArrayBuffer  ["V", type, base64] typed array or DataView
//   ["A", [items]] Array       ["O", [[key, value]...]] plain object
//   ["M", [[key, value]...]] Map                       ["S", [items]] Set
//   ["E", name, message, stack?] Error                 ["r", n] the n-th
//   object already seen (shared references and cycles, as structured clone
//   keeps them)
//
// Functions, symbols and other values structured clone refuses throw a
// DataCloneError, as in Workers.

import { decoder, encoder } from "./bytes.js";

const VIEWS = {
  Int8Array,
  Uint8Array,
  Uint8ClampedArray,
  Int16Array,
  Uint16Array,
  Int32Array,
  Uint32Array,
  Float32Array,
  Float64Array,
  BigInt64Array,
  BigUint64Array,
  DataView,
};
const ERRORS = new Set([
  "Error",
  "EvalError",
  "RangeError",
  "ReferenceError",
  "SyntaxError",
  "TypeError",
  "URIError",
]);

/** Structured clone's error for a value it cannot carry. */
export function dataCloneError(message) {
  if (typeof DOMException === "function") {
    try {
      return new DOMException(message, "DataCloneError");
    } catch {
      // An engine whose DOMException takes no name: a plain Error below.
    }
  }
  const error = new Error(message);
  error.name = "DataCloneError";
  return error;
}

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function unbase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function viewBytes(view) {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** The tree of `value` (see the top of this file). */
function toTree(value, seen) {
  switch (typeof value) {
    case "string":
    case "boolean":
      return value;
    case "undefined":
      return ["u"];
    case "number":
      if (Number.isNaN(value)) return ["n", "NaN"];
      if (value === Infinity) return ["n", "Infinity"];
      if (value === -Infinity) return ["n", "-Infinity"];
      if (Object.is(value, -0)) return ["n", "-0"];
      return value;
    case "bigint":
      return ["I", value.toString()];
    case "symbol":
      throw dataCloneError(`${String(value)} could not be cloned.`);
    case "function":
      throw dataCloneError(`${describeFunction(value)} could not be cloned.`);
  }
  if (value === null) return null;
  // Boxed primitives come back as their primitive (structured clone keeps
  // the box).
  if (value instanceof String || value instanceof Number || value instanceof Boolean) {
    return toTree(value.valueOf(), seen);
  }
  const known = seen.get(value);
  if (known !== undefined) return ["r", known];
  seen.set(value, seen.size);
  if (Array.isArray(value)) {
    const items = [];
    for (let i = 0; i < value.length; i++) items.push(toTree(value[i], seen));
    return ["A", items];
  }
  if (value instanceof Date) return ["D", value.getTime()];
  if (value instanceof RegExp) return ["R", value.source, value.flags];
  if (value instanceof ArrayBuffer) return ["B", base64(new Uint8Array(value))];
  if (ArrayBuffer.isView(value)) {
    const type = Object.keys(VIEWS).find((name) => value instanceof VIEWS[name]);
    if (type === undefined) throw dataCloneError("this ArrayBuffer view could not be cloned.");
    return ["V", type, base64(viewBytes(value))];
  }
  if (value instanceof Map) {
    const entries = [];
    for (const [k, v] of value) entries.push([toTree(k, seen), toTree(v, seen)]);
    return ["M", entries];
  }
  if (value instanceof Set) {
    const items = [];
    for (const item of value) items.push(toTree(item, seen));
    return ["S", items];
  }
  if (value instanceof Error) {
    const name = ERRORS.has(value.name) ? value.name : "Error";
    const tree = ["E", name, String(value.message)];
    if (typeof value.stack === "string") tree.push(value.stack);
    return tree;
  }
  if (
    value instanceof Promise ||
    value instanceof WeakMap ||
    value instanceof WeakSet ||
    (typeof Request === "function" && value instanceof Request) ||
    (typeof Response === "function" && value instanceof Response) ||
    (typeof ReadableStream === "function" && value instanceof ReadableStream)
  ) {
    throw dataCloneError(`${value.constructor?.name ?? "this object"} could not be cloned.`);
  }
  // Any other object: its own enumerable string-keyed properties, as
  // structured clone copies a class's instance (without its prototype).
  const entries = [];
  for (const key of Object.keys(value)) entries.push([key, toTree(value[key], seen)]);
  return ["O", entries];
}

function describeFunction(f) {
  const text = Function.prototype.toString.call(f).replace(/\s+/g, " ");
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** The value of a tree made by `toTree`. */
function fromTree(tree, seen) {
  if (tree === null || typeof tree !== "object") return tree;
  if (!Array.isArray(tree)) throw new TypeError("not a stored value (an untagged object)");
  const [tag] = tree;
  const keep = (value) => {
    seen.push(value);
    return value;
  };
  switch (tag) {
    case "u":
      return undefined;
    case "n":
      return Number(tree[1]);
    case "I":
      return BigInt(tree[1]);
    case "r": {
      if (!(tree[1] < seen.length)) throw new TypeError("not a stored value (a dangling reference)");
      return seen[tree[1]];
    }
    case "D":
      return keep(new Date(tree[1]));
    case "R":
      return keep(new RegExp(tree[1], tree[2]));
    case "B":
      return keep(unbase64(tree[1]).buffer);
    case "V": {
      const View = VIEWS[tree[1]];
      if (View === undefined) throw new TypeError(`not a stored value (view type ${tree[1]})`);
      const buffer = unbase64(tree[2]).buffer;
      if (View === DataView) return keep(new DataView(buffer));
      return keep(new View(buffer, 0, buffer.byteLength / View.BYTES_PER_ELEMENT));
    }
    case "A": {
      const array = keep([]);
      for (const item of tree[1]) array.push(fromTree(item, seen));
      return array;
    }
    case "O": {
      const object = keep({});
      for (const [key, value] of tree[1]) {
        // `__proto__` as an own property, as structured clone makes it.
        Object.defineProperty(object, key, {
          value: fromTree(value, seen),
          writable: true,
          enumerable: true,
          configurable: true,
        });
      }
      return object;
    }
    case "M": {
      const map = keep(new Map());
      for (const [key, value] of tree[1]) {
        const k = fromTree(key, seen);
        map.set(k, fromTree(value, seen));
      }
      return map;
    }
    case "S": {
      const set = keep(new Set());
      for (const item of tree[1]) set.add(fromTree(item, seen));
      return set;
    }
    case "E": {
      const Type = ERRORS.has(tree[1]) ? globalThis[tree[1]] : Error;
      const error = keep(new Type(tree[2]));
      if (tree[3] !== undefined) error.stack = tree[3];
      return error;
    }
    default:
      throw new TypeError(`not a stored value (tag ${JSON.stringify(tag)})`);
  }
}

/** `value` as bytes; throws a DataCloneError for what structured clone
 * refuses. */
export function serialize(value) {
  return encoder.encode(JSON.stringify(toTree(value, new Map())));
}

/** The value `serialize` made `bytes` of. */
export function deserialize(bytes) {
  return fromTree(JSON.parse(decoder.decode(bytes)), []);
}
