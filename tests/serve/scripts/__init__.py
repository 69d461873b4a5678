"""Processes for the serve tests that kill things: a ``tinkerflow serve`` subprocess (:mod:`.support`) and a client
process that runs tinkerflow's own loops against a server (:mod:`.loop_client`)."""
