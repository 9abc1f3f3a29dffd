"""Configuration: validated TOML (pydantic), with defaults embedded so every command works without a file.

The effective configuration is: the defaults embedded below <- the user's TOML file <- command-line
`section.key=value` overrides. `fedkey config show` prints it.
Unknown keys, wrong types and impossible values are refused with the path of the offending key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedkey.models.cifg_lstm import ModelConfig


class ConfigError(ValueError):
    """A configuration file or override is malformed; the message names the key and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Which corpus becomes per-user federated data, and how it is cleaned, capped and split."""

    corpus: str = Field("chitchat", description="chitchat | shakespeare | jsonl:PATH (one {user, text[, ts]} per line)")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="fraction of users held out for evaluation")
    personal_fraction: float = Field(
        0.2, ge=0, lt=1, description="last fraction of each training user's messages kept for personal evaluation"
    )
    min_messages: int = Field(2, ge=1, description="users with fewer messages (after cleaning) are dropped")
    max_messages_per_user: int = Field(
        1000, ge=1, description="cap per user (earliest messages kept): the top chitchat users would dominate"
    )
    max_words_per_message: int = Field(64, ge=1, description="longer messages are truncated")
    lexicon_size: int = Field(10_000, ge=10, description="suggestible words (most frequent in training users)")
    seed: int = Field(0, description="seed of the train/test user split")


class TokenizerConfig(_Strict):
    """SentencePiece settings. Training on a public corpus keeps users' text out of the vocabulary."""

    vocab_size: int = Field(8192, ge=32, description="number of pieces (upper bound on small corpora)")
    model_type: Literal["unigram", "bpe"] = Field("unigram", description="SentencePiece algorithm")
    source: str = Field(
        "train", description="'train' = the training users' text; or a public corpus name (e.g. shakespeare)"
    )


class CentralConfig(_Strict):
    """Centralised (server-trained) baseline: all training users' text pooled."""

    epochs: float = Field(4.0, gt=0, description="passes over the pooled training text")
    max_minutes: float = Field(0.0, ge=0, description="stop after this many minutes (0 = no limit)")
    batch_size: int = Field(128, ge=1, description="sequences per step")
    seq_len: int = Field(32, ge=4, description="training sequence length in pieces (longer messages are split)")
    lr: float = Field(2e-3, gt=0, description="Adam learning rate")
    clip_norm: float = Field(1.0, gt=0, description="global gradient-norm clip")
    eval_every: int = Field(500, ge=1, description="steps between evaluations on a held-out sample")
    eval_users: int = Field(60, ge=1, description="held-out users in the periodic evaluation sample")
    threads: int = Field(2, ge=1, description="torch intra-op threads")
    seed: int = Field(0, description="initialisation and shuffling seed")


class EvalConfig(_Strict):
    """Keyboard metrics settings."""

    beam: int = Field(6, ge=1, description="beam width when assembling whole words from pieces")
    max_word_pieces: int = Field(4, ge=1, description="longest word (in pieces) the beam assembles")
    max_positions: int = Field(0, ge=0, description="cap on evaluated word positions (0 = all)")


class FedkeyConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    central: CentralConfig = Field(default_factory=CentralConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _model_preset_known(self) -> FedkeyConfig:
        self.model.resolved()  # raises on an unknown preset
        return self


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """`section.key=value` (value parsed as TOML, else a string) -> nested dict."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FedkeyConfig:
    """Defaults <- TOML file <- overrides, validated; raises ConfigError naming the bad key."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    for item in overrides or []:
        raw = _deep_merge(raw, parse_override(item))
    try:
        return FedkeyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def to_toml(config: BaseModel) -> str:
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
