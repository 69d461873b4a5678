"""Retention leftovers (issue 15, point 3): the orphans of an interrupted retention or of a kill between a save and
its state are removed on the next start (and only those: never ``final``, ``reference`` or a user's name, never
another run id), the cleanup survives being killed itself, and retention works on the Tinker service through
``TinkerBackend.delete_checkpoint`` / ``list_checkpoints`` (tested against ``tinkerflow serve``).

Kills are simulated where the process would die (an exception, with the deleting half of a deletion skipped), at
every point of a run a hypothesis property chooses, and once for real (``SIGKILL`` in a child process)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers import KilledError, kill_after

pytest.importorskip("torch")
pytest.importorskip("peft")

import httpx
import tinker
import torch

import tinkerflow.shell.io.run as run_module
import tinkerflow.shell.io.run_dir as run_dir_module
from tinkerflow.config import SLConfig
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.shell.backends.local.checkpoint import (
    CheckpointMeta,
    LocalPath,
    read_meta,
    read_weights,
    remove_partial_checkpoints,
    verify_checkpoint,
    write_checkpoint,
)
from tinkerflow.shell.backends.local.checkpoint import delete_checkpoint as delete_local
from tinkerflow.shell.backends.protocol import APIFuture, ModelInfo
from tinkerflow.shell.backends.tinker import TinkerBackend, TinkerServiceError, TinkerTimeoutError
from tinkerflow.shell.io.run import Run
from tinkerflow.shell.io.run_dir import (
    checkpoint_parts,
    loop_owned,
    read_history,
    read_state,
    recorded_run_ids,
    referenced_paths,
)
from tinkerflow.shell.loop import Finish, StepPlan, run_steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT: Final = pathlib.Path(__file__).resolve().parent.parent
STALENESS: Final = 2  # the sampler weights of the last two steps are recorded with each state, as async RL does


# -- a store whose clients train nothing and save small real checkpoints; kills at chosen events ---------------------


class Killer:
    """Counts the events a kill may fall on; raises :class:`KilledError` at event number ``at`` (``None``: never)."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.count, self.killed = at, 0, False

    def tick(self) -> bool:
        """Whether the process dies at this event (then the caller raises, after doing what a kill leaves)."""
        self.count += 1
        if self.at is not None and self.count == self.at + 1:
            self.killed = True
        return self.killed


def _meta() -> CheckpointMeta:
    return CheckpointMeta("tiny", "weights", 2, 32, ("layers.0.q_proj",), True, 1, 0)


class Client:
    """A training client that saves a real two-tensor LoRA checkpoint under its run id (``get_info`` says it)."""

    def __init__(self, root: pathlib.Path, run_id: str, killer: Killer) -> None:
        self.root, self.run_id, self.killer = root, run_id, killer

    def _save(self, kind: str, name: str) -> APIFuture[str]:
        path = LocalPath(self.run_id, kind, name)  # type: ignore[arg-type]  # kind is weights or sampler_weights
        value = float(len(name))
        weights = {"layers.0.q_proj.lora_A.weight": torch.full((2, 4), value)}
        write_checkpoint(path.directory(self.root), _meta(), weights, weights, overwrite=True)
        if self.killer.tick():  # saved, but the caller never learns its path
            raise KilledError
        return APIFuture.completed(str(path))

    def save_state(self, name: str) -> APIFuture[str]:
        return self._save("weights", name)

    def save_weights_for_sampler(self, name: str) -> APIFuture[str]:
        return self._save("sampler_weights", name)

    def get_info(self) -> ModelInfo:
        return ModelInfo(base_model="tiny", model_id=self.run_id, is_lora=True, lora_rank=2)


class Store:
    """The local backend's CheckpointStore side over :class:`Client`: a new run id per fresh client, continued run
    ids on resume, and deletions that a kill can interrupt (after the rename, before the files are removed)."""

    def __init__(self, root: pathlib.Path, killer: Killer) -> None:
        self.checkpoint_dir, self.killer = root, killer

    def remove_partial_checkpoints(self) -> list[pathlib.Path]:
        return remove_partial_checkpoints(self.checkpoint_dir)

    def delete_checkpoint(self, path: str) -> bool:
        if self.killer.tick():
            directory = LocalPath.parse(path).directory(self.checkpoint_dir)
            if directory.is_dir():  # the first half of a deletion: its hidden leftover stays
                os.replace(directory, directory.with_name(f".{directory.name}.deadbeef.tmp"))
            raise KilledError
        return delete_local(self.checkpoint_dir, path)

    def create_lora_training_client(self, base_model: str, **options: object) -> APIFuture[Client]:
        taken = {path.name for path in self.checkpoint_dir.iterdir()} if self.checkpoint_dir.is_dir() else set()
        run_id = next(f"run-{n}" for n in range(1, 100) if f"run-{n}" not in taken)
        return APIFuture.completed(Client(self.checkpoint_dir, run_id, self.killer))

    def create_training_client_from_state(
        self, path: str, *, with_optimizer: bool = False, continue_run: bool = False
    ) -> APIFuture[Client]:
        assert continue_run
        return APIFuture.completed(Client(self.checkpoint_dir, LocalPath.parse(path).run_id, self.killer))


