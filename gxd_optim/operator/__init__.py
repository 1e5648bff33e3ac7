"""The reset operator: pure in-place tensor functions (`tensors`) and the plan of one
layer's reset that composes them (`plan`)."""

from .plan import ConsumerFold, ResetPlan, apply_reset_, unit_indices
from .tensors import (
    PARAMETER_KEYS,
    SECOND_MOMENT_KEYS,
    STATE_POLICIES,
    clear_state_slices_,
    copy_units_,
    fold_and_zero_inputs_,
    input_blocks,
    reinit_units_,
    reset_norm_entries_,
    unit_columns,
)

__all__ = [
    "PARAMETER_KEYS",
    "SECOND_MOMENT_KEYS",
    "STATE_POLICIES",
    "ConsumerFold",
    "ResetPlan",
    "apply_reset_",
    "clear_state_slices_",
    "copy_units_",
    "fold_and_zero_inputs_",
    "input_blocks",
    "reinit_units_",
    "reset_norm_entries_",
    "unit_columns",
    "unit_indices",
]
