"""`rampup demo`: an end-to-end ramp-up on synthetic data, with a resume check halfway.

Each backend builds the same pipeline: a synthetic dataset of token sequences,
batched by the schedule, fed to a small training step. Halfway the data state
is saved as JSON; the pipeline is then rebuilt from that state and must yield
the identical continuation. Frameworks are imported inside their backend only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from rampup.batching import RampupBatches
from rampup.plan import Plan
from rampup.schedules import Schedule, check_count, from_config

DEFAULT_SCHEDULE = {"type": "piecewise", "sizes": {"0": 16, "8": 32, "16": 48, "24": 64}}
DEFAULT_STEPS = 40
SEQUENCE_LENGTH = 32
NUM_SAMPLES = 4096
SEED = 0
BACKENDS = ("jax", "grain", "torch", "tf", "numpy")
_NEEDS = {
    "jax": ("jax", "grain"),
    "grain": ("grain",),
    "torch": ("torch",),
    "tf": ("tensorflow",),
    "numpy": (),
}


def install_hint(extra: str) -> str:
    """How to install an extra: rampup is installed from its checkout, not from PyPI."""
    return f'pip install -e ".[{extra}]" in the rampup checkout'


def make_example(index: int) -> dict[str, np.ndarray]:
    """Synthetic sample `index`: a token sequence and its next-token targets."""
    tokens = (np.arange(SEQUENCE_LENGTH + 1, dtype=np.int64) * 31 + index * 7919) % 1000
    return {"tokens": tokens[:-1].astype(np.int32), "targets": tokens[1:].astype(np.int32)}


class SyntheticDataset:
    """A map-style dataset of `NUM_SAMPLES` synthetic examples (len and getitem)."""

    def __len__(self) -> int:
        return NUM_SAMPLES

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return make_example(int(index))


def digest(batch: Any) -> str:
    """A content hash of a batch pytree of arrays (or tensors)."""
    h = hashlib.sha256()
    leaves = [batch] if not isinstance(batch, dict) else [batch[k] for k in sorted(batch)]
    for leaf in leaves:
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]


@dataclass
class Pipeline:
    """What a backend builds: host-visible batches, a train step, the data state."""

    batches: Iterator[Any]
    train_step: Callable[[Any], float]
    get_state: Callable[[int], dict[str, Any]]  # the state before the given step
    compiles: Callable[[], int] = lambda: 0
    devices: str = "host"
    close: Callable[[], None] = field(default=lambda: None)


def numpy_step() -> Callable[[Any], float]:
    """A least-squares step of a linear next-token predictor in NumPy."""
    w = np.zeros((SEQUENCE_LENGTH, SEQUENCE_LENGTH), np.float32)

    def step(batch: Any) -> float:
        nonlocal w
        x = np.asarray(batch["tokens"], np.float32) / 1000
        y = np.asarray(batch["targets"], np.float32) / 1000
        err = x @ w - y
        w -= 0.1 * x.T @ err / len(x)
        return float((err**2).mean())

    return step


def build_numpy(schedule: Schedule, state: dict[str, Any] | None) -> Pipeline:
    """The NumPy core alone: RampupBatches over the synthetic dataset."""
    it = RampupBatches(SyntheticDataset(), schedule, shuffle_seed=SEED).iter_from(0)
    if state is not None:
        it.set_state(state)
    return Pipeline(it, numpy_step(), lambda _: it.get_state())


def grain_source() -> Any:
    """The synthetic dataset as a shuffled grain `MapDataset`, batched by the schedule."""
    import grain

    return grain.MapDataset.source(SyntheticDataset()).shuffle(seed=SEED)


def grain_iterator(dataset: Any, state: dict[str, Any] | None) -> Any:
    """An iterator over a `RampupMapDataset`, restored from `state` if given."""
    import grain

    # Cheap elements: grain's default 16 read threads cost more than they save.
    it = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0)))
    if state is not None:
        it.set_state(state)
    return it


def build_grain(schedule: Schedule, state: dict[str, Any] | None) -> Pipeline:
    """grain: a `RampupMapDataset` over a shuffled `MapDataset`, NumPy train step."""
    from rampup.adapters.grain import RampupMapDataset

    dataset = RampupMapDataset(grain_source(), schedule, process_index=0, process_count=1)
    it = grain_iterator(dataset, state)
    return Pipeline(it, numpy_step(), lambda _: it.get_state(), close=it.close)


def build_jax(schedule: Schedule, state: dict[str, Any] | None) -> Pipeline:
    """JAX: grain source, global batches sharded over every local device, a jitted step."""
    import jax
    import jax.numpy as jnp

    from rampup.adapters.grain import RampupMapDataset
    from rampup.adapters.jax import check_schedule, device_batches, process_layout

    mesh = jax.sharding.Mesh(jax.local_devices(), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    check_schedule(schedule, sharding)  # every segment, before the first step
    index, count = process_layout(sharding)
    dataset = RampupMapDataset(grain_source(), schedule, process_index=index, process_count=count)
    batches = device_batches(grain_iterator(dataset, state), sharding, prefetch=2)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    w = jax.device_put(jnp.zeros((SEQUENCE_LENGTH, SEQUENCE_LENGTH), jnp.float32), replicated)

    @jax.jit
    def update(w: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x = batch["tokens"].astype(jnp.float32) / 1000
        y = batch["targets"].astype(jnp.float32) / 1000
        err = x @ w - y
        return w - 0.1 * x.T @ err / x.shape[0], jnp.mean(err**2)

    def step(batch: dict[str, jax.Array]) -> float:
        nonlocal w
        w, loss = update(w, batch)
        return float(loss)

    platform = jax.local_devices()[0].platform
    simulated = " (simulated)" if platform == "cpu" and len(jax.local_devices()) > 1 else ""
    compiles = cast(Any, update)._cache_size  # jax's count of compiled shapes
    return Pipeline(
        batches,
        step,
        lambda _: batches.get_state(),
        compiles=compiles,
        devices=f"{len(jax.local_devices())} {platform} devices{simulated}",
        close=batches.close,
    )


def build_torch(schedule: Schedule, state: dict[str, Any] | None) -> Pipeline:
    """PyTorch: `RampupIterableDataset` in a `DataLoader` with 2 workers, torch train step."""
    import torch
    from torch.utils.data import DataLoader

    from rampup.adapters.torch import RampupIterableDataset

    dataset = RampupIterableDataset(SyntheticDataset(), schedule, shuffle=True, seed=SEED)
    if state is not None:
        dataset.load_state_dict(state)
    model = torch.nn.Linear(SEQUENCE_LENGTH, SEQUENCE_LENGTH, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(batch: dict[str, Any]) -> float:
        loss = torch.nn.functional.mse_loss(
            model(batch["tokens"].float() / 1000), batch["targets"].float() / 1000
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def get_state(step: int) -> dict[str, Any]:
        # The training loop's step is the whole data state of a map-style source.
        batches = cast(RampupBatches, dataset.batches)  # not None: the source is map-style
        return batches.iter_from(step).get_state()

    # Only this generator holds the loader's iterator: closing it stops the workers.
    stream = (batch for batch in DataLoader(dataset, batch_size=None, num_workers=2))
    return Pipeline(stream, step, get_state, devices="2 DataLoader workers", close=stream.close)


def build_tf(schedule: Schedule, state: dict[str, Any] | None) -> Pipeline:
    """tf.data: `to_tf_dataset` over the core, prefetched, a `tf.function` train step."""
    import tensorflow as tf

    from rampup.adapters.tf import to_tf_dataset

    batches = RampupBatches(SyntheticDataset(), schedule, shuffle_seed=SEED)
    # A state restores the version, the schedule's fingerprint and the data position.
    iterator = batches.iter_from(state if state is not None else 0)
    dataset = to_tf_dataset(iterator).prefetch(tf.data.AUTOTUNE)
    w = tf.Variable(tf.zeros((SEQUENCE_LENGTH, SEQUENCE_LENGTH)))

    @tf.function
    def update(batch: dict[str, tf.Tensor]) -> tf.Tensor:
        x = tf.cast(batch["tokens"], tf.float32) / 1000
        y = tf.cast(batch["targets"], tf.float32) / 1000
        err = x @ w - y
        w.assign_sub(0.1 * tf.transpose(x) @ err / tf.cast(tf.shape(x)[0], tf.float32))
        return tf.reduce_mean(err**2)

    return Pipeline(
        iter(dataset),
        lambda batch: float(update(batch)),
        lambda step: batches.iter_from(step).get_state(),
        compiles=update.experimental_get_tracing_count,
        devices="the host (tf.data)",
    )


BUILDERS: dict[str, Callable[[Schedule, dict[str, Any] | None], Pipeline]] = {
    "jax": build_jax,
    "grain": build_grain,
    "torch": build_torch,
    "tf": build_tf,
    "numpy": build_numpy,
}


def run(backend: str, steps: int, schedule: Schedule, out: Any = sys.stdout) -> dict[str, Any]:
    """Trains `steps` steps, saves the data state halfway, rebuilds, checks the continuation.

    Returns:
      A summary: steps, samples, tokens, distinct sizes, compiles, resume outcome.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    plan = Plan(schedule)
    half = steps // 2
    print(f"rampup demo [{backend}]: the batch-size schedule over {steps} steps", file=out)
    print(plan.table(steps=steps, max_rows=12), file=out, flush=True)
    pipeline = BUILDERS[backend](schedule, None)
    bar = tqdm(total=steps, file=out, desc=f"rampup demo [{backend}]") if tqdm else None
    saved, first_run, samples, loss = None, [], 0, float("nan")
    for step in range(steps):
        if step == half:
            saved = json.loads(json.dumps(pipeline.get_state(step)))
        batch = next(pipeline.batches)
        size = len(batch["tokens"])
        if size != plan.size(step):
            raise RuntimeError(f"step {step}: got {size} samples, schedule says {plan.size(step)}")
        loss = pipeline.train_step(batch)
        samples += size
        if step >= half:
            first_run.append(digest(batch))
        info = {
            "step": step,
            "batch": size,
            "samples": samples,
            "tokens": samples * SEQUENCE_LENGTH,
            "compiles": pipeline.compiles(),
            "loss": f"{loss:.4f}",
        }
        if bar:
            bar.set_postfix(info, refresh=False)
            bar.update()
        elif step % 10 == 0 or step == steps - 1:
            print(" ".join(f"{k}={v}" for k, v in info.items()), file=out)
    if bar:
        bar.close()
    compiles = pipeline.compiles()
    pipeline.close()
    resumed = BUILDERS[backend](schedule, saved)
    second_run = [digest(next(resumed.batches)) for _ in range(steps - half)]
    resumed.close()
    identical = second_run == first_run
    summary = {
        "backend": backend,
        "devices": pipeline.devices,
        "steps": steps,
        "samples": samples,
        "tokens": samples * SEQUENCE_LENGTH,
        "distinct_sizes": len(plan.distinct_sizes(steps)),
        "compiles": compiles,
        "resume_step": half,
        "resume_identical": identical,
        "final_loss": loss,
    }
    print(
        f"backend {backend} on {pipeline.devices}: {steps} steps, {samples:,} samples, "
        f"{samples * SEQUENCE_LENGTH:,} tokens; {summary['distinct_sizes']} distinct batch "
        f"size{'s' * (summary['distinct_sizes'] != 1)}, {compiles} compilation"
        f"{'s' * (compiles != 1)}",
        file=out,
    )
    print(f"resume: state saved at step {half} as JSON {json.dumps(saved)}", file=out)
    print(
        f"resume: rebuilt pipeline continues "
        f"{'IDENTICALLY' if identical else 'DIFFERENTLY'} over steps {half}..{steps - 1}",
        file=out,
    )
    return summary


