"""The terminal host: a process of its own that owns the terminals, so a server restart loses
none of them (`process`), the private link it speaks (`link`), where it keeps its files
(`places`), what it writes down to recreate terminals (`specs`), and the server's side:
finding or starting it (`attach`) and forwarding `terminal/*` to it (`proxy`)."""

STOP_HOST = "terminal/stopHost"
"""The one method a server with the terminal host serves beyond `terminal.params.METHODS`:
it stops the host (`HostProxy`), so it has no meaning, and is not served, without one."""
