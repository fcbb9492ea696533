"""paas.agent: the agent of one host.

It dials the scheduler and holds one session (session.py), runs the desired
set of instances it receives (supervisor.py, with ports.py and logbuffer.py),
makes sure no process outlives it (reaper.py) and serves its instances' logs
(servicer.py). `server.run_agent(config)` wires them together.
"""
