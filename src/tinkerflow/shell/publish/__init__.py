"""Publish an export to the Hugging Face hub with a model card made from its run. (Shell.)

``publish(folder, repo, ...)`` (and ``tinkerflow publish DIR --repo NAME``, :mod:`.command`) writes ``README.md``
into an export folder of ``tinkerflow export``: the hub's YAML front matter (``base_model``, ``library_name``,
``license`` of the base, ``tags``, ``datasets``) and a body with the recipe, the base model and its license, the
data files with their sha256 and row counts, the run's config, its final and best metrics, a PNG chart of the
training curves, how to load the model and the export's provenance; then it uploads the folder with
``huggingface_hub`` (``create_repo`` + ``upload_folder``).

* :mod:`.card`: the card's records and its rendering (pure functions of records already read);
* :mod:`.inputs`: reading the export, finding and reading its run, hashing the data files;
* :mod:`.license`: the base model's license, read where it is written down;
* :mod:`.chart`: the PNG chart;
* :mod:`.publish`: the steps, the token check, the upload and its typed errors.

See ``docs/publish.md``. ``tinkerflow publish --help`` loads neither torch nor ``huggingface_hub`` (both are imported
when a card is written or uploaded).
"""

from __future__ import annotations

# Imported here, after the submodule of the same name: the package's ``publish`` is the function (importing the
# submodule first bound the name to the module; this import rebinds it). The module itself is
# ``sys.modules["tinkerflow.shell.publish.publish"]``. It loads neither torch nor huggingface_hub.
from tinkerflow.shell.publish.publish import HubApi, PublishResult, publish

__all__ = ["HubApi", "PublishResult", "publish"]
