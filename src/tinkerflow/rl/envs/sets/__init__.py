"""Small offline problem sets of the tool-use environments, written for this project (tinkerflow) and shipped
under its license: :mod:`~tinkerflow.rl.envs.sets.word_problems` (60 arithmetic word problems) and
:mod:`~tinkerflow.rl.envs.sets.code_tasks` (30 Python functions with unit tests).

They are Python data, not files read at run time, so the environments stay pure (the core reads no files).
"""