@pytest.fixture
def killable_run_dir(monkeypatch: pytest.MonkeyPatch) -> Callable[[Killer], None]:
    """Makes the run directory's state writes and history removals kill points of a :class:`Killer`."""
    real_write, real_forget = run_dir_module.write_state, run_dir_module.forget_state
    current: list[Killer] = [Killer()]

    def write_state(run_dir: pathlib.Path, state: object) -> None:
        if current[0].tick():
            raise KilledError
        real_write(run_dir, state)  # type: ignore[arg-type]  # a RunState

    def forget_state(run_dir: pathlib.Path, step: int) -> None:
        real_forget(run_dir, step)
        if current[0].tick():
            raise KilledError

    monkeypatch.setattr(run_module, "write_state", write_state)
    monkeypatch.setattr(run_module, "forget_state", forget_state)
    return lambda killer: current.__setitem__(0, killer)


def _config(keep_last: int, keep_every: int | None, save_every: int) -> SLConfig:
    return SLConfig(train_data="a.jsonl", save_every=save_every, keep_last=keep_last, keep_every=keep_every)


def start(
    run_dir: pathlib.Path, config: SLConfig, total: int, killer: Killer, root: pathlib.Path | None = None
) -> tuple[Run, Client, str]:
    """Open the run and make its client (the start: partial checkpoints and orphans removed); what it printed.
    Checkpoints go to ``root`` (default ``run_dir/checkpoints``)."""
    out = io.StringIO()
    run = Run.open(run_dir, config, total_steps=total, out=out)
    store = Store(root if root is not None else run_dir / "checkpoints", killer)
    try:
        client = run.training_client(store, "tiny", lora_rank=2, seed=0)  # type: ignore[arg-type]  # a test double
    except BaseException:
        run.close()
        raise
    return run, client, out.getvalue()  # type: ignore[return-value]  # the Store's Client


def train(run: Run, client: Client, config: SLConfig, total: int, *, initial: str | None = None) -> None:
    """Steps ``run.start_step .. total - 1`` of a loop that, like async RL, saves the weights of every step for
    sampling (``sampler-NNNNNN``) and records those of the last ``STALENESS`` steps, and a KL reference, with
    each state (and ``initial``, a checkpoint it started from, when given)."""
    try:
        extra = json.loads(run.state.extra_json) if run.state is not None else {}
        reference = extra.get("reference") or client.save_weights_for_sampler("reference").result()
        samplers: dict[str, str] = dict(extra.get("sampler_paths", {}))

        def submit(plan: StepPlan) -> Finish:
            samplers[str(plan.step)] = client.save_weights_for_sampler(f"sampler-{plan.step:06d}").result()
            return lambda: ({}, 0.0)

        def extra_state(done: int) -> str:
            window = {key: path for key, path in samplers.items() if done - STALENESS <= int(key) < done}
            return json.dumps({"sampler_paths": window, "reference": reference, "initial": initial})

        run_steps(
            run, client, submit, total=total, learning_rate=1e-3, lr_schedule=None, eval_every=0,  # type: ignore[arg-type]  # a test double
            save_every=config.save_every, data_state=lambda done: "null", extra_state=extra_state,
        )  # fmt: skip
    finally:
        run.close()


def _local_paths(root: pathlib.Path) -> set[str]:
    """Every checkpoint under ``root``, as ``local://`` paths (hidden leftovers excluded)."""
    found = set()
    for directory in root.glob("*/*/*") if root.is_dir() else ():
        if not directory.name.startswith("."):
            found.add(f"local://{directory.parent.parent.name}/{directory.parent.name}/{directory.name}")
    return found


def _referenced(run_dir: pathlib.Path) -> set[str]:
    states = [*read_history(run_dir), *([state] if (state := read_state(run_dir)) is not None else [])]
    return set().union(*(referenced_paths(state) for state in states))


