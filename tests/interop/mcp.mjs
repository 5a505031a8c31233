// Drives `lapce-bridge mcp` over stdio with the official Node MCP client
// (@modelcontextprotocol/sdk): list the tools, run a command, answer an input prompt, edit
// a file (a unique match, an ambiguous one refused), search, read back; run a command as an
// MCP task to its result (its output as progress, its end as a status notification), and
// cancel another.
// Usage: node mcp.mjs PYTHON WORKSPACE. Prints one JSON line per check; exits 1 on failure.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { TaskStatusNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

const [python, workspace] = process.argv.slice(2);
const expected = [
  "edit_file", "file_info", "interrupt", "list_directory", "list_terminals", "read_file",
  "read_output", "run_command", "search_files", "send_input", "wait_command", "write_file",
];

function check(name, ok, detail) {
  console.log(JSON.stringify({ check: name, ok: Boolean(ok), detail }));
  if (!ok) {
    process.exitCode = 1;
  }
}

const transport = new StdioClientTransport({
  command: python,
  args: ["-m", "lapce_bridge", "mcp", "--workspace", workspace, "--shell", "bash"],
  env: process.env,
  stderr: "inherit",
});
const client = new Client({ name: "lapce-bridge-interop", version: "1.0.0" });
await client.connect(transport);

try {
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name).sort();
  check("tool names", JSON.stringify(names) === JSON.stringify(expected), names);
  check(
    "schemas",
    tools.every(
      (t) => t.inputSchema?.type === "object" && t.outputSchema?.type === "object" &&
        t.annotations && typeof t.annotations.readOnlyHint === "boolean" && t.description,
    ),
    tools.map((t) => [t.name, t.annotations]),
  );

  // The client validates every structuredContent against the tool's outputSchema.
  const ran = await client.callTool({ name: "run_command", arguments: { command: "echo test" } });
  const r = ran.structuredContent;
  check("run_command", !ran.isError && r.exit_code === 0 && r.output.trim() === "test" &&
    r.cwd === workspace, r);

  const asked = (await client.callTool({
    name: "run_command",
    arguments: { command: "read -p 'name? ' who && echo \"hello $who\"", idle_timeout_ms: 700 },
  })).structuredContent;
  check("prompt detected", asked.status === "waiting_for_input", asked);
  await client.callTool({ name: "send_input", arguments: { terminal: asked.terminal_id, text: "node" } });
  const done = (await client.callTool({
    name: "wait_command",
    arguments: { execution_id: asked.execution_id, timeout_ms: 20000 },
  })).structuredContent;
  check("prompt answered", done.exit_code === 0 && done.output.includes("hello node"), done);

  const edited = await client.callTool({
    name: "edit_file",
    arguments: { path: "calc.py", edits: [{ old_text: "return a - b", new_text: "return b - a" }] },
  });
  check("edit unique", !edited.isError && edited.structuredContent.replacements === 1 &&
    edited.structuredContent.diff.includes("+    return b - a"), edited.structuredContent);

  const ambiguous = await client.callTool({
    name: "edit_file",
    arguments: { path: "calc.py", edits: [{ old_text: "(a, b):", new_text: "()" }] },
  });
  const err = ambiguous.structuredContent?.error;
  check("edit ambiguous refused", ambiguous.isError === true && err?.code === -32602 &&
    err.message.includes("matched 2 times") && ambiguous.content[0].text.startsWith("EditMismatch"),
    ambiguous);

  const searched = await client.callTool({ name: "search_files", arguments: { query: "b - a" } });
  const found = searched.structuredContent;
  // The text block is grep's form, then the counts.
  check("search", found.matches.length === 1 && found.matches[0].path === "calc.py" &&
    found.matches[0].line === 6 && searched.content.length === 1 &&
    searched.content[0].text ===
      "calc.py:6:    return b - a\n-- 1 match, 1 file searched, 0 skipped; complete", searched);

  const read = (await client.callTool({
    name: "read_file",
    arguments: { path: "calc.py", start_line: 6, end_line: 6 },
  })).structuredContent;
  check("read back", read.content === "    return b - a\n", read);

  // MCP tasks (2025-11-25): run_command as a task, polled to its end, its result fetched.
  check("tasks capability", client.getServerCapabilities()?.tasks?.requests?.tools?.call !== undefined &&
    tools.find((t) => t.name === "run_command")?.execution?.taskSupport === "optional",
    client.getServerCapabilities()?.tasks);
  const seen = [];
  const progress = [];
  const statuses = [];
  client.setNotificationHandler(TaskStatusNotificationSchema, (note) => {
    statuses.push(note.params);
  });
  let taskResult;
  let firstId;
  for await (const message of client.experimental.tasks.callToolStream(
    {
      name: "run_command",
      arguments: { command: "for i in 1 2 3; do echo tick $i; sleep 0.4; done; echo as a task" },
    },
    undefined,
    { task: { ttl: 60000 }, onprogress: (p) => progress.push(p.message ?? "") },
  )) {
    seen.push(message.type === "error" ? `error ${message.error}` : message.type);
    if (message.type === "taskCreated") {
      firstId = message.task.taskId;
    }
    if (message.type === "result") {
      taskResult = message.result;
    }
  }
  check("task runs to its result", seen[0] === "taskCreated" && seen.includes("taskStatus") &&
    seen.at(-1) === "result" && taskResult?.structuredContent?.exit_code === 0 &&
    taskResult.structuredContent.output.endsWith("tick 3\nas a task\n"), { seen, taskResult });
  // The status notification may trail the result by a moment: it is sent as the task ends.
  for (let i = 0; i < 100 && !statuses.some((s) => s.taskId === firstId); i++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  check("task progress and status", progress.some((m) => m.includes("tick 1")) &&
    statuses.some((s) => s.taskId === firstId && s.status === "completed" && s.ttl === 60000),
    { progress, statuses });

  // Cancelling the task interrupts its command: the terminal runs the next one.
  let taskId;
  for await (const message of client.experimental.tasks.callToolStream(
    { name: "run_command", arguments: { command: "touch task-started; sleep 60; echo never" } },
    undefined,
    { task: { ttl: 60000 } },
  )) {
    if (message.type === "taskCreated") {
      taskId = message.task.taskId;
      break;
    }
  }
  // Cancelled once the command runs (its first step leaves a file), not before it starts.
  for (let i = 0; i < 600; i++) {
    const info = await client.callTool({ name: "file_info", arguments: { path: "task-started" } });
    if (!info.isError) {
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const cancelled = await client.experimental.tasks.cancelTask(taskId);
  const status = await client.experimental.tasks.getTask(taskId);
  let after;
  for (let i = 0; i < 100; i++) {
    after = await client.callTool({ name: "run_command", arguments: { command: "echo after" } });
    if (!after.isError) {
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  check("task cancelled", cancelled.status === "cancelled" && status.status === "cancelled" &&
    after?.structuredContent?.output === "after\n" &&
    statuses.some((s) => s.taskId === taskId && s.status === "cancelled"),
    { cancelled, status, after, statuses });
} finally {
  await client.close();
}
