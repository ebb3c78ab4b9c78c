"""rampup: batch-size ramp-up for ML data pipelines.

The core imports NumPy and the standard library only; the framework adapters
live in `rampup.adapters` and import their framework themselves.
"""

from rampup.adaptive import AdaptiveSchedule, Decision, Follower, GrowthPolicy, follow
from rampup.batching import (
    STATE_VERSION,
    BatchIterator,
    RampupBatches,
    StreamBatcher,
)
from rampup.branching import Branch, branches, critical_batch_size
from rampup.collate import default_collate
from rampup.noise import NoiseScale
from rampup.plan import Plan, Segment
from rampup.scaling import scaled
from rampup.schedules import (
    Schedule,
    constant,
    from_config,
    from_curve,
    from_fn,
    from_megatron,
    linear,
    piecewise,
    stepwise,
)

__version__ = "0.1.0"  # the one version source: pyproject.toml reads it

__all__ = [
    "AdaptiveSchedule",
    "Decision",
    "Follower",
    "GrowthPolicy",
    "STATE_VERSION",
    "BatchIterator",
    "Branch",
    "NoiseScale",
    "Plan",
    "RampupBatches",
    "Schedule",
    "Segment",
    "StreamBatcher",
    "branches",
    "constant",
    "critical_batch_size",
    "default_collate",
    "follow",
    "from_config",
    "from_curve",
    "from_fn",
    "from_megatron",
    "linear",
    "piecewise",
    "scaled",
    "stepwise",
]