def main(backend: str | None, steps: int, spec: dict[str, Any] | None) -> int:
    """Runs the demo on `backend` (default jax, falling back to the NumPy core)."""
    schedule = from_config(spec or DEFAULT_SCHEDULE)
    chosen = backend or "jax"
    if (
        chosen == "jax"
        and "jax" not in sys.modules
        and "device_count" not in os.environ.get("XLA_FLAGS", "")
    ):
        # A CPU-only machine has one device; simulate 8 so that the sharding shows.
        # Accelerators are unaffected: the flag applies to the host platform only.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
        ).strip()
    steps = check_count(steps, "--steps", 2)
    missing = [m for m in _NEEDS[chosen] if importlib.util.find_spec(m) is None]
    if missing:
        if backend is not None:
            extra = "demo" if chosen == "jax" else chosen  # the jax backend reads through grain
            raise ValueError(
                f"backend {chosen!r} needs {', '.join(missing)}, which is not "
                f"installed: {install_hint(extra)}"
            )
        print(
            f"rampup demo: {', '.join(missing)} not installed, running on the NumPy core "
            f"instead; for the JAX demo: {install_hint('demo')}",
            file=sys.stderr,
        )
        chosen = "numpy"
    summary = run(chosen, steps, schedule)
    return 0 if summary["resume_identical"] else 1
