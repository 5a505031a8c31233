"""Local JSON-RPC over LSP framing: the server, the client, and what they share.

Server side: `framing` (sans-I/O codec), `jsonrpc` (validation and envelopes), `connection`
and `dispatch` (one client's bytes and requests), `idempotency` and `journal` (at most once,
across restarts), `server` (listeners, broadcast, shutdown), `paths` (socket and state
locations), `serve_cmd` (`lapce-bridge serve`). Client side: `client` (`BridgeClient`), which
composes `link` (its connection and plain calls over a `wire`) and `recovery` with `outbox`
(nothing lost, nothing run twice); `spawn` (a supervised server), `raw` (minimal clients for
probes and benchmarks). Submodules are imported directly; this package imports nothing, so
using the codec does not load the server.
"""
