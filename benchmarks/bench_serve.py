"""The server's overhead: the same SL steps and sampling through the tinker SDK -> ``tinkerflow serve`` and in-process.

One process, one run: a :class:`~tinkerflow.shell.serve.server.ServerThread` on ``127.0.0.1`` (its own
``LocalBackend``) and an in-process ``LocalBackend``, both on the CPU, the same base model, LoRA rank and seed, fed
the same batch (real text: this repository's docs, tokenized by the model's tokenizer, cut into ``--batch``
sequences of ``--length`` tokens, the first half of each weighted 0). Every iteration runs one step on each side,
alternating which side goes first, and the first ``--warmup`` iterations are left out.

* SL step: ``forward_backward(data, "cross_entropy")`` and ``optim_step(adam)`` submitted back to back, then both
  awaited (the SDK's recommended pattern) -- the unmodified ``tinker`` SDK on one side, ``LocalTrainingClient``
  on the other. The two runs see the same data from the same init, so their losses must agree (checked).
* Sampling: ``save_weights_and_get_sampling_client`` once per side, then ``--samples`` calls of ``num_samples``
  sequences of ``max_tokens`` new tokens from one prompt at temperature 1 with a per-call seed (both sides).

Reported: per-step medians (and min / max), the ratio server / in-process of the medians, the median of the
per-iteration ratios, and the server's overhead as a % of the in-process step time. The issue's target is an
overhead of at most 10% of the step time on the embedded model.

Where the server's extra time goes: the server's engine is probed (wrappers on the instance's public methods, no
source changed) for each timed SDK step -- when the backend work started and finished, when the encoded answer
was stored, when the long poll (``retrieve_future``) answered -- and the codec is timed alone on the same batch
(SDK protobuf encode, server decode + conversion, server encode, SDK decode), as is one bare HTTP round trip.
From the probe, ``*_overhead_within_step_pct`` is each SDK step's time outside the backend's work as a % of that
work (median over steps): the server's overhead measured inside one step, which a busy shared CPU disturbs far
less than the ratio of two sides' step times (steps of the same work vary by tens of % when other jobs run).

Usage: ``python benchmarks/bench_serve.py [--model HuggingFaceTB/SmolLM2-135M-Instruct|tiny-llama] [--steps N]
[--samples N]``. ``--model tiny-llama`` is a quick smoke run. Prints the figures and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from _common import best_of, emit

EMBEDDED = "HuggingFaceTB/SmolLM2-135M-Instruct"
ROOT = pathlib.Path(__file__).parents[1]
LEARNING_RATE = 1e-5


def _text() -> str:
    """Real text to tokenize: the repository's docs (and README), in a fixed order."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n\n".join(path.read_text(encoding="utf-8") for path in files if path.exists())


def _windows(tokens: Sequence[int], batch: int, length: int) -> np.ndarray:
    """``batch`` windows of ``length + 1`` tokens, spread over the text."""
    ids = np.asarray(tokens, dtype=np.int64)
    if ids.size < batch * (length + 1):
        raise SystemExit(f"the docs give {ids.size} tokens, fewer than {batch} x {length + 1}")
    stride = (ids.size - (length + 1)) // max(batch - 1, 1)
    return np.stack([ids[i * stride : i * stride + length + 1] for i in range(batch)])


def _summary(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(seconds), 4),
        "min_s": round(min(seconds), 4),
        "max_s": round(max(seconds), 4),
    }


