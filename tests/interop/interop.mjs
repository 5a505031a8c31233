// Drives a lapce-bridge server with vscode-jsonrpc, the LSP framing client editors use.
// Usage: node interop.mjs '<json config>'
//   config: { socket, file, slow: {method, params}, terminal: bool }
// Prints one JSON object: each step's result, or {error: {code, message}} for that step.
import net from "node:net";
import { once } from "node:events";
import {
  CancellationTokenSource,
  createMessageConnection,
  StreamMessageReader,
  StreamMessageWriter,
} from "vscode-jsonrpc/node";

const config = JSON.parse(process.argv[2]);
const socket = net.createConnection(config.socket);
await once(socket, "connect");
const connection = createMessageConnection(
  new StreamMessageReader(socket),
  new StreamMessageWriter(socket),
);
const streamed = [];
connection.onNotification("terminal/data", (params) => streamed.push(params));
connection.listen();

const out = {};
async function step(name, fn) {
  try {
    out[name] = await fn();
  } catch (err) {
    out[name] = { error: { code: err.code ?? null, message: String(err.message ?? err) } };
  }
}

await step("initialize", () =>
  connection.sendRequest("initialize", {
    protocolVersion: 1,
    clientInfo: { name: "vscode-jsonrpc", version: "10.0.0" },
  }),
);
await step("ping", () => connection.sendRequest("ping"));
await step("fsRead", () => connection.sendRequest("fs/read", { path: config.file }));
await step("unknown", () => connection.sendRequest("no/such/method", {}));
await step("cancelled", async () => {
  const params = { ...config.slow.params };
  if (config.slow.method === "terminal/execute") {
    // A terminal of its own, so the command left running there does not hold the default one.
    params.terminalId = (await connection.sendRequest("terminal/create", {})).terminalId;
  }
  const source = new CancellationTokenSource();
  const pending = connection.sendRequest(config.slow.method, params, source.token);
  setTimeout(() => source.cancel(), 300);
  return pending;
});
if (config.terminal) {
  await step("execute", () =>
    connection.sendRequest("terminal/execute", { command: "echo interop-$((40 + 2))" }),
  );
  await step("streamed", async () => {
    const result = await connection.sendRequest("terminal/execute", {
      command: "for i in $(seq 1 2000); do echo line-$i; done",
      stream: true,
    });
    const ids = new Set(streamed.map((p) => p.executionId));
    return {
      exitCode: result.exitCode,
      outputBytes: result.outputBytes,
      notifications: streamed.length,
      streamedText: streamed.map((p) => p.data).join(""),
      sameExecution: ids.size === 1 && ids.has(result.executionId),
    };
  });
}
await step("pingAfter", () => connection.sendRequest("ping"));

connection.dispose();
socket.end();
process.stdout.write(JSON.stringify(out) + "\n");