def _orphans(run_dir: pathlib.Path) -> set[str]:
    return {path for path in _local_paths(run_dir / "checkpoints") if loop_owned(path) is not None} - _referenced(
        run_dir
    )


def _hidden(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(path for path in root.glob("*/*/*") if path.name.startswith("."))


def assert_tidy(run_dir: pathlib.Path) -> None:
    """No orphan, no leftover; every path a state references is whole, and its weights load."""
    root = run_dir / "checkpoints"
    assert _orphans(run_dir) == set()
    assert _hidden(root) == []
    for path in _referenced(run_dir):
        directory = LocalPath.parse(path).directory(root)
        verify_checkpoint(directory, path)
        assert set(read_weights(directory, read_meta(directory, path), torch.device("cpu"))) == {
            "layers.0.q_proj.lora_A.weight"
        }


def _expected(total: int, save_every: int, keep_last: int, keep_every: int | None) -> tuple[set[str], set[str]]:
    """The state and sampler checkpoint names the policy keeps at the end of an uninterrupted run."""
    saved = sorted({*range(save_every, total + 1, save_every), total})
    kept = set(saved[-keep_last:]) | {step for step in saved if keep_every and step % keep_every == 0}
    samplers = {f"sampler-{v:06d}" for step in kept for v in range(step - STALENESS, step) if v >= 0}
    return {f"step-{step:06d}" for step in kept}, samplers | {"reference"}


# -- the paths retention owns ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "step"),
    [
        ("local://run-1/weights/step-000012", 12),
        ("tinker://s:train:0/weights/step-1234567", 1234567),
        ("local://run-1/sampler_weights/sampler-000003", 3),
        ("tinker://s:train:0/sampler_weights/sampler-000000", 0),
        ("local://run-1/sampler_weights/final", None),
        ("local://run-1/sampler_weights/reference", None),
        ("local://run-1/weights/step-12", None),  # not a name the loops make
        ("local://run-1/weights/my-step-000001", None),
        ("local://run-1/sampler_weights/step-000001", None),  # a user's name in the other kind
        ("local://run-1/external_weights/step-000001", None),
        ("local://run-1/weights", None),
        ("/tmp/step-000001", None),
    ],
)
def test_retention_owns_only_the_names_the_loops_make(path: str, step: int | None) -> None:
    assert loop_owned(path) == step


def test_checkpoint_parts_split_both_schemes() -> None:
    assert checkpoint_parts("tinker://s:train:0/weights/a") == ("tinker://", "s:train:0", "weights", "a")
    assert checkpoint_parts("local://r/sampler_weights/b") == ("local://", "r", "sampler_weights", "b")
    assert checkpoint_parts("local://r/a/b/c") is None
    assert checkpoint_parts("r/weights/b") is None


# -- orphans: a kill at any point, then the start ---------------------------------------------------------------------


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # the fixture: each example sets its own Killer
@given(
    keep_last=st.integers(1, 3),
    keep_every=st.one_of(st.none(), st.integers(2, 4)),
    save_every=st.integers(1, 3),
    total=st.integers(2, 8),
    kill_at=st.integers(0, 60),
    kill_cleanup_at=st.one_of(st.none(), st.integers(0, 3)),
)
def test_a_kill_anywhere_leaves_orphans_the_next_start_removes_and_the_run_ends_as_policy(
    killable_run_dir: Callable[[Killer], None],
    keep_last: int,
    keep_every: int | None,
    save_every: int,
    total: int,
    kill_at: int,
    kill_cleanup_at: int | None,
) -> None:
    """Killed at event ``kill_at`` (a save, a state write, a history removal, a deletion), then (optionally)
    killed again at deletion ``kill_cleanup_at`` of the start's cleanup: the next start leaves no orphan and no
    leftover, every checkpoint a state references still verifies and loads, and the finished run keeps exactly
    the policy, its states' sampler weights and the KL reference (the first run id's unowned ``reference`` too)."""
    config = _config(keep_last, keep_every, save_every)
    with tempfile.TemporaryDirectory() as folder:
        run_dir = pathlib.Path(folder) / "run"
        killer = Killer(kill_at)
        killable_run_dir(killer)
        with contextlib.suppress(KilledError):
            train(*start(run_dir, config, total, killer)[:2], config, total)
        orphans = _orphans(run_dir)
        if kill_cleanup_at is not None and orphans:  # the start's cleanup is killed too
            again = Killer(kill_cleanup_at)
            killable_run_dir(again)
            with contextlib.suppress(KilledError):
                start(run_dir, config, total, again)[0].close()
            orphans = _orphans(run_dir)
        killable_run_dir(Killer())
        run, client, printed = start(run_dir, config, total, Killer())
        assert_tidy(run_dir)
        if orphans:
            names = sorted("/".join(path.split("/")[-2:]) for path in orphans)
            assert f"removed {len(orphans)} checkpoint(s) no state references" in printed
            assert all(name in printed for name in names)
        else:
            assert "no state references" not in printed
        train(run, client, config, total)
        assert_tidy(run_dir)
        weights, samplers = _expected(total, save_every, keep_last, keep_every)
        state = read_state(run_dir)
        assert state is not None
        last = LocalPath.parse(state.checkpoint).run_id
        assert last in recorded_run_ids(run_dir)
        root = run_dir / "checkpoints"
        assert {path.name for path in (root / last / "weights").iterdir()} == weights
        assert {path.name for path in (root / last / "sampler_weights").iterdir()} == samplers
        for other in {path.name for path in root.iterdir()} - {last}:  # runs killed before their first state
            assert {path.name for path in (root / other).glob("*/*")} <= {"reference"}