class Probe:
    """Timestamps from inside the server (same process), by wrapping its engine's methods on the instance.

    For each request id: ``start`` (the backend call was made: after HTTP, body parse, decode, conversion),
    ``done`` (the backend's work finished), ``stored`` (its encoded answer is in the store), ``answered`` (the
    long poll returned it), ``encode`` (seconds spent encoding the answer), ``bytes`` (its size).
    """

    def __init__(self, engine: Any) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.last_answered = ""
        self._lock = threading.Lock()
        board, store = engine.board, engine.store
        launch, finish_future, wait = board.launch, store.finish_future, board.wait

        def probed_launch(*, owner: str, seq_id: int | None, kind: str, start: Any, encode: Any) -> Any:
            record: dict[str, Any] = {"kind": kind}

            def timed_start() -> Any:
                record["start"] = time.perf_counter()
                work = start()
                work.future().add_done_callback(lambda _: record.__setitem__("done", time.perf_counter()))
                return work

            def timed_encode(value: Any) -> Any:
                began = time.perf_counter()
                payload = encode(value)
                record["encode"] = time.perf_counter() - began
                record["bytes"] = len(payload.body)
                return payload

            launched = launch(owner=owner, seq_id=seq_id, kind=kind, start=timed_start, encode=timed_encode)
            with self._lock:
                self.records[launched.request_id] = record
            return launched

        def probed_finish(request_id: str, content_type: str, payload: bytes) -> None:
            finish_future(request_id, content_type, payload)
            self._mark(request_id, "stored")

        async def probed_wait(request_id: str, timeout: float) -> Any:
            record = await wait(request_id, timeout)
            if record.state != "pending":
                self._mark(request_id, "answered")
                self.last_answered = request_id
            return record

        board.launch = probed_launch
        store.finish_future = probed_finish
        board.wait = probed_wait

    def _mark(self, request_id: str, key: str) -> None:
        with self._lock:
            if request_id in self.records:
                self.records[request_id].setdefault(key, time.perf_counter())

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            out = sorted(self.records.values(), key=lambda r: r.get("start", 0.0))
            self.records.clear()
        return out


def _breakdown(began: float, ended: float, records: list[dict[str, Any]]) -> dict[str, float] | None:
    """One SDK step's time, split: before the backend starts, backend work, after it finishes (see :class:`Probe`)."""
    if not records or any(key not in r for r in records for key in ("start", "done", "stored", "answered")):
        return None
    first, last = records[0], records[-1]
    return {
        "submit_s": first["start"] - began,  # SDK encode + HTTP POST + server parse/decode/convert
        "backend_s": last["done"] - first["start"],  # the local backend's work (fwd/bwd + optim / sample)
        "encode_store_s": last["stored"] - last["done"],  # answer encoded and written to SQLite
        "wake_s": last["answered"] - last["stored"],  # long poll notices the answer
        "reply_s": ended - last["answered"],  # HTTP response + SDK decode + hand-off to the caller
        "encode_s": sum(r.get("encode", 0.0) for r in records),  # of the parts above: answer encoding
        "outside_backend_s": (ended - began) - (last["done"] - first["start"]),  # all of the server's overhead
    }


def _mean_breakdown(parts: Sequence[dict[str, float] | None]) -> dict[str, float]:
    """Each part's mean over the steps, in ms. Means, not medians, so that the parts add up: a stall that lands in
    a different part from one step to the next (a delayed answer shows as submit, wake or reply) is not lost."""
    rows = [p for p in parts if p is not None]
    if not rows:
        return {}
    return {key: round(statistics.fmean(row[key] for row in rows) * 1e3, 2) for key in rows[0]}


def _direct_overhead_pct(parts: Sequence[dict[str, float] | None]) -> float | None:
    """Median over steps of (time outside the backend's work) / (the backend's work), in %: the server's overhead
    measured within each step, so it does not depend on the two sides' step times agreeing on a busy machine."""
    rows = [p for p in parts if p is not None]
    if not rows:
        return None
    return round(statistics.median(row["outside_backend_s"] / row["backend_s"] for row in rows) * 100, 3)


