"""One call from a torch model to the same model on fastseq's modules, and back.

    model = fastseq.nn.convert(model)            # every nn.LSTM, LSTMCell, MultiheadAttention, Transformer* inside
    model = fastseq.nn.convert(model, modules=("LSTM",))
    model = fastseq.nn.revert(model)             # torch's modules again

Each module is rebuilt from its own constructor arguments, given its state_dict (fastseq's modules keep
torch's keys), its device and dtype, train/eval mode, requires_grad flags and hooks, and put where it was.
Only modules of exactly these torch classes are converted: a subclass may override forward.
fastseq's MultiheadAttention and LSTMCell are subclasses of torch's, so `isinstance(m, nn.MultiheadAttention)`
stays true after converting. Its LSTM and Transformer modules are not: Dynamo refuses to trace any
torch.nn.LSTM (torch._dynamo.config.allow_rnn), and torch's TransformerEncoder would hand a subclass of
its layer nested tensors on its fast path.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Union

from torch import nn

from .lstm import LSTM, LSTMCell
from .multihead_attention import MultiheadAttention
from .transformer import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)


def _layer_args(m) -> dict:
    return dict(d_model=m.self_attn.embed_dim, nhead=m.self_attn.num_heads, dim_feedforward=m.linear1.out_features,
                dropout=m.dropout.p, activation=m.activation, layer_norm_eps=m.norm1.eps,
                batch_first=m.self_attn.batch_first, norm_first=m.norm_first, bias=m.linear1.bias is not None)


# torch class -> (fastseq class, the constructor arguments a module of it was built with)
_LEAVES: dict[type, tuple[type, Callable[[nn.Module], dict]]] = {
    nn.LSTM: (LSTM, lambda m: dict(input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
                                   bias=m.bias, batch_first=m.batch_first, dropout=float(m.dropout),
                                   bidirectional=m.bidirectional, proj_size=m.proj_size)),
    nn.LSTMCell: (LSTMCell, lambda m: dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)),
    nn.MultiheadAttention: (MultiheadAttention, lambda m: dict(
        embed_dim=m.embed_dim, num_heads=m.num_heads, dropout=m.dropout, bias=m.in_proj_bias is not None,
        add_bias_kv=m.bias_k is not None, add_zero_attn=m.add_zero_attn, kdim=m.kdim, vdim=m.vdim,
        batch_first=m.batch_first)),
    nn.TransformerEncoderLayer: (TransformerEncoderLayer, _layer_args),
    nn.TransformerDecoderLayer: (TransformerDecoderLayer, _layer_args),
}
_CONTAINERS = {nn.TransformerEncoder: TransformerEncoder, nn.TransformerDecoder: TransformerDecoder,
               nn.Transformer: Transformer}
NAMES = {cls.__name__: cls for cls in (*_LEAVES, *_CONTAINERS)}


def _selected(modules) -> set[type]:
    if modules is None:
        return set(NAMES.values())
    if isinstance(modules, (str, type)):
        modules = (modules,)
    chosen = set()
    for m in modules:
        cls = NAMES.get(m) if isinstance(m, str) else m
        if cls not in NAMES.values():
            raise ValueError(f"convert: modules names torch.nn classes among {sorted(NAMES)}, got {m!r}")
        chosen.add(cls)
    return chosen


def _factory(module: nn.Module) -> dict:
    p = next(module.parameters(), None)
    return {} if p is None else {"device": p.device, "dtype": p.dtype}


def _carry(old: nn.Module, new: nn.Module) -> nn.Module:
    """new given old's weights, mode, requires_grad flags and hooks."""
    new.load_state_dict(old.state_dict())
    flags = dict(old.named_parameters())
    for name, p in new.named_parameters():
        p.requires_grad_(flags[name].requires_grad)
    new.train(old.training)
    for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                 "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
                 "_load_state_dict_pre_hooks"):
        if hasattr(old, attr) and hasattr(new, attr):
            getattr(new, attr).update(getattr(old, attr))
    return new


def _leaf(module: nn.Module) -> nn.Module:
    cls, args = _LEAVES[type(module)]
    kwargs = args(module)
    new = _carry(module, cls(**kwargs, **_factory(module)))
    new._fastseq_reverts_to = (type(module), kwargs)
    return new


