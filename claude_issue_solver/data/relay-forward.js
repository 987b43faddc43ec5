#!/usr/bin/env node
// The credential relay's forwarder, run inside a task's container with the image's own node:
//
//   node relay-forward.js --port 47800 --socket /relay/relay.sock -- claude -p ...
//
// It listens on 127.0.0.1:<port> (the container's ANTHROPIC_BASE_URL), pipes every TCP connection to the
// daemon's Unix socket as raw bytes (HTTP, keep-alive and event streams pass through untouched), and only
// once it listens starts the command with the container's stdin/stdout/stderr. SIGTERM/SIGINT/SIGHUP go
// to the command; the forwarder exits with the command's exit code (128 + signal number when a signal
// ended it). While the socket is missing (the daemon restarting) a connection waits for it, up to three
// minutes, then is answered with a 503 in the Messages API's error shape.
//
// Exit codes of its own: 2 bad arguments, 71 the port cannot be listened on, 126/127 the command cannot
// be run. Plain node (>= 18), no packages.
"use strict";

const net = require("net");
const os = require("os");
const { spawn } = require("child_process");

const USAGE = "usage: node relay-forward.js --port PORT --socket PATH -- COMMAND [ARGS...]";

function fail(code, message) {
  process.stderr.write(`relay-forward: ${message}\n`);
  process.exit(code);
}

function parseArgs(argv) {
  const options = { port: null, socket: null, host: "127.0.0.1", command: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      options.command = argv.slice(i + 1);
      break;
    }
    const value = argv[i + 1];
    if (arg === "--port" && value !== undefined) options.port = value;
    else if (arg === "--socket" && value !== undefined) options.socket = value;
    else if (arg === "--host" && value !== undefined) options.host = value;
    else fail(2, `unexpected argument ${JSON.stringify(arg)}\n${USAGE}`);
    i++;
  }
  const port = Number(options.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) fail(2, `--port needs a port number (1-65535)\n${USAGE}`);
  if (!options.socket) fail(2, `--socket needs the relay's socket path\n${USAGE}`);
  if (options.command.length === 0) fail(2, `no command after --\n${USAGE}`);
  options.port = port;
  return options;
}

function unavailable(client, reason) {
  // Nothing was relayed yet: answer like the API does when it is briefly unavailable.
  const body = JSON.stringify({
    type: "error",
    error: { type: "api_error", message: `the credential relay is not available (${reason}); retry` },
  });
  client.end(
    "HTTP/1.1 503 Service Unavailable\r\n" +
      "Content-Type: application/json\r\n" +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      "x-should-retry: true\r\n" +
      "Connection: close\r\n\r\n" +
      body,
  );
}

// A daemon restart takes the socket away for seconds: a connection waits for it to come back (the CLI
// would otherwise spend its few retries, CLAUDE_CODE_MAX_RETRIES, on the gap and fail the run).
const RECONNECT_EVERY_MS = 250;
const RECONNECT_FOR_MS = Number(process.env.CIS_RELAY_WAIT_MS || 180000);

function relay(client, socketPath) {
  client.setNoDelay(true); // event-stream chunks must not wait for Nagle
  client.pause(); // hold the request's bytes until the socket is there
  const deadline = Date.now() + RECONNECT_FOR_MS;
  let upstream = null;
  let closed = false;
  client.on("error", () => upstream && upstream.destroy());
  client.on("close", () => {
    closed = true;
    if (upstream) upstream.destroy();
  });
  const attempt = () => {
    if (closed) return;
    let connected = false;
    upstream = net.connect(socketPath);
    upstream.once("connect", () => {
      connected = true;
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
    upstream.on("error", (err) => {
      if (connected) client.destroy();
      else if (Date.now() < deadline && (err.code === "ENOENT" || err.code === "ECONNREFUSED")) {
        setTimeout(attempt, RECONNECT_EVERY_MS);
      } else unavailable(client, err.code || String(err));
    });
    upstream.on("close", () => {
      if (connected) client.destroy();
    });
  };
  attempt();
}

function main() {
  const options = parseArgs(process.argv.slice(2));
  const server = net.createServer({ allowHalfOpen: true }, (client) => relay(client, options.socket));
  let child = null;
  let pendingSignal = null;

  for (const name of ["SIGTERM", "SIGINT", "SIGHUP"]) {
    process.on(name, () => {
      if (child !== null && child.exitCode === null) child.kill(name);
      else pendingSignal = pendingSignal || name;
    });
  }

  server.on("error", (err) => {
    if (child === null) {
      const why = err.code === "EADDRINUSE" ? "is in use" : `cannot be listened on (${err.code || err.message})`;
      fail(71, `${options.host}:${options.port} ${why}; the relay needs this port free in the container`);
    }
    process.stderr.write(`relay-forward: ${err.message}\n`);
  });

  server.listen(options.port, options.host, () => {
    if (pendingSignal !== null) process.exit(128 + os.constants.signals[pendingSignal]);
    const [command, ...args] = options.command;
    child = spawn(command, args, { stdio: "inherit" });
    child.on("error", (err) => {
      fail(err.code === "ENOENT" ? 127 : 126, `cannot run ${JSON.stringify(command)}: ${err.message}`);
    });
    child.on("exit", (code, signal) => {
      server.close();
      process.exit(code !== null ? code : 128 + (os.constants.signals[signal] || 0));
    });
  });
}

main();