def _alternate(
    local: Callable[[], Any], server: Callable[[], Any], iterations: int, warmup: int, probe: Probe
) -> tuple[list[float], list[float], list[Any], list[Any], list[dict[str, float] | None]]:
    """Run both ``iterations`` times (who goes first alternates); timings of the first ``warmup`` are dropped."""
    local_s: list[float] = []
    server_s: list[float] = []
    local_out: list[Any] = []
    server_out: list[Any] = []
    parts: list[dict[str, float] | None] = []
    for i in range(iterations):
        order = ("local", "server") if i % 2 == 0 else ("server", "local")
        for side in order:
            if side == "local":
                began = time.perf_counter()
                out = local()
                elapsed = time.perf_counter() - began
                local_out.append(out)
                if i >= warmup:
                    local_s.append(elapsed)
            else:
                probe.take()
                began = time.perf_counter()
                out = server()
                ended = time.perf_counter()  # every probe mark is taken before the server sends the answer
                server_out.append(out)
                if i >= warmup:
                    server_s.append(ended - began)
                    parts.append(_breakdown(began, ended, probe.take()))
    return local_s, server_s, local_out, server_out, parts


def _codec_timings(tinker_data: list[Any], local_output: Any, local_sample: Any, repeats: int) -> dict[str, float]:
    """The wire work of one step and one sampling call, timed alone on the same batch (ms, best of ``repeats``)."""
    import tinker.types as tt
    from tinker.proto.request_conv import forward_backward_request_to_proto
    from tinker.proto.response_conv import deserialize_forward_backward_output, deserialize_sample_response

    from tinkerflow import interop
    from tinkerflow.shell.serve import codec

    request = tt.ForwardBackwardRequest(
        forward_backward_input=tt.ForwardBackwardInput(data=tinker_data, loss_fn="cross_entropy"),
        model_id="s:train:0",
        seq_id=1,
    )
    body = forward_backward_request_to_proto(request).SerializeToString()
    fb_out = codec.encode_forward_backward_output(interop.forward_backward_output_to_tinker(local_output))
    sample_out = codec.encode_sample_response(interop.sample_response_to_tinker(local_sample))

    def server_decode() -> None:
        decoded = codec.decode_forward_backward_request(body)
        [interop.datum_from_tinker(d) for d in decoded.data]

    timings = {
        "sdk_encode_fb_request": lambda: forward_backward_request_to_proto(request).SerializeToString(),
        "server_decode_fb_request": server_decode,
        "server_encode_fb_output": lambda: codec.encode_forward_backward_output(
            interop.forward_backward_output_to_tinker(local_output)
        ),
        "sdk_decode_fb_output": lambda: deserialize_forward_backward_output(fb_out),
        "server_encode_sample": lambda: codec.encode_sample_response(interop.sample_response_to_tinker(local_sample)),
        "sdk_decode_sample": lambda: deserialize_sample_response(sample_out),
    }
    out = {name: round(best_of(fn, repeats) * 1e3, 3) for name, fn in timings.items()}
    out["fb_request_bytes"] = len(body)
    out["fb_output_bytes"] = len(fb_out)
    out["sample_output_bytes"] = len(sample_out)
    return out


