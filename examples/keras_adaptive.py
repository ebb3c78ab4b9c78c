"""An adaptive ramp-up under Keras `fit` (TensorFlow backend).

Run: python examples/keras_adaptive.py --steps 40
A custom `train_step` takes the gradient of the mean loss over the whole batch
and over its first quarter (one more backward pass over the same forward) and
keeps their squared norms; a callback feeds them to `rampup.NoiseScale` and
proposes the estimate to the `AdaptiveSchedule` after every step. The batches
come from `to_tf_dataset(RampupBatches(...))`, which follows every decision.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import rampup  # noqa: E402
from rampup.adapters.tf import to_tf_dataset  # noqa: E402

FEATURES = 16
PARTS = 4  # the small gradient is over the first quarter of the batch


def make_source(n: int = 1 << 15) -> np.ndarray:
    """Rows of features and a noisy linear target: the noise scale grows as the fit improves."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = x @ rng.normal(size=FEATURES).astype(np.float32) + rng.normal(size=n).astype(np.float32)
    return np.concatenate([x, y[:, None]], axis=1)


def squared_norm(grads: list) -> tf.Tensor:
    return tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])


class NoiseNormsModel(keras.Model):
    """A linear model whose train step also measures the two gradient norms."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")
        self.small = tf.Variable(0.0, trainable=False)
        self.big = tf.Variable(0.0, trainable=False)
        self.size = tf.Variable(0, trainable=False)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.dense(x)

    def train_step(self, data: tf.Tensor) -> dict:
        x, y = data[:, :FEATURES], data[:, FEATURES]
        part = tf.shape(x)[0] // PARTS
        with tf.GradientTape(persistent=True) as tape:
            per_sample = 0.5 * tf.square(tf.squeeze(self(x, training=True), -1) - y)
            loss = tf.reduce_mean(per_sample)
            part_loss = tf.reduce_mean(per_sample[:part])
        grads = tape.gradient(loss, self.trainable_variables)
        part_grads = tape.gradient(part_loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.small.assign(squared_norm(part_grads))
        self.big.assign(squared_norm(grads))
        self.size.assign(tf.shape(x)[0])
        return {"loss": loss}


class Propose(keras.callbacks.Callback):
    """After every step: the norms into the estimator, the estimate to the schedule."""

    def __init__(self, schedule: rampup.AdaptiveSchedule, noise: rampup.NoiseScale) -> None:
        super().__init__()
        self.schedule, self.noise = schedule, noise

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        model = self.model
        size = int(model.size.numpy())
        estimate = self.noise.update(
            float(model.small.numpy()), float(model.big.numpy()), size // PARTS, size
        )
        decision = self.schedule.propose(batch, estimate)
        note = f" -> size {decision.size} from step {decision.start}" if decision else ""
        print(
            f"step {batch} size {size} noise_scale {estimate or 0:.1f} "
            f"loss {logs['loss']:.4f}{note}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    # Keras and tf.data pull a few batches ahead of the step; lag 8 covers them, and a
    # pipeline that ran further would raise "not decided yet" instead of guessing.
    schedule = rampup.AdaptiveSchedule(
        16,
        multiple_of=PARTS,
        max_size=1024,
        lag=8,
        policy=rampup.GrowthPolicy(factor=2, patience=4),
    )
    noise = rampup.NoiseScale(beta=0.8)
    dataset = to_tf_dataset(rampup.RampupBatches(make_source(), schedule, shuffle_seed=0))
    model = NoiseNormsModel()
    model.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.5))
    model.fit(
        dataset,
        steps_per_epoch=args.steps,
        epochs=1,
        verbose=0,
        callbacks=[Propose(schedule, noise)],
    )


if __name__ == "__main__":
    main()
