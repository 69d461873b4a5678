"""The ``inspect_ai`` entry point of tinkerflow: Inspect imports this module to find the ``tinkerflow`` model
provider (``--model tinkerflow/<sampler>``) and the bundled tasks (``tinkerflow/arithmetic``). (Shell.)

It loads no model: torch and the backends are imported when a ``tinkerflow/...`` model is first constructed.
"""

from tinkerflow.shell.evals.inspect_eval import TinkerflowModelAPI
from tinkerflow.shell.evals.inspect_tasks import arithmetic

__all__ = ["TinkerflowModelAPI", "arithmetic"]
