"""One process of the 2-process test in tests/test_jax.py (not a test module itself).

Run as: python jax_multihost_worker.py PORT PROCESS_ID PROCESS_COUNT. It joins a
`jax.distributed` cluster on 127.0.0.1, builds its slice of a ramp-up and checks
that the global arrays equal the one-process batches; it prints "ok <steps>".
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

port, process_id, process_count = (int(v) for v in sys.argv[1:4])
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=process_count,
    process_id=process_id,
    initialization_timeout=60,
)

from jax.experimental import multihost_utils  # noqa: E402

import rampup  # noqa: E402
from rampup.adapters.jax import device_batches, process_layout  # noqa: E402

STEPS = 6
mesh = jax.make_mesh((jax.device_count(),), ("data",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
data = [{"x": np.arange(3 * i, 3 * i + 3, dtype=np.int32), "y": np.int32(i)} for i in range(500)]
schedule = rampup.piecewise({0: 8, 2: 16, 4: 32})
assert tuple(process_layout(sharding)) == (jax.process_index(), jax.process_count())
local = rampup.RampupBatches(
    data,
    schedule,
    shuffle_seed=3,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
)
whole = rampup.RampupBatches(data, schedule, shuffle_seed=3)
total = jax.jit(lambda b: b["x"].sum() + b["y"].sum())
with device_batches(local.iter_from(0), sharding) as batches:
    for step, batch in zip(range(STEPS), batches, strict=False):
        expected = whole[step]
        assert batch["x"].shape == expected["x"].shape, (step, batch["x"].shape)
        for name in ("x", "y"):
            for shard in batch[name].addressable_shards:
                np.testing.assert_array_equal(np.asarray(shard.data), expected[name][shard.index])
        gathered = multihost_utils.process_allgather(batch, tiled=True)
        for name in ("x", "y"):
            np.testing.assert_array_equal(gathered[name], expected[name])
        assert int(total(batch)) == int(expected["x"].sum() + expected["y"].sum())

# Micro-batch mode: micro-batch j holds each process's j-th share, process by process.
slices = [
    rampup.RampupBatches(
        data, schedule, shuffle_seed=3, process_index=p, process_count=jax.process_count()
    )
    for p in range(jax.process_count())
]
micro, share = 8, 8 // jax.process_count()
with device_batches(local.iter_from(0), sharding, microbatch_size=micro) as batches:
    for step, parts in zip(range(STEPS), batches, strict=False):
        assert len(parts) == schedule(step) // micro
        for j, part in enumerate(parts):
            expected = np.concatenate([s[step]["y"][j * share : (j + 1) * share] for s in slices])
            np.testing.assert_array_equal(
                multihost_utils.process_allgather(part["y"], tiled=True), expected
            )
print("ok", STEPS, flush=True)
jax.distributed.shutdown()
