"""Conversion of 10k datums to and from tinker.types, and JSON round trips.

Reference: building the same ``tinker.types.Datum`` objects directly from numpy arrays, the way tinker-cookbook's
datum helpers do (``ModelInput.from_ints`` + ``TensorData.from_numpy``). The ratio says what tinkerflow's typed,
validated records cost on top of that at the service boundary.

Run: ``python benchmarks/bench_interop.py`` (or ``nox -s bench -- bench_interop``).
"""

from __future__ import annotations

import numpy as np
import tinker.types as tt

from _common import best_of, emit
from tinkerflow import Datum, ModelInput
from tinkerflow.interop import datum_from_tinker, datum_to_tinker
from tinkerflow.serde import converter

N = 10_000
LENGTH = 256


def main() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 150_000, size=(N, LENGTH + 1), dtype=np.int64)
    weights = (rng.random((N, LENGTH)) > 0.3).astype(np.float32)

    def build_records() -> list[Datum]:
        return [
            Datum(model_input=ModelInput.from_tokens(row[:-1]), target_tokens_T=row[1:], weights_T=w)
            for row, w in zip(tokens, weights, strict=True)
        ]

    datums = build_records()

    def reference_to_tinker() -> list[tt.Datum]:
        return [
            tt.Datum(
                model_input=tt.ModelInput.from_ints(row[:-1].tolist()),
                loss_fn_inputs={
                    "target_tokens": tt.TensorData.from_numpy(row[1:]),
                    "weights": tt.TensorData.from_numpy(w),
                },
            )
            for row, w in zip(tokens, weights, strict=True)
        ]

    def ours_to_tinker() -> list[tt.Datum]:
        return [datum_to_tinker(datum) for datum in datums]

    sdk = ours_to_tinker()

    def ours_from_tinker() -> list[Datum]:
        return [datum_from_tinker(datum) for datum in sdk]

    def json_round_trip() -> list[Datum]:
        return [converter.structure(converter.unstructure(datum), Datum) for datum in datums[:1000]]

    t_build = best_of(build_records, 3)
    t_ref = best_of(reference_to_tinker, 3)
    t_to = best_of(ours_to_tinker, 3)
    t_from = best_of(ours_from_tinker, 3)
    t_json = best_of(json_round_trip, 3)
    assert all(datum_from_tinker(a) == b for a, b in zip(sdk[:100], datums[:100], strict=True))
    print(f"{N} datums of {LENGTH} tokens")
    print(f"  build validated tinkerflow records : {t_build * 1e3:8.1f} ms ({N / t_build:,.0f}/s)")
    print(f"  reference: tinker.types directly   : {t_ref * 1e3:8.1f} ms ({N / t_ref:,.0f}/s)")
    print(f"  tinkerflow -> tinker.types         : {t_to * 1e3:8.1f} ms ({N / t_to:,.0f}/s)")
    print(f"  tinker.types -> tinkerflow         : {t_from * 1e3:8.1f} ms ({N / t_from:,.0f}/s)")
    print(f"  JSON round trip (1000 datums)      : {t_json * 1e3:8.1f} ms")
    emit(
        "interop",
        {
            "datums": N,
            "tokens_per_datum": LENGTH,
            "build_records_s": round(t_build, 4),
            "reference_to_tinker_s": round(t_ref, 4),
            "to_tinker_s": round(t_to, 4),
            "from_tinker_s": round(t_from, 4),
            "json_round_trip_1000_s": round(t_json, 4),
            "to_tinker_vs_reference_ratio": round(t_to / t_ref, 3),
        },
    )


if __name__ == "__main__":
    main()
