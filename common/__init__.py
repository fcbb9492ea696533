"""paas.common: what the CLI, the scheduler and the agent all need and share.

Formation syntax, instance names, Procfile parsing, the log line format and
address lists. Pure code: no I/O beyond reading a file the caller names.
"""
