"""The MCP front end: `lapce-bridge mcp` over the same services as `serve` (see `mcp.server`)."""
