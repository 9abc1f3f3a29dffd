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

from fedkey.device_sim.config import PopulationConfig
from fedkey.models.model_config import ModelConfig
from fedkey.privacy.config import CentralDpConfig
from fedkey.protocol.pipeline_config import PipelineConfig
from fedkey.server.sampling import over_selected


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
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning rate over the run: constant, or cosine decay to 0 at the last step"
    )
    clip_norm: float = Field(1.0, gt=0, description="global gradient-norm clip")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on input embeddings and projected outputs (0 = none)")
    eval_every: int = Field(500, ge=1, description="steps between evaluations on a held-out sample")
    eval_users: int = Field(60, ge=1, description="held-out users in the periodic evaluation sample")
    threads: int = Field(2, ge=1, description="torch intra-op threads")
    device: Literal["cpu", "cuda"] = Field("cpu", description="where training and evaluation run (cuda needs a GPU)")
    seed: int = Field(0, description="initialisation and shuffling seed")


class EvalConfig(_Strict):
    """Keyboard metrics settings."""

    beam: int = Field(6, ge=1, description="beam width when assembling whole words from pieces")
    max_word_pieces: int = Field(4, ge=1, description="longest word (in pieces) the beam assembles")
    max_positions: int = Field(0, ge=0, description="cap on evaluated word positions (0 = all)")


class ServerOptimizerConfig(_Strict):
    """How the aggregated client delta moves the global model (Reddi et al. 2021, "Adaptive Federated
    Optimization"). fedavg with lr = 1 is plain federated averaging. Default fedavgm (momentum 0.9):
    on chitchat with the small model it reached a local loss of 7.5 after 8 rounds of 30 phones where
    fedavg stayed at 8.4 and fedadam (lr 0.01) at 8.9 (measured here, local_lr 1, clip 5)."""

    name: Literal["fedavg", "fedavgm", "fedadam", "fedyogi"] = Field(
        "fedavgm", description="server optimizer: fedavg | fedavgm (server momentum) | fedadam | fedyogi"
    )
    lr: float = Field(1.0, gt=0, description="server learning rate (fedadam/fedyogi want ~0.01-0.1)")
    momentum: float = Field(0.9, ge=0, lt=1, description="fedavgm: server momentum")
    beta1: float = Field(0.9, ge=0, lt=1, description="fedadam/fedyogi: first-moment decay")
    beta2: float = Field(0.99, ge=0, lt=1, description="fedadam/fedyogi: second-moment decay")
    tau: float = Field(1e-3, gt=0, description="fedadam/fedyogi: adaptivity (epsilon); v starts at tau^2")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="server learning rate over the rounds: constant, or half a cosine from lr down toward 0 "
        "at the last of simulate.rounds (fedadam/fedyogi's normalised step does not shrink with the phones' "
        "deltas, so annealing them needs this)",
    )
    warmup_rounds: int = Field(
        0,
        ge=0,
        description="server learning rate rises linearly over the first warmup_rounds rounds (round r gets "
        "r / warmup_rounds of it, times the schedule's factor); 0 = none. Small cohorts' first rounds "
        "average few, large deltas that server momentum can amplify into divergence",
    )


