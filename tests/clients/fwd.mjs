// Byte pipes between a loopback TCP port and a unix socket, so that a client
// in a loopback-only network namespace (`unshare -n`) reaches the farm and
// nothing else: a socket file crosses network namespaces, packets do not.
//
//   node fwd.mjs unix-to-tcp SOCK HOST:PORT
//       outside: listens on the unix socket SOCK and connects each
//       connection to HOST:PORT; prints "LISTENING SOCK" once it listens.
//   node fwd.mjs tcp-to-unix HOST:PORT SOCK [-- PROGRAM ARGS...]
//       inside: listens on HOST:PORT and connects each connection to SOCK.
//       With a program: runs it once listening (stdio inherited) and exits
//       with its status; without: prints "LISTENING HOST:PORT" and serves.
//
// Used by tests/e2e/support/netns.rs.

import net from "node:net";
import { spawn } from "node:child_process";
import { constants } from "node:os";

function usage(why) {
  console.error(`fwd.mjs: ${why}
usage: fwd.mjs unix-to-tcp SOCK HOST:PORT
       fwd.mjs tcp-to-unix HOST:PORT SOCK [-- PROGRAM ARGS...]`);
  process.exit(2);
}

function hostPort(arg) {
  const at = arg.lastIndexOf(":");
  const port = Number(arg.slice(at + 1));
  if (at < 1 || !Number.isInteger(port) || port < 1 || port > 65535) {
    usage(`not HOST:PORT: ${arg}`);
  }
  return { host: arg.slice(0, at), port };
}

// Each accepted connection is piped both ways to a new one made by `dial`;
// an end in one direction is passed on (half-close), an error closes both.
function forward(dial) {
  return net.createServer({ allowHalfOpen: true }, (client) => {
    const upstream = dial();
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", close);
    upstream.on("error", close);
    client.pipe(upstream);
    upstream.pipe(client);
  });
}

const [mode, from, to, dashes, program, ...args] = process.argv.slice(2);
if (!from || !to) usage("missing arguments");
if (dashes !== undefined && (dashes !== "--" || !program)) {
  usage("after the addresses: -- PROGRAM ARGS...");
}

let server;
let listen;
if (mode === "unix-to-tcp") {
  const target = hostPort(to);
  server = forward(() => net.connect({ ...target, allowHalfOpen: true }));
  listen = [from];
} else if (mode === "tcp-to-unix") {
  const { host, port } = hostPort(from);
  server = forward(() => net.connect({ path: to, allowHalfOpen: true }));
  listen = [port, host];
} else {
  usage(`unknown mode ${mode}`);
}

server.on("error", (e) => {
  console.error(`fwd.mjs ${mode}: ${e.message}`);
  process.exit(1);
});
server.listen(...listen, () => {
  if (!program) {
    console.log(`LISTENING ${from}`);
    return;
  }
  const child = spawn(program, args, { stdio: "inherit" });
  child.on("error", (e) => {
    console.error(`fwd.mjs: cannot run ${program}: ${e.message}`);
    process.exit(127);
  });
  child.on("exit", (code, signal) => {
    process.exit(code ?? 128 + (constants.signals[signal] ?? 0));
  });
  for (const sig of ["SIGTERM", "SIGINT"]) {
    process.on(sig, () => child.kill(sig));
  }
});

