"""ModelConfig: the one description of a Llama-family decoder, read from an HF config.json dict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tameshi.errors import UnsupportedModelError
from tameshi.loading.awq import AWQConfig

# architectures name -> (model_type, q/k/v carry a bias by default, o_proj carries a bias by default)
_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
_MODEL_TYPES = {v: k for k, v in _ARCHITECTURES.items()}
_ROPE_TYPES = {"default", "linear", "dynamic", "llama3"}


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope: RopeConfig
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    torch_dtype: str | None
    quantization: dict | None = None
    awq: AWQConfig | None = None

    @property
    def context_length(self) -> int:
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> ModelConfig:
        archs = d.get("architectures") or []
        model_type = d.get("model_type")
        arch = next((a for a in archs if a in _ARCHITECTURES), None)
        if arch is None and not archs and model_type in _MODEL_TYPES:
            arch = _MODEL_TYPES[model_type]
        if arch is None:
            named = ", ".join(archs) or f"model_type {model_type!r}"
            raise UnsupportedModelError(
                f"unsupported architecture {named}; tameshi runs {', '.join(_ARCHITECTURES)}"
            )
        model_type = _ARCHITECTURES[arch]
        if d.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"unsupported activation {d['hidden_act']!r}; expected silu")
        try:
            hidden = int(d["hidden_size"])
            n_heads = int(d["num_attention_heads"])
            cfg = cls(
                architecture=arch,
                model_type=model_type,
                vocab_size=int(d["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(d["intermediate_size"]),
                n_layers=int(d["num_hidden_layers"]),
                n_heads=n_heads,
                n_kv_heads=int(d.get("num_key_value_heads") or n_heads),
                head_dim=int(d.get("head_dim") or hidden // n_heads),
                max_position_embeddings=_context_length(d),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                rope=_rope_config(d),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                # Qwen2 has biases on q/k/v only; Llama's attention_bias covers o_proj too.
                qkv_bias=model_type == "qwen2" or bool(d.get("attention_bias", False)),
                o_bias=model_type != "qwen2" and bool(d.get("attention_bias", False)),
                mlp_bias=bool(d.get("mlp_bias", False)),
                torch_dtype=d.get("torch_dtype") or d.get("dtype"),
                quantization=d.get("quantization_config"),
                awq=_awq_config(d.get("quantization_config")),
            )
        except KeyError as e:
            raise UnsupportedModelError(f"config.json lacks the required key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise UnsupportedModelError(f"config.json has a malformed value: {e}") from None
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        sizes = (self.vocab_size, self.hidden_size, self.intermediate_size, self.n_layers, self.n_heads)
        if min(sizes) <= 0 or self.n_kv_heads <= 0 or self.head_dim <= 0:
            raise UnsupportedModelError("config.json has a non-positive size")
        if self.n_heads % self.n_kv_heads:
            raise UnsupportedModelError(
                f"num_attention_heads {self.n_heads} is not a multiple of num_key_value_heads {self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise UnsupportedModelError(f"head_dim {self.head_dim} is odd; RoPE needs an even head size")
        # each named: a 0 context failed later as "no memory left for even one KV block", and a
        # non-positive theta or eps ran and answered nothing
        checks = [
            ("max_position_embeddings", self.max_position_embeddings, self.max_position_embeddings > 0),
            ("rope_theta", self.rope.theta, math.isfinite(self.rope.theta) and self.rope.theta > 0),
            (
                "rope scaling factor",
                self.rope.factor,
                math.isfinite(self.rope.factor) and self.rope.factor > 0,
            ),
            ("rms_norm_eps", self.rms_norm_eps, math.isfinite(self.rms_norm_eps) and self.rms_norm_eps > 0),
        ]
        for name, value, ok in checks:
            if not ok:
                raise UnsupportedModelError(f"config.json has {name} {value!r}; it must be a positive number")


def _awq_config(q: dict | None) -> AWQConfig | None:
    if not q:
        return None
    method = str(q.get("quant_method", "")).lower()
    if method != "awq":
        raise UnsupportedModelError(f"quantization method {method!r} is not supported; tameshi reads AWQ")
    return AWQConfig.from_dict(q)


def _context_length(d: dict) -> int:
    n = int(d.get("max_position_embeddings", 2048))
    # Mistral v0.1 attends within a 4096-token window; past it the outputs would differ from a full
    # attention model, so the honest context is the window.
    window = d.get("sliding_window")
    use_window = d.get("use_sliding_window", d.get("model_type") == "mistral")
    if window and use_window:
        n = min(n, int(window))
    return n


def _rope_config(d: dict) -> RopeConfig:
    # transformers 5 writes `rope_parameters` (theta inside); 4.x writes rope_theta + rope_scaling.
    params = dict(d.get("rope_parameters") or {})
    scaling = d.get("rope_scaling") or {}
    merged = {**scaling, **params}
    theta = float(merged.get("rope_theta", d.get("rope_theta", 10000.0)))
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    if rope_type not in _ROPE_TYPES:
        raise UnsupportedModelError(
            f"unsupported rope scaling {rope_type!r}; tameshi supports {', '.join(sorted(_ROPE_TYPES))}"
        )
    orig = merged.get("original_max_position_embeddings")
    return RopeConfig(
        theta=theta,
        type=rope_type,
        factor=float(merged.get("factor", 1.0)),
        original_max_position_embeddings=int(orig) if orig else None,
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
    )
