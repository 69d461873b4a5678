"""``tinkerflow serve``: Tinker's HTTP API in front of the local backend, so unmodified SDK and cookbook code runs
on this machine. (Shell.) See ``docs/serve.md``.

Rooms: :mod:`.app` (routes), :mod:`.engine` (requests -> local backend calls), :mod:`.samplers` (sampling sessions),
:mod:`.futures` (ids, answers, long polls, the bound on work in flight), :mod:`.store` (SQLite records),
:mod:`.codec` (the protobuf bodies), :mod:`.checks` (request fields -> local arguments), :mod:`.paths`
(``tinker://`` paths), :mod:`.catalog` (served models),
:mod:`.rest` (training runs, checkpoints, archives), :mod:`.server` (uvicorn; a thread for tests).
"""