def _container(module: nn.Module, chosen: set[type]) -> nn.Module:
    """A Transformer container on fastseq's: its layers converted (when chosen), its norms kept."""
    cls = _CONTAINERS[type(module)]
    if cls is Transformer:
        new = Transformer.__new__(Transformer)
        nn.Module.__init__(new)
        new.encoder, new.decoder = (_convert(m, chosen) for m in (module.encoder, module.decoder))
        new.d_model, new.nhead, new.batch_first = module.d_model, module.nhead, module.batch_first
    else:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.layers = nn.ModuleList(_convert(m, chosen) for m in module.layers)
        new.num_layers, new.norm = module.num_layers, module.norm
        if cls is TransformerEncoder:
            new.enable_nested_tensor, new.use_nested_tensor = module.enable_nested_tensor, False
            new.mask_check = getattr(module, "mask_check", True)
    new.train(module.training)
    new._fastseq_reverts_to = (type(module), None)
    return new


def _convert(module: nn.Module, chosen: set[type]) -> nn.Module:
    kind = type(module)
    if kind in _CONTAINERS and kind in chosen:
        return _container(module, chosen)
    if kind in _LEAVES and kind in chosen:
        return _leaf(module)
    for name, child in list(module.named_children()):
        new = _convert(child, chosen)
        if new is not child:
            setattr(module, name, new)
    return module


def convert(model: nn.Module, modules: Union[None, str, type, Iterable[Union[str, type]]] = None) -> nn.Module:
    """`model` with each torch.nn.LSTM, LSTMCell, MultiheadAttention, TransformerEncoderLayer,
    TransformerDecoderLayer, TransformerEncoder, TransformerDecoder and Transformer inside it (or those
    `modules` names) replaced by fastseq's, in place; returns the model (a new object when the model
    itself is one of them). A DataParallel is converted inside; a DistributedDataParallel comes back as a
    new one with the same settings around the converted model. Parameters are new objects: build the
    optimizer after converting."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    chosen = _selected(modules)
    if isinstance(model, nn.DataParallel):  # replicates its module on every call: converted in place
        model.module = _convert(model.module, chosen)
        return model
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return _rewrap(model, _convert(model.module, chosen))
    return _convert(model, chosen)


def _rewrap(ddp: nn.parallel.DistributedDataParallel, module: nn.Module) -> nn.parallel.DistributedDataParallel:
    """A DistributedDataParallel with `ddp`'s settings around `module`: DDP's reducer holds the parameters it
    was built with, so a module with new parameters needs a new wrapper (and a new optimizer)."""
    import warnings

    with warnings.catch_warnings():  # the wrapper's own setting, passed on (torch deprecates its name)
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return _ddp(ddp, module)


def _ddp(ddp: nn.parallel.DistributedDataParallel, module: nn.Module) -> nn.parallel.DistributedDataParallel:
    return nn.parallel.DistributedDataParallel(
        module, device_ids=ddp.device_ids, output_device=ddp.output_device, broadcast_buffers=ddp.broadcast_buffers,
        process_group=ddp.process_group, bucket_cap_mb=ddp.bucket_bytes_cap / (1024 * 1024),
        find_unused_parameters=ddp.find_unused_parameters, gradient_as_bucket_view=ddp.gradient_as_bucket_view,
        static_graph=ddp.static_graph)


def _revert(module: nn.Module) -> nn.Module:
    back: Optional[tuple] = getattr(module, "_fastseq_reverts_to", None)
    if back is not None and back[1] is not None:
        torch_cls, kwargs = back
        return _carry(module, torch_cls(**kwargs, **_factory(module)))
    if back is not None:  # a container: torch's own, around reverted layers
        torch_cls = back[0]
        if torch_cls is nn.Transformer:
            new = nn.Transformer.__new__(nn.Transformer)
            nn.Module.__init__(new)
            new.encoder, new.decoder = _revert(module.encoder), _revert(module.decoder)
            new.d_model, new.nhead, new.batch_first = module.d_model, module.nhead, module.batch_first
        else:
            new = torch_cls.__new__(torch_cls)
            nn.Module.__init__(new)
            new.layers = nn.ModuleList(_revert(m) for m in module.layers)
            new.num_layers, new.norm = module.num_layers, module.norm
            if torch_cls is nn.TransformerEncoder:
                new.enable_nested_tensor = module.enable_nested_tensor
                new.use_nested_tensor, new.mask_check = False, module.mask_check
        new.train(module.training)
        return new
    for name, child in list(module.named_children()):
        new = _revert(child)
        if new is not child:
            setattr(module, name, new)
    return module


def revert(model: nn.Module) -> nn.Module:
    """`model` with every module `convert` replaced back on torch's, in place."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"revert: model must be a torch.nn.Module, got {type(model).__name__}")
    return _revert(model)
