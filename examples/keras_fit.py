"""Keras `fit` on a tf.data pipeline whose batch size ramps up, built in tf.data itself.

Run: python examples/keras_fit.py --steps 12
A metric records the size of each batch the model trained on; a callback prints it.
"""

import argparse

import keras
import numpy as np
import tensorflow as tf

import rampup
from rampup.adapters.tf import ScaledLearningRate, rampup_batch


class BatchSize(keras.metrics.Metric):
    """The number of rows of the last batch, as the train step saw it."""

    def __init__(self) -> None:
        super().__init__(name="batch_size")
        self.size = self.add_weight(name="size", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        self.size.assign(keras.ops.cast(keras.ops.shape(y_true)[0], "float32"))

    def result(self):
        return self.size


class PrintStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        print(f"step {batch} batch {int(logs['batch_size'])} loss {logs['loss']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 8)).astype(np.float32)
    y = x @ np.linspace(-1.0, 1.0, 8, dtype=np.float32)
    samples = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(4096, seed=0).repeat()
    schedule = rampup.piecewise({0: 16, 4: 32, 8: 64})
    dataset = rampup_batch(samples, schedule).prefetch(tf.data.AUTOTUNE)

    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(32, "tanh"), keras.layers.Dense(1)]
    )
    optimizer = keras.optimizers.Adam(ScaledLearningRate(1e-2, schedule))  # x sqrt(B(k) / 64)
    model.compile(optimizer=optimizer, loss="mse", metrics=[BatchSize()])
    model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[PrintStep()])


if __name__ == "__main__":
    main()