def _http_round_trip(base_url: str, api_key: str, request_id: str, repeats: int) -> float:
    """Median seconds of one keep-alive ``retrieve_future`` round trip for a finished (small JSON) answer."""
    import httpx

    times = []
    with httpx.Client(base_url=base_url, headers={"X-API-Key": api_key}) as http:
        for _ in range(repeats + 3):
            began = time.perf_counter()
            response = http.post("/api/v1/retrieve_future", json={"request_id": request_id})
            times.append(time.perf_counter() - began)
            response.raise_for_status()
    return statistics.median(times[3:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=EMBEDDED, help=f"base model on both sides (default {EMBEDDED})")
    parser.add_argument("--steps", type=int, default=6, help="timed SL steps per side (after the warm-up)")
    parser.add_argument("--samples", type=int, default=6, help="timed sampling calls per side (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first, of each kind")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    arguments = parser.parse_args()
    os.environ.setdefault("TINKER_TELEMETRY", "0")  # nothing leaves the machine

    import tinker
    import tinker.types as tt
    import torch

    from tinkerflow import AdamParams, Datum, ModelInput, SamplingParams, interop
    from tinkerflow.shell.backends.local import LocalBackend
    from tinkerflow.shell.serve.server import DEFAULT_KEY, ServerConfig, ServerThread

    model, rank = arguments.model, arguments.rank
    steps_total = arguments.warmup + arguments.steps
    samples_total = arguments.warmup + arguments.samples
    torch.manual_seed(0)
    with (
        tempfile.TemporaryDirectory() as directory,
        LocalBackend(checkpoint_dir=pathlib.Path(directory) / "local", device="cpu") as backend,
        ServerThread(ServerConfig(store=pathlib.Path(directory) / "store", device="cpu")) as server,
    ):
        probe = Probe(server.engine)
        service = tinker.ServiceClient(base_url=server.base_url, api_key=DEFAULT_KEY)
        try:
            local_client = backend.create_lora_training_client(model, rank=rank, seed=0).result()
            sdk_client = service.create_lora_training_client(base_model=model, rank=rank, seed=0).result()
            tokens = backend.get_tokenizer(model).encode(_text())
            windows = _windows(tokens, arguments.batch, arguments.length)
            weights = np.zeros((arguments.batch, arguments.length), dtype=np.float32)
            weights[:, arguments.length // 2 :] = 1.0
            data = [
                Datum(model_input=ModelInput.from_tokens(w[:-1]), target_tokens_T=w[1:], weights_T=weights[i])
                for i, w in enumerate(windows)
            ]
            tinker_data = [interop.datum_to_tinker(d) for d in data]
            adam = AdamParams(learning_rate=LEARNING_RATE)
            tinker_adam = tt.AdamParams(learning_rate=LEARNING_RATE)

            def local_step() -> Any:
                fb = local_client.forward_backward(data, "cross_entropy")
                optim = local_client.optim_step(adam)
                output = fb.result()
                optim.result()
                return output

            def server_step() -> Any:
                fb = sdk_client.forward_backward(tinker_data, "cross_entropy")
                optim = sdk_client.optim_step(tinker_adam)
                output = fb.result()
                optim.result()
                return output

            print(
                f"model {model}; batch {arguments.batch} x {arguments.length}, LoRA rank {rank}; "
                f"{arguments.steps} timed steps + {arguments.warmup} warm-up per side; torch threads "
                f"{torch.get_num_threads()}"
            )
            local_sl, server_sl, local_outs, server_outs, sl_parts = _alternate(
                local_step, server_step, steps_total, arguments.warmup, probe
            )
            local_losses = [o.metrics["loss:sum"] for o in local_outs]
            server_losses = [o.metrics["loss:sum"] for o in server_outs]
            loss_diff = max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(local_losses, server_losses, strict=True))
            print(f"losses in-process {[round(x, 3) for x in local_losses]}")
            print(f"losses via server {[round(x, 3) for x in server_losses]} (max relative diff {loss_diff:.1e})")

            local_sampler = local_client.save_weights_and_get_sampling_client().result()
            sdk_sampler = sdk_client.save_weights_and_get_sampling_client().result()
            prompt = windows[0][:32]
            seeds = iter(range(10**6))
            local_seeds = iter(range(10**6))

            def local_sample() -> Any:
                params = SamplingParams(max_tokens=arguments.max_tokens, temperature=1.0, seed=next(local_seeds))
                return local_sampler.sample(ModelInput.from_tokens(prompt), arguments.num_samples, params).result()

            def server_sample() -> Any:
                params = tt.SamplingParams(max_tokens=arguments.max_tokens, temperature=1.0, seed=next(seeds))
                tinker_prompt = tt.ModelInput.from_ints([int(t) for t in prompt])
                return sdk_sampler.sample(tinker_prompt, arguments.num_samples, params).result()

            local_sa, server_sa, local_samples, server_samples, sa_parts = _alternate(
                local_sample, server_sample, samples_total, arguments.warmup, probe
            )
            same = sum(
                list(a.tokens_T) == list(b.tokens)
                for la, sa in zip(local_samples, server_samples, strict=True)
                for a, b in zip(la.sequences, sa.sequences, strict=True)
            )
            total_sequences = sum(len(s.sequences) for s in local_samples)

            codec_ms = _codec_timings(tinker_data, local_outs[-1], local_samples[-1], repeats=5)
            round_trip = _http_round_trip(server.base_url, DEFAULT_KEY, probe.last_answered, repeats=30)
        finally:
            service.close("success").result(timeout=60)

    sl_ratio = statistics.median(server_sl) / statistics.median(local_sl)
    sa_ratio = statistics.median(server_sa) / statistics.median(local_sa)
    sl_paired = statistics.median(s / lo for s, lo in zip(server_sl, local_sl, strict=True))
    sa_paired = statistics.median(s / lo for s, lo in zip(server_sa, local_sa, strict=True))
    figures: dict[str, object] = {
        "model": model,
        "device": "cpu",
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "batch": arguments.batch,
        "length": arguments.length,
        "rank": rank,
        "steps": arguments.steps,
        "samples": arguments.samples,
        "warmup": arguments.warmup,
        "num_samples": arguments.num_samples,
        "max_tokens": arguments.max_tokens,
        "sl_local": _summary(local_sl),
        "sl_server": _summary(server_sl),
        "sl_ratio": round(sl_ratio, 4),
        "sl_paired_ratio": round(sl_paired, 4),
        "sl_overhead_pct": round((sl_ratio - 1) * 100, 2),
        "sl_server_breakdown_ms": _mean_breakdown(sl_parts),
        "sl_overhead_within_step_pct": _direct_overhead_pct(sl_parts),
        "sl_loss_max_rel_diff": loss_diff,
        "sample_local": _summary(local_sa),
        "sample_server": _summary(server_sa),
        "sample_ratio": round(sa_ratio, 4),
        "sample_paired_ratio": round(sa_paired, 4),
        "sample_overhead_pct": round((sa_ratio - 1) * 100, 2),
        "sample_server_breakdown_ms": _mean_breakdown(sa_parts),
        "sample_overhead_within_step_pct": _direct_overhead_pct(sa_parts),
        "sample_same_tokens": f"{same}/{total_sequences}",
        "codec_ms": codec_ms,
        "http_round_trip_ms": round(round_trip * 1e3, 3),
    }
    for label, local_s, server_s, ratio, paired in (
        ("SL step", local_sl, server_sl, sl_ratio, sl_paired),
        ("sampling", local_sa, server_sa, sa_ratio, sa_paired),
    ):
        print(
            f"{label}: in-process median {statistics.median(local_s):.3f}s "
            f"[{min(local_s):.3f}-{max(local_s):.3f}], via server {statistics.median(server_s):.3f}s "
            f"[{min(server_s):.3f}-{max(server_s):.3f}]; ratio {ratio:.3f} (paired {paired:.3f}), "
            f"overhead {(ratio - 1) * 100:+.1f}% of the step"
        )
    for label, key in (("step", "sl"), ("sampling", "sample")):
        print(
            f"server {label} breakdown (means, ms): {figures[f'{key}_server_breakdown_ms']}; time outside the "
            f"backend's work = {figures[f'{key}_overhead_within_step_pct']}% of it (median over {label}s)"
        )
    print(f"codec alone (best of 5, ms): {codec_ms}")
    print(f"one HTTP round trip (retrieve_future of a finished answer): {round_trip * 1e3:.2f} ms")
    print(f"sampled sequences equal on both sides: {same}/{total_sequences}")
    emit("serve_overhead", figures)


if __name__ == "__main__":
    main()
