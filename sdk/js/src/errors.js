// Errors: the text of a thrown value, `console.*` printing an Error's
// stack, and a binding call's `error` variant as a JavaScript Error.

/** The text of a thrown value, with its stack when it has one. */
export function errorText(e) {
  if (e instanceof Error) {
    const stack = e.stack ? `\n${e.stack.trimEnd()}` : "";
    return `${e.name}: ${e.message}${stack}`;
  }
  try {
    return typeof e === "string" ? e : JSON.stringify(e);
  } catch {
    return String(e);
  }
}

// StarlingMonkey prints an Error given to `console.*` as `(new Error("msg",
// "worker.js", 12))`, without its stack; Workers prints the stack, whose
// positions the host then maps to the worker's own files.
export function installConsole() {
  for (const level of ["log", "info", "warn", "error", "debug", "trace"]) {
    const print = console[level];
    if (typeof print !== "function") continue;
    // Indexed loops, not `some`/`map`: see `requestFields` in http.js.
    console[level] = function (...args) {
      for (let i = 0; i < args.length; i++) {
        if (args[i] instanceof Error) args[i] = errorText(args[i]);
      }
      return print.apply(console, args);
    };
  }
}

/** A binding call's `error` variant as a JavaScript Error. */
function bindingError(e) {
  const payload = e && e.payload;
  if (payload && typeof payload.tag === "string") {
    const error = new Error(String(payload.val));
    error.name =
      payload.tag === "invalid"
        ? "TypeError"
        : payload.tag === "subrequest-limit"
          ? "TooManySubrequests"
          : "BackendError";
    return error;
  }
  return e;
}

/** Run a binding call, turning its `error` into an Error. */
export function call(f) {
  try {
    return f();
  } catch (e) {
    throw bindingError(e);
  }
}