def test_what_is_not_retentions_is_never_removed(tmp_path: pathlib.Path) -> None:
    """Final weights, a user's checkpoints in the run's folder, and every checkpoint of a run id the run directory
    never wrote under stay, however orphaned they look."""
    config = _config(1, None, 2)
    run_dir = tmp_path / "run"
    run, client, _ = start(run_dir, config, 4, Killer())
    train(run, client, config, 4)
    root = run_dir / "checkpoints"
    (run_id,) = recorded_run_ids(run_dir)
    mine = Client(root, run_id, Killer())
    kept = [mine.save_weights_for_sampler("final").result(), mine.save_state("my-step-000001").result()]
    stranger = Client(root, "another-run", Killer())
    kept += [stranger.save_state("step-000001").result(), stranger.save_weights_for_sampler("sampler-000000").result()]
    before = _local_paths(root)
    run, _, printed = start(run_dir, config, 4, Killer())
    run.close()
    assert "no state references" not in printed
    assert _local_paths(root) == before
    assert set(kept) <= before


def test_a_checkpoint_of_another_run_a_state_references_does_not_make_that_run_retentions(
    tmp_path: pathlib.Path,
) -> None:
    """Run B starts from a checkpoint of run A (same checkpoint folder) and records its path: B's retention and
    cleanup keep it, and never touch A's other checkpoints, though no state of B references them."""
    config, shared = _config(1, None, 2), tmp_path / "checkpoints"
    train(*start(tmp_path / "a", config, 4, Killer(), shared)[:2], config, 4)
    before = _local_paths(shared)
    initial = "local://run-1/weights/step-000004"
    assert initial in before
    run, client, _ = start(tmp_path / "b", config, 4, Killer(), shared)
    real_save = client.save_state

    def save_state(name: str) -> APIFuture[str]:
        path = real_save(name)
        if name == "step-000004":  # killed after this save: a start must clean up after B
            raise KilledError
        return path

    client.save_state = save_state  # type: ignore[method-assign]  # the kill
    with pytest.raises(KilledError):
        train(run, client, config, 4, initial=initial)
    run, client, printed = start(tmp_path / "b", config, 4, Killer(), shared)
    assert "weights/step-000004" in printed
    assert recorded_run_ids(tmp_path / "b") == ["run-2"]
    train(run, client, config, 4, initial=initial)
    assert {path for path in _local_paths(shared) if "/run-1/" in path} == before
    assert {LocalPath.parse(path).name for path in _local_paths(shared) if "/run-2/" in path} == {
        "step-000004", "sampler-000002", "sampler-000003", "reference",
    }  # fmt: skip


