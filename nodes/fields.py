"""Widget order of the Advanced node. No imports: scripts/build_workflows.py loads this file by
path (the nodes package imports ComfyUI), so the order lives in one place."""

# The Advanced node's widgets, in order. Workflows store widget values by position, so a new
# config field goes at the END of this list (tests/test_nodes.py pins the order and checks that
# every config field is here).
ADVANCED_FIELDS = (
    "concepts", "retain_prompts", "retain_weight", "method", "objective", "target_from",
    "esd_eta", "loss", "js_temperature", "js_axis", "cw_mode", "cw_directions", "cw_bandwidth",
    "selection", "parametrization", "lora_rank", "lora_alpha", "steps", "lr", "weight_decay",
    "grad_clip", "ema_decay", "result", "guidance", "sampling_steps", "batch_size",
    "trajectory_reuse", "timestep_weighting", "resolution", "uce_lambda", "uce_erase_scale",
    "uce_preserve_scale", "uce_guide", "uce_token", "seed", "gradient_checkpointing",
    "contexts", "trajectory_from",
    "robust", "robust_every", "robust_inner_steps", "robust_tokens", "robust_weight",
)
