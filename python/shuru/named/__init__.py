"""Named sandboxes that outlive or are shared beyond one process: the supervisor process that
owns one (`supervisor`), the client side that spawns and talks to it (`remote`), and the
per-user registry of names and slots (`registry`)."""
