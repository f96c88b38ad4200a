"""runtime: the plumbing of the relay's long-running processes: logging, systemd notification,
metrics, the listening sockets, reloads, tuning, and operations of the relay's own that keep
failing.
"""
