"""Find the units: which Linear/Conv layers produce them and which layers read them.

Discovery records the autograd graph of one training pass and walks it upwards from every
producer's output. The walk may pass through per-unit operations (activations, dropout,
BatchNorm, pooling, casts, flatten/view); it stops at the first Linear/Conv that reads the
tensor as its input (a *consumer*). Anything that mixes units (a residual add, a
concatenation, LayerNorm, attention, a permutation) or hands them to the model's output makes
the producer ineligible, with the reason recorded; so does anything the reset must not write
(`Checks`): an excluded, frozen or shared layer, a BatchNorm shared by two producers.

The pass is either a replay of the model's ``forward`` on one batch (`discover`) or the
user's own training pass, recorded as it runs until its backward (`PassRecorder`): the second
serves models trained through another method than ``forward`` (a policy's
``evaluate_actions``, a LightningModule's ``training_step`` that calls a submodule).
"""

from .checks import Checks, explicit_layers
from .graph import analyse, discover
from .layers import (
    NOT_CALLED,
    OUTPUT,
    PADDED,
    PRODUCER_TYPES,
    Edge,
    LayerInfo,
    canonical,
    dense_inputs,
    edge_for,
    in_features,
    is_layer,
    is_transposed,
    layer_params,
    layer_tensors,
    num_units,
    producer_modules,
    requested_reference,
    unwrap_model,
    weight_problem,
)
from .trace import PassRecorder, Trace, is_replaying, replaying

__all__ = [
    "NOT_CALLED",
    "OUTPUT",
    "PADDED",
    "PRODUCER_TYPES",
    "Checks",
    "Edge",
    "LayerInfo",
    "PassRecorder",
    "Trace",
    "analyse",
    "canonical",
    "dense_inputs",
    "discover",
    "edge_for",
    "explicit_layers",
    "in_features",
    "is_layer",
    "is_replaying",
    "is_transposed",
    "layer_params",
    "layer_tensors",
    "num_units",
    "producer_modules",
    "replaying",
    "requested_reference",
    "unwrap_model",
    "weight_problem",
]