_CHILD: Final = """
import os, pathlib, signal, sys, types
sys.path.insert(0, sys.argv[2])
import torch
torch.set_num_threads(1)
import tinkerflow.shell.backends.local.checkpoint as checkpoint_module
from tests.test_retention import Killer, _config, start, train
point = sys.argv[3]
real_rmtree = checkpoint_module.shutil.rmtree

class Dying(Killer):
    def tick(self):
        return False

def rmtree(path, ignore_errors=False):
    if point == "inside a deletion" and ".step-000002." in str(path):
        os.kill(os.getpid(), signal.SIGKILL)  # renamed away, its files not yet removed
    real_rmtree(path, ignore_errors=ignore_errors)

checkpoint_module.shutil = types.SimpleNamespace(rmtree=rmtree)
if point == "after a save":
    real_write = checkpoint_module.write_checkpoint
    def write_checkpoint(directory, *args, **kwargs):
        real_write(directory, *args, **kwargs)
        if directory.name == "step-000004":
            os.kill(os.getpid(), signal.SIGKILL)  # saved, no state names it yet
    checkpoint_module.write_checkpoint = write_checkpoint
    import tests.test_retention as here
    here.write_checkpoint = write_checkpoint
config = _config(1, None, 2)
train(*start(pathlib.Path(sys.argv[1]), config, 6, Dying())[:2], config, 6)
"""


@pytest.mark.parametrize("point", ["inside a deletion", "after a save"])
def test_a_real_kill_9_leaves_what_the_next_start_removes(tmp_path: pathlib.Path, point: str) -> None:
    run_dir = tmp_path / "run"
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(run_dir), str(ROOT), point],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    root = run_dir / "checkpoints"
    if point == "inside a deletion":
        assert [path.name[:13] for path in _hidden(root)] == [".step-000002."]
    else:
        assert "local://run-1/weights/step-000004" in _orphans(run_dir)
    config = _config(1, None, 2)
    run, client, printed = start(run_dir, config, 6, Killer())
    assert_tidy(run_dir)
    if point == "after a save":
        assert "weights/step-000004" in printed
    train(run, client, config, 6)
    assert_tidy(run_dir)
    assert sorted(path.name for path in (root / "run-1" / "weights").iterdir()) == ["step-000006"]


# -- the Tinker service ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tinkerflow.shell.serve.server import ServerConfig, ServerThread

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINKER_TELEMETRY", "0")
        store = tmp_path_factory.mktemp("serve") / "store"
        with ServerThread(ServerConfig(store=store, device="cpu")) as running:
            yield running


def _tinker(server: object) -> TinkerBackend:
    from tinkerflow.shell.serve.server import DEFAULT_KEY

    return TinkerBackend(base_url=server.base_url, api_key=DEFAULT_KEY)  # type: ignore[attr-defined]  # ServerThread


def _run_id(path: str) -> str:
    parts = checkpoint_parts(path)
    assert parts is not None
    return parts[1]


def test_tinker_backend_deletes_and_lists_checkpoints_on_the_service(server: object) -> None:
    with _tinker(server) as backend:
        client = backend.create_lora_training_client("tiny-llama", rank=2, seed=0).result()
        state = client.save_state("step-000001").result()
        sampler = client.save_weights_for_sampler("sampler-000000").result()
        run_id = _run_id(state)
        assert run_id == client.get_info().model_id
        assert backend.list_checkpoints(run_id) == sorted([state, sampler])
        assert backend.delete_checkpoint(state) is True
        assert backend.delete_checkpoint(state) is False  # gone: the service answers 404
        assert backend.list_checkpoints(run_id) == [sampler]
        assert backend.list_checkpoints("no-such:train:0") == []
        client.create_sampling_client(sampler).result()  # the other one is untouched
        for bad in ["local://r/weights/a", f"tinker://{run_id}/weights", f"tinker://{run_id}/other/a", 7]:
            with pytest.raises(ValidationError, match=r"delete_checkpoint\.path"):
                backend.delete_checkpoint(bad)  # type: ignore[arg-type]  # a wrong type on purpose, too
        with pytest.raises(ValidationError, match=r"list_checkpoints\.run_id"):
            backend.list_checkpoints("a/b")


def test_a_given_service_client_makes_its_rest_client(server: object) -> None:
    from tinkerflow.shell.serve.server import DEFAULT_KEY

    service = tinker.ServiceClient(base_url=server.base_url, api_key=DEFAULT_KEY)  # type: ignore[attr-defined]
    try:
        backend = TinkerBackend(service)
        state = backend.create_lora_training_client("tiny-llama", rank=2).result().save_state("a").result()
        assert backend.list_checkpoints(_run_id(state)) == [state]
        assert backend.delete_checkpoint(state)
    finally:
        service.close("success").result(timeout=30)
    with pytest.raises(ConfigError, match=r"TinkerBackend\.rest_client"):
        TinkerBackend(object()).delete_checkpoint("tinker://r/weights/a")


class _Never:
    def result(self) -> None:
        threading.Event().wait(30)