class SimulateConfig(_Strict):
    """`fedkey simulate`: federated rounds over a simulated phone fleet (Flower ServerApp + phone hosts)."""

    rounds: int = Field(50, ge=1, description="federated rounds to run")
    cohort_size: int = Field(
        100,
        ge=1,
        description="goal count: reports a round waits for (uniform sampling closes the round "
        "at this many reports); also the fixed denominator of central DP",
    )
    over_selection: float = Field(
        1.3,
        ge=1,
        description="uniform sampling selects ceil(cohort_size * over_selection) phones "
        "(Bonawitz et al. 2019: 130%) because some drop out or straggle",
    )
    sampling: Literal["uniform", "poisson"] = Field(
        "uniform",
        description="uniform: a fixed number among the eligible phones; poisson: each eligible "
        "phone independently with probability poisson_rate (for DP amplification)",
    )
    poisson_rate: float | None = Field(
        None, gt=0, le=1, description="poisson sampling: each eligible phone's probability of selection"
    )
    deadline_s: float = Field(
        300.0, gt=0, description="simulated seconds a round waits for reports; later phones are stragglers"
    )
    min_reports: int = Field(
        1, ge=1, description="a round with fewer accepted reports leaves the model unchanged (no central DP)"
    )
    local_epochs: float = Field(1.0, gt=0, description="passes over its data each phone makes (when local_steps = 0)")
    local_steps: int = Field(0, ge=0, description="SGD steps per phone per round; 0 = set by local_epochs")
    local_batch_size: int = Field(16, ge=1, description="sequences per local SGD step")
    local_lr: float = Field(1.0, gt=0, description="phones' SGD learning rate")
    local_lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="phones' learning rate over the rounds: constant, or half a cosine from local_lr down "
        "toward 0 at the last of simulate.rounds (constant-rate SGD stalls at its noise floor)",
    )
    local_grad_clip: float = Field(5.0, ge=0, description="global L2 clip of each local gradient (0 = none)")
    local_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="dropout on input embeddings and projected outputs in the phones' local training, as "
        "central.dropout (torch engine only: the exported phone graphs train without dropout)",
    )
    local_delta_clip: float = Field(
        0.0, ge=0, description="L2 clip of the phone's delta before the update pipeline (0 = none)"
    )
    max_messages_per_phone: int = Field(
        64, ge=0, description="a phone trains on at most N of its user's messages a round (0 = all): bounds local work"
    )
    message_selection: Literal["sample", "first"] = Field(
        "sample",
        description="which messages a phone with more than max_messages_per_phone trains on: sample = a "
        "fresh seeded sample each round (a phone's training cache holds new text each day); first = always "
        "its first ones (repeats the same text every time it is selected, and over-fits it)",
    )
    update_weight: Literal["trained", "cached"] = Field(
        "trained",
        description="weight of a phone's update in the average: trained = the training windows it "
        "trained on this round; cached = all the windows its text cache holds (FedAvg's n_k of the whole "
        "local dataset: with max_messages_per_phone capping a heavy user's work, each user still counts "
        "in proportion to their text, as pooled training and position-weighted recall count it)",
    )
    seq_len: int = Field(20, ge=4, description="local training sequence length in pieces (longer messages split)")
    local_engine: Literal["torch", "onnx"] = Field(
        "torch",
        description="torch: device_sim.batched_training (fused softmax loss, hand-written recurrence "
        "backward); onnx: local_update.onnx phone by phone, as the phone runs it",
    )
    phone_group: int = Field(
        1,
        ge=0,
        description="torch engine: phones stacked into one batched computation (0 = as many as fit a "
        "192 MB working set; 1 = one phone at a time, the fastest measured on this 2-core CPU)",
    )
    phone_hosts: int = Field(
        2, ge=1, description="Flower virtual SuperNodes (ClientApp instances), each running many phones"
    )
    phones_per_message: int = Field(
        50,
        ge=1,
        description="most phones one server message lists: a round's reporting phones go out in parts of at "
        "most this many (at least one part per phone host) and each reply is decoded as it comes, so the "
        "server and every host hold a few parts' updates at a time, not the cohort's",
    )
    threads: int = Field(
        1, ge=1, description="torch / ONNX Runtime threads per phone host (training, evaluation) and bundle export"
    )
    optimizer: ServerOptimizerConfig = Field(default_factory=ServerOptimizerConfig, description="server optimizer")
    eval_every: int = Field(5, ge=0, description="rounds between held-out sample evaluations (0 = only the last round)")
    eval_users: int = Field(60, ge=1, description="held-out users in the periodic evaluation sample")
    eval_positions: int = Field(1000, ge=0, description="word positions in the periodic evaluation (0 = all)")
    checkpoint_every: int = Field(1, ge=1, description="rounds between checkpoints (always after the last)")
    export_bundle: bool = Field(True, description="write RUN/bundle (ONNX artifacts) of the final model")
    seed: int = Field(0, ge=0, description="seed of everything: model init, population, sampling, phones, noise")
    start_time_utc_s: float = Field(
        0.0, ge=0, description="simulated UTC time (seconds) at round 1; availability follows the clock"
    )
    round_interval_s: float = Field(
        0.0,
        ge=0,
        description="pace steering: simulated seconds from one round's start to the next (a longer round "
        "starts the next when it closes); 0 = back to back. A run should span the day so that every "
        "time zone's phones become eligible",
    )
    host_timeout_s: float = Field(
        3600.0, gt=0, description="wall seconds the server waits for the phone hosts' replies in a round"
    )
    ray_address: str = Field(
        "", description="Ray cluster to attach to ('auto' or HOST:PORT); empty = start Ray in-process"
    )

    @model_validator(mode="after")
    def _poisson_rate(self) -> SimulateConfig:
        if self.sampling == "poisson" and self.poisson_rate is None:
            raise ValueError("simulate.sampling = 'poisson' needs simulate.poisson_rate")
        return self


def default_pipeline() -> PipelineConfig:
    """Compression on, local DP off: a randomized Hadamard rotation in blocks of 1024 then 4-bit stochastic
    quantization of every coordinate, 7.8× fewer bytes than float32 deltas. Unbiased, unlike a top-k cut:
    over 880 rounds of 25 phones it reached 90.4% of the central recall@1 against 89.3% for top-25% +
    8-bit (the default until 2026-12-06, 7.9×) and 92.2% dense, and its model did not drift away from the
    dense one (bench/fed_quality.py, bench/weight_drift.py, docs/results.md)."""
    return PipelineConfig.model_validate([{"kind": "rotate", "block": 1024}, {"kind": "quantize", "bits": 4}])


class FedkeyConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    central: CentralConfig = Field(default_factory=CentralConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig, description="federated simulation")
    population: PopulationConfig = Field(
        default_factory=PopulationConfig, description="simulated phone fleet (device_sim)"
    )
    pipeline: PipelineConfig = Field(
        default_factory=default_pipeline, description="update pipeline stages, phone order ([[pipeline]])"
    )
    central_dp: CentralDpConfig | None = Field(
        None, description="central DP-FedAvg (off when absent); sampling fields default to the simulate section"
    )

    @model_validator(mode="before")
    @classmethod
    def _complete_central_dp(cls, data: Any) -> Any:
        """Fill central_dp's sampling fields from the simulate / population sections where absent."""
        if not isinstance(data, dict) or not isinstance(data.get("central_dp"), dict):
            return data
        sim = SimulateConfig.model_validate(data.get("simulate", {}))
        size = PopulationConfig.model_validate(data.get("population", {})).size
        dp = dict(data["central_dp"])
        dp.setdefault("sampling", "poisson" if sim.sampling == "poisson" else "fixed")
        dp.setdefault("rounds", sim.rounds)
        if dp["sampling"] == "poisson":
            dp.setdefault("sampling_rate", sim.poisson_rate)
        else:
            dp.setdefault("cohort_size", over_selected(sim.cohort_size, sim.over_selection))
            dp.setdefault("accountant", "rdp")
            if size is None and "population" not in dp:
                raise ValueError(
                    "central_dp with uniform (fixed-size) sampling needs population.size: the N of m-of-N "
                    "sampling must be stated (or use simulate.sampling = 'poisson')"
                )
            dp.setdefault("population", size)
        return {**data, "central_dp": dp}

    @model_validator(mode="after")
    def _model_preset_known(self) -> FedkeyConfig:
        self.model.resolved()  # raises on an unknown preset
        return self

    @model_validator(mode="after")
    def _central_dp_matches_simulate(self) -> FedkeyConfig:
        dp, sim = self.central_dp, self.simulate
        if dp is None:
            return self
        if (dp.sampling == "poisson") != (sim.sampling == "poisson"):
            raise ValueError(f"central_dp.sampling = {dp.sampling!r} but simulate.sampling = {sim.sampling!r}")
        if dp.sampling == "poisson" and dp.sampling_rate != sim.poisson_rate:
            raise ValueError(
                f"central_dp.sampling_rate = {dp.sampling_rate} but simulate.poisson_rate = {sim.poisson_rate}"
            )
        selected = over_selected(sim.cohort_size, sim.over_selection)
        if dp.sampling == "fixed" and dp.cohort_size != selected:
            raise ValueError(
                f"central_dp.cohort_size = {dp.cohort_size} but the simulation selects {selected} phones "
                "(simulate.cohort_size * over_selection)"
            )
        if dp.sampling == "fixed" and self.population.size is not None and dp.population != self.population.size:
            raise ValueError(f"central_dp.population = {dp.population} but population.size = {self.population.size}")
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


def load_for_resume(path: Path, overrides: list[str] | None = None) -> FedkeyConfig:
    """A run folder's effective ``config.toml`` (+ overrides) to continue that run.

    The file holds every setting the run used. One that lacks a setting fedkey has now was written
    before the setting existed: resuming would give it today's default silently and change the run's
    course midway, so that is refused unless the overrides set it."""
    config = load_config(path, overrides)
    written = set(dotted_items(tomllib.loads(path.read_text(encoding="utf-8"))))
    given = set().union(*(dotted_items(parse_override(item)) for item in overrides or []))
    missing = sorted(set(dotted_items(config.model_dump(mode="json", exclude_none=True))) - written - given)
    if missing:
        raise ConfigError(
            f"cannot resume from {path}: it was written before these settings existed, and today's defaults "
            f"would apply to the rest of the run silently: {', '.join(missing)}. Give the values that run "
            "used (--set KEY=VALUE), or start a new run folder"
        )
    return config


def load_run_config(out: Path, config_file: str | Path | None, resume: bool, overrides: list[str]) -> FedkeyConfig:
    """The config of a run into folder ``out``: ``config_file`` (or the defaults) + overrides; resuming
    without a config file, the run folder's own ``config.toml`` (:func:`load_for_resume`)."""
    if config_file is None and resume and (out / "config.toml").is_file():
        return load_for_resume(out / "config.toml", overrides)
    return load_config(config_file, overrides)


def dotted_items(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested settings tree as ``{"section.key": value}`` (lists, such as the pipeline, stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat |= dotted_items(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return flat


def to_toml(config: BaseModel) -> str:
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
