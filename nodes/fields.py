"""Widget order of the Advanced node, in one place: ``nodes/erase.py`` builds the node's inputs in
this order and ``scripts/build_workflows.py`` writes the example workflows' widget values in it."""

# The Advanced node's widgets, in order. Saved workflows store widget values by position, so a new
# config field goes at the END of this list and nothing here moves. tests/test_nodes_offline.py
# reads the committed example workflows by this order (each value must fit its field), and
# nodes/erase.py warns about a config field that is missing here.
ADVANCED_FIELDS = (
    "concepts", "retain_prompts", "retain_weight", "method", "objective", "target_from",
    "esd_eta", "loss", "js_temperature", "js_axis", "cw_mode", "cw_directions", "cw_bandwidth",
    "selection", "parametrization", "lora_rank", "lora_alpha", "steps", "lr", "weight_decay",
    "grad_clip", "ema_decay", "result", "guidance", "sampling_steps", "batch_size",
    "trajectory_reuse", "timestep_weighting", "resolution", "uce_lambda", "uce_erase_scale",
    "uce_preserve_scale", "uce_guide", "uce_token", "seed", "gradient_checkpointing",
    "contexts", "trajectory_from",
    "robust", "robust_every", "robust_inner_steps", "robust_tokens", "robust_weight",
    "trajectories_per_step",
    "check_every", "stop_patience",
    "judge_every", "judge_images", "judge_patience", "judge_threshold",
)
