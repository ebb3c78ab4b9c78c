"""The framework adapters: grain, PyTorch, tf.data and JAX, each importing its framework."""
