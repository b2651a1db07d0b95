"""Tiny configs for any Hugging Face causal-LM model_type, built generically from its config class.

Every size-like field the config class knows (directly or through its `attribute_map`) is shrunk
to one shared small value; fields a config derives from others (layer_types, ...) are left to its
own constructor. Per-type overrides only where the generic shrink gives an invalid model.
"""

from __future__ import annotations

VOCAB = 384
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=64,
    max_position_embeddings=64,
    # mixture of experts
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    moe_num_experts=4,
    num_experts_per_tok=2,
    moe_k=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
    n_shared_experts=1,
    num_shared_experts=1,
    n_group=1,
    topk_group=1,
    qk_head_dim=8,
    first_k_dense_replace=1,
    moe_layer_start_index=1,
    # multi-head latent attention
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=4,
    qk_nope_head_dim=4,
    v_head_dim=8,
    # state-space and recurrent parts
    state_size=4,
    mamba_d_state=4,
    mamba_n_heads=4,
    mamba_d_head=16,
    mamba_expand=2,
    time_step_rank=4,
    lru_width=32,
    attention_window_size=16,
    # sliding-window attention engaged within the test's 10 tokens
    sliding_window=4,
    window_size=4,
    # misc widths
    rotary_dim=4,
    partial_rotary_factor=0.5,
    ffn_dim=64,
    word_embed_proj_dim=32,
    n_inner=64,
    # logit post-processing, small enough that soft-capping bends the tiny model's logits
    final_logit_softcapping=2.0,
    logits_soft_cap=2.0,
    logit_scale=0.5,
    logits_scaling=4.0,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
MLA = dict(num_key_value_heads=4, head_dim=4, qk_rope_head_dim=4)  # latent attention: one key/value head per head
OVERRIDES = {  # where the generic shrink gives an invalid model
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], num_dense_layers=1),  # refused, but builds
    **{t: MLA for t in ("deepseek_v2", "deepseek_v3", "glm4_moe_lite", "glm_moe_dsa", "sarvam_mla", "youtu")},
}


def tiny_config(model_type: str, **overrides):
    """A tiny config of `model_type`: every TINY field its config class knows, then the type's overrides."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    names = set(cls().to_dict()) | set(getattr(cls, "attribute_map", {}))
    kwargs = {k: v for k, v in TINY.items() if k in names}
    kwargs.update(OVERRIDES.get(model_type, {}))
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)