class _FakeRest:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    def delete_checkpoint_from_tinker_path(self, path: str) -> object:
        if self.behaviour == "hang":
            return _Never()
        response = httpx.Response(500, request=httpx.Request("DELETE", "http://service/x"))
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        future.set_exception(tinker.InternalServerError("the disk is on fire", response=response, body=None))
        return future

    list_checkpoints = delete_checkpoint_from_tinker_path


def test_a_delete_that_never_answers_or_fails_is_a_typed_error() -> None:
    hanging = TinkerBackend(object(), rest_client=_FakeRest("hang"), call_timeout_s=0.2)
    with pytest.raises(TinkerTimeoutError, match=r"delete_checkpoint\('tinker://r/weights/a'\).*call_timeout_s"):
        hanging.delete_checkpoint("tinker://r/weights/a")
    failing = TinkerBackend(object(), rest_client=_FakeRest("fail"))
    with pytest.raises(TinkerServiceError, match=r"answered HTTP 500 \(the disk is on fire\)"):
        failing.delete_checkpoint("tinker://r/weights/a")
    with pytest.raises(TinkerServiceError, match=r"list_checkpoints\('r'\).*HTTP 500"):
        failing.list_checkpoints("r")


def _service_run(server: object, run_dir: pathlib.Path, total: int, out: io.StringIO, kill_at: int | None) -> None:
    """The do-nothing loop of the local tests through ``TinkerBackend``: states and samplers on the service."""
    config = _config(1, None, 2)
    with _tinker(server) as backend:
        run = Run.open(run_dir, config, total_steps=total, out=out)
        try:
            client = run.training_client(backend, "tiny-llama", lora_rank=2, seed=0)
            extra = json.loads(run.state.extra_json) if run.state is not None else {}
            samplers: dict[str, str] = dict(extra.get("sampler_paths", {}))

            def submit(plan: StepPlan) -> Finish:
                samplers[str(plan.step)] = client.save_weights_for_sampler(f"sampler-{plan.step:06d}").result()
                return lambda: ({}, 0.0)

            def extra_state(done: int) -> str:
                window = {key: path for key, path in samplers.items() if done - STALENESS <= int(key) < done}
                return json.dumps({"sampler_paths": window})

            run_steps(
                run, client, submit, total=total, learning_rate=1e-3, lr_schedule=None, eval_every=0, save_every=2,
                data_state=lambda done: "null", extra_state=extra_state,
                after_step=kill_after(kill_at) if kill_at is not None else None,
            )  # fmt: skip
        finally:
            run.close()


def test_retention_on_the_service_across_a_resume_and_an_orphan(
    server: object, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keep_last=1 on the service: killed after step 2 (a resume is a new training run there), then between the
    save of step 4 and its state: the start removes that orphan, and the end keeps only step 6 and the sampler
    weights its in-flight batches need, across both training runs."""
    run_dir = tmp_path / "run"
    with pytest.raises(KilledError):
        _service_run(server, run_dir, 6, io.StringIO(), kill_at=2)
    real_write = run_dir_module.write_state

    def write_state(directory: pathlib.Path, state: object) -> None:
        if getattr(state, "step", None) == 4:
            raise KilledError
        real_write(directory, state)  # type: ignore[arg-type]  # a RunState

    monkeypatch.setattr(run_module, "write_state", write_state)
    with pytest.raises(KilledError):
        _service_run(server, run_dir, 6, io.StringIO(), kill_at=None)
    monkeypatch.setattr(run_module, "write_state", real_write)
    out = io.StringIO()
    _service_run(server, run_dir, 6, out, kill_at=None)
    # the second run's saves after step 2 (its state of step 4 was never written) are its orphans
    printed = out.getvalue()
    assert "removed 3 checkpoint(s) no state references" in printed
    for name in ("weights/step-000004", "sampler_weights/sampler-000002", "sampler_weights/sampler-000003"):
        assert name in printed
    run_ids = recorded_run_ids(run_dir)
    assert len(run_ids) == 3  # each start on the service is a new training run
    state = read_state(run_dir)
    assert state is not None
    with _tinker(server) as backend:
        left = [path for run_id in run_ids for path in backend.list_checkpoints(run_id)]
    assert sorted("/".join(path.split("/")[-2:]) for path in left) == [
        "sampler_weights/sampler-000004",
        "sampler_weights/sampler-000005",
        "weights/step-000006",
    ]
    assert set(left) == set(referenced_paths(state))
    assert [state.step for state in read_history(run_dir)] == [6]
