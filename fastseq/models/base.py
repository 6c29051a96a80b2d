"""What every fastseq model shares: a config dataclass, and save/load of config and weights in one file.

A saved model is one torch.save file {"format", "model", "config", "state_dict"}, written to a temporary
file and renamed, so a killed save never leaves a truncated model behind. `fastseq.models.load(path)`
rebuilds whichever model the file holds; `SomeModel.load(path)` also checks that it is that model.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Union

import torch
from torch import Tensor, nn

from .. import atomic
from ..numerics import autocast_dtype
from ..ops.checks import read_values

PRETRAINED_FORMAT = "fastseq-pretrained/1"
FORMAT = "fastseq-model/1"
_MODELS: dict[str, type["Model"]] = {}  # every Model subclass by class name (what a model file names)


def model_class(name: str) -> type["Model"]:
    """The Model subclass called `name`; a ValueError listing the known ones if there is none."""
    if name not in _MODELS:
        raise ValueError(f"no fastseq model is called {name!r} (known: {sorted(_MODELS)})")
    return _MODELS[name]


def check_config(owner: str, config: Any, positive: tuple[str, ...] = (), probabilities: tuple[str, ...] = (),
                 token_ids: tuple[tuple[str, str], ...] = ()) -> None:
    """ValueError naming the field unless: `positive` fields are ints >= 1, `probabilities` lie in [0, 1),
    and each (id field, vocab field) pair is None or an id inside that vocabulary."""
    for name in positive:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    for name in probabilities:
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
            raise ValueError(f"{owner}: {name} must be a probability in [0, 1), got {value!r}")
    for name, vocab in token_ids:
        value, size = getattr(config, name), getattr(config, vocab)
        if value is not None and (not isinstance(value, int) or not 0 <= value < size):
            raise ValueError(f"{owner}: {name} must be a token id in [0, {vocab}={size}), got {value!r}")


def check_tokens(owner: str, name: str, tokens: Tensor, vocab_size: int, ndim: int = 2) -> None:
    """tokens: an integer tensor of `ndim` dims; on the CPU also every id in [0, vocab_size) (on a GPU
    that check would cost a synchronization each call; there the embedding's device assert catches it)."""
    if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.int64, torch.int32) or tokens.dim() != ndim:
        got = f"{tokens.dtype} of shape {tuple(tokens.shape)}" if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"{owner}: {name} must be an int64/int32 tensor of {ndim} dims (batch first), got {got}")
    if (tokens.device.type == "cpu" and tokens.numel() and read_values()
            and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size)):
        raise ValueError(f"{owner}: {name} must hold ids in [0, vocab_size={vocab_size}), got ids in "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")


def lengths_tensor(owner: str, lengths, batch: int, steps: int, device: torch.device) -> Tensor:
    """(B,) int64 lengths on `device`, each in [1, steps]; ValueError otherwise."""
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (batch,) or lengths.dtype.is_floating_point:
        raise ValueError(f"{owner}: lengths must be {batch} ints (one per sequence), got {lengths.dtype} "
                         f"{tuple(lengths.shape)}")
    if lengths.device.type == "cpu" and batch and (int(lengths.min()) < 1 or int(lengths.max()) > steps):
        raise ValueError(f"{owner}: lengths must lie in [1, {steps}], got {lengths.tolist()}")
    return lengths.long()


def compute_dtype(weight: Tensor) -> torch.dtype:
    """The dtype activations take: autocast's on the weight's device when it is on, else the weight's."""
    return autocast_dtype(weight.device) or weight.dtype


def padding_mask(lengths: Tensor, steps: int) -> Tensor:
    """(B, steps) bool, True at the padded positions t >= lengths[b]."""
    return torch.arange(steps, device=lengths.device)[None, :] >= lengths[:, None]


class Model(nn.Module):
    """A model built from its config (a dataclass), saved with it in one file."""

    config_class: ClassVar[type]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _MODELS[cls.__name__] = cls

    def __init__(self, config) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    # settings a model's config gained after models were saved without them: the value that reproduces those
    # models (a default may differ: what new models get)
    LEGACY: dict = {}

    @classmethod
    def saved_config(cls, saved: dict):
        """The config of a saved model from its dict; a setting it predates takes its LEGACY value."""
        return cls.config_class(**{**cls.LEGACY, **saved})

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write config and state_dict to `path` atomically (temporary file in the same folder, then rename)."""
        payload = {"format": FORMAT, "model": type(self).__name__, "config": dataclasses.asdict(self.config),
                   "state_dict": self.state_dict()}
        atomic.torch_save(payload, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location: Union[str, torch.device, None] = "cpu") -> "Model":
        """The model saved at `path`; when called on a subclass, it must be that model."""
        if not os.path.exists(os.fspath(path)):
            raise FileNotFoundError(f"no model file at {os.fspath(path)}")
        try:
            payload = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
        except Exception as e:  # truncated, or not a torch file at all
            raise ValueError(f"{path}: not a readable fastseq model file ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path}: not a fastseq model file (format {FORMAT!r})")
        name = payload["model"]
        if name not in _MODELS:
            raise ValueError(f"{path}: holds a {name!r}, which this fastseq does not know (known: {sorted(_MODELS)})")
        model_cls = _MODELS[name]
        if cls is not Model and not issubclass(model_cls, cls):
            raise ValueError(f"{path}: holds a {name}, not a {cls.__name__}")
        model = model_cls(model_cls.saved_config(payload["config"]))
        model.load_state_dict(payload["state_dict"])
        return model.to(map_location) if map_location is not None else model


    def save_pretrained(self, directory: Union[str, os.PathLike], tokenizer=None) -> None:
        """A folder as Hugging Face lays one out: config.json ({"model", "config"}), model.safetensors (the
        weights; tied ones stored once) and, given a tokenizer, tokenizer.json (a BPE one in the format
        HF `tokenizers` reads itself; a char or word one in fastseq's)."""
        import json

        from safetensors.torch import save_model

        os.makedirs(directory, exist_ok=True)
        atomic.write(os.path.join(directory, "config.json"), lambda f: json.dump(
            {"format": PRETRAINED_FORMAT, "model": type(self).__name__, "config": dataclasses.asdict(self.config)},
            f, indent=1), mode="w")
        temporary = os.path.join(directory, "model.safetensors.tmp")
        save_model(self, temporary)
        os.replace(temporary, os.path.join(directory, "model.safetensors"))
        if tokenizer is not None:
            hf = getattr(tokenizer, "hf", None)
            path = os.path.join(directory, "tokenizer.json")
            if hf is not None:
                atomic.write(path, lambda f: f.write(hf.to_str()), mode="w")
            else:
                tokenizer.save(path)

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike],
                        map_location: Union[str, torch.device, None] = "cpu") -> "Model":
        """The model `save_pretrained` wrote to `directory`; called on a subclass, it must be that model."""
        import json

        from safetensors.torch import load_model

        config_path = os.path.join(directory, "config.json")
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"{directory}: no config.json (not a save_pretrained folder)")
        with open(config_path, encoding="utf-8") as f:
            saved = json.load(f)
        if not isinstance(saved, dict) or saved.get("format") != PRETRAINED_FORMAT:
            raise ValueError(f"{config_path}: not a fastseq model config (format {PRETRAINED_FORMAT!r}); a Hugging "
                             f"Face checkpoint loads through CausalLM.from_hf")
        model_cls = model_class(saved["model"])
        if cls is not Model and not issubclass(model_cls, cls):
            raise ValueError(f"{directory}: holds a {saved['model']}, not a {cls.__name__}")
        model = model_cls(model_cls.saved_config(saved["config"]))
        load_model(model, os.path.join(directory, "model.safetensors"),
                   device=str(map_location) if map_location is not None else "cpu")
        return model


def init_output_bias(model: nn.Module, token_ids: torch.Tensor, smoothing: float = 0.5) -> bool:
    """Start a language model's output bias at the log unigram frequencies of `token_ids` (its training
    stream; add-`smoothing` counts): the bias then holds the word-frequency prior from step 0, which a
    zero bias leaves the hidden units to learn (and with a tied embedding they saturate doing it). Returns
    whether the model has such a bias."""
    output = getattr(model, "output", None)
    bias = getattr(output, "bias", None)
    if bias is None:
        return False
    counts = torch.bincount(token_ids.reshape(-1).long().cpu(), minlength=bias.numel())[:bias.numel()].double()
    log_p = (counts + smoothing).log() - (counts.sum() + smoothing * bias.numel()).log()
    with torch.no_grad():
        bias.copy_(log_p.to(bias.dtype))
    return True


def load(path: Union[str, os.PathLike], map_location: Union[str, torch.device, None] = "cpu") -> Model:
    """Rebuild the fastseq model saved at `path` (any kind)."""
    return Model.load(path, map_location)
