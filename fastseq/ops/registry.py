"""Every op family declared once, and the lookup of the backend that serves each call.

A `Family` declares everything the rest of the tree needs to know about an op family:
  - its functions, each with the one schema every backend implements (positional arguments, in order);
  - the functions only some backends offer (`direct`: torch's whole multi-layer LSTM and whole step), each
    with its schema: called directly, never through a custom op;
  - the backends implementing it: the module (or modules) holding `reference`'s and `triton`'s functions,
    `EXTENSION` for the compiled `cpu` and `cuda` backends;
  - its Triton kernel modules, whose `aot_specs()` list the variants `python -m fastseq.ops.aot`
    compiles ahead of time;
  - its benchmark cases per preset, which fastseq/bench/<op>.py runs;
  - where measurements on a device rank its backends otherwise than fastseq.backends.DEFAULT_ORDER, its
    own order for that device;
  - the backends whose forward torch's autograd differentiates (torch's own kernels), by the device
    types where that is verified: for a call that needs a gradient the public op calls such a backend
    directly, outside the custom op, whose backward it does not implement;
  - the optional inputs only some backends serve (features: an attention mask), each with those
    backends: a call that uses one names it among the functions it needs;
  - what a backend cannot serve by the call's sizes (`limits`: a line per backend saying what, for `fastseq
    info`; `refusal(backend, function, args)`: the reason for one call, or None), refused before anything
    runs: the next backend serves, and a backend asked for by name says why it cannot.

From a declaration, `declare` makes a torch custom op `fastseq::<function>` per function, which calls
that function of the backend `fastseq.backends` chooses (or of the one its last argument, `backend`,
pins: a forward passes its choice, and its autograd formula passes it on to the backward, so a backward
runs where its forward ran, whatever context autograd's thread sees), and defines the schema
`fastseq_ext::<function>` that the compiled kernels implement (their C++ files register implementations
only, checked against this schema when fastseq._C loads). The family's own module adds each op's fake
implementation and autograd formula. `Family.call` is the one route from a public op to a backend; `fastseq.ops.aot`,
the benchmarks and the tests read the declarations from here.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import time
from typing import Any, Callable, Iterator

import torch

from .. import backends
from ..backends import BackendUnavailableError
from . import tuning

EXTENSION = "fastseq._C"  # the backend module of `cpu` and `cuda`: the kernels fastseq._C registers


@dataclasses.dataclass(frozen=True)
class Family:
    """One op family: its functions with their schemas, its backends, Triton kernel modules and benchmark
    cases (preset -> the cases fastseq/bench/<name>.py documents)."""

    name: str
    functions: dict[str, str]
    backends: dict[str, str | tuple[str, ...]]
    direct: dict[str, str] = dataclasses.field(default_factory=dict)
    kernels: tuple[str, ...] = ()
    cases: dict[str, Any] = dataclasses.field(default_factory=dict)
    order: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    autograd: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    features: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    limits: dict[str, str] = dataclasses.field(default_factory=dict)
    refusal: Callable[[str, str, tuple], str | None] | None = None
    # kernels of fastseq._C a Python backend module composes (name -> schema, defined as fastseq_ext::name),
    # by the device types whose compiled backend registers them
    extension_functions: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    def call(self, function: str, backend: str, *args, eager: bool = False, autograd: bool = False,
             contiguous: tuple[int, ...] = ()):
        """`function` of `backend` on args (the schema's, in order), by the one route every public op takes:
        - backend "" (torch.compile traces): the custom op, which chooses when the graph runs;
        - a `direct` function, or a backend whose forward torch's autograd differentiates on the args' device
          (Family.autograd; autograd=True: this call's, e.g. the reference for a float mask's gradient), or
          eager=True (a call without a gradient, whose custom-op dispatch would cost as much as its work):
          the backend's function itself;
        - otherwise the custom op fastseq::<function> pinned to `backend`, the args at `contiguous` made so
          (the layouts its kernels read), whose autograd formula runs the backward on the same backend."""
        if function in self.direct:
            return self.function(backend, function)(*args)
        op = _OPS[self.name][function]
        if not backend:
            return op(*args)
        device = next(a for a in args if isinstance(a, torch.Tensor)).device.type
        if eager or autograd or backend in self.autograd.get(device, ()):
            return self.function(backend, function)(*args)
        return op(*(a.contiguous() if i in contiguous and a is not None else a for i, a in enumerate(args)), backend)

    def offers(self, backend: str, function: str) -> bool:
        """Whether `backend` (chosen; "" while torch.compile traces: none) offers the direct function `function`."""
        if not backend or function not in self.direct or self.backends[backend] == EXTENSION:
            return False
        return any(hasattr(m, function) for m in self._modules(backend))

    def signatures(self) -> dict[str, list[str]]:
        """Every declared function's argument names, in order (the custom ops' and the direct ones')."""
        return {name: [a.name for a in torch._C.parse_schema(name + schema).arguments]
                for name, schema in {**self.functions, **self.direct}.items()}

    def function(self, backend: str, name: str) -> Callable:
        """`backend`'s function `name` for this family."""
        record = _served.get()
        if record is not None:
            record.append((self.name, name, backend))
        paths = self.backends[backend]
        if paths == EXTENSION:
            if backends.extension() is None:  # importing fastseq._C registers the kernels of fastseq_ext
                raise BackendUnavailableError(f"fastseq._C is unavailable: {backends.extension_error()}")
            return getattr(torch.ops.fastseq_ext, name)
        found = [getattr(m, name) for m in self._modules(backend) if hasattr(m, name)]
        if not found:
            raise BackendUnavailableError(f"backend {backend!r} does not implement {name}")
        return found[0]

    def provides(self, backend: str, names, device_type: str | None = None) -> bool:
        """Whether `backend` implements every function of `names` (the compiled backends: all of them; the
        torch backend: those torch has a kernel for), counting, on `device_type`, a backward that torch's
        autograd derives from a forward of `autograd`'s, and serves every feature `names` lists."""
        if any(backend not in self.features[name] for name in names if name in self.features):
            return False
        names = [name for name in names if name not in self.features]
        if self.backends[backend] == EXTENSION:
            return True
        if device_type is not None and backend in self.autograd.get(device_type, ()):
            names = [name for name in names if not name.endswith("_backward")]
        modules = self._modules(backend)
        return all(any(hasattr(m, name) for m in modules) for name in names)

    def _modules(self, backend: str) -> list:
        """The Python modules holding `backend`'s functions (imported once)."""
        found = _MODULES.get((self.name, backend))
        if found is None:
            paths = self.backends[backend]
            found = [importlib.import_module(path) for path in ((paths,) if isinstance(paths, str) else paths)]
            _MODULES[(self.name, backend)] = found
        return found

    def able(self, needs: tuple[str, ...], device_type: str | None = None) -> tuple[str, ...]:
        """The backends that provide `needs` (`provides`), computed once per question: every op call asks."""
        found = _ABLE.get((self.name, needs, device_type))
        if found is None:
            found = tuple(b for b in self.backends if self.provides(b, needs, device_type))
            _ABLE[(self.name, needs, device_type)] = found
        return found


_FAMILIES: dict[str, Family] = {}
_OPS: dict[str, dict[str, Any]] = {}  # family -> its custom ops by function
_MODULES: dict[tuple[str, str], list] = {}
_ABLE: dict[tuple, tuple[str, ...]] = {}
_TIMED: dict[tuple, tuple[str, ...]] = {}
_DEFAULT: dict[tuple, str] = {}  # the unforced choice per question (chosen)
_KEPT: dict[tuple, tuple[str, float, int]] = {}  # chosen's answer per question given a key: (answer, until, generation)
_served: contextvars.ContextVar[list | None] = contextvars.ContextVar("fastseq_served", default=None)


@contextlib.contextmanager
def served() -> Iterator[list[tuple[str, str, str]]]:
    """Records (family, function, backend) for each op function run inside the block (on this thread),
    the backward's when it runs here: which backend served what.

    >>> with served() as record: model(x)
    """
    record: list[tuple[str, str, str]] = []
    token = _served.set(record)
    try:
        yield record
    finally:
        _served.reset(token)


class trials:
    """A chooser's trial runs: not recorded by served(), since they are not what served the call (a class,
    not a generator: every op call that chooses enters it)."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _served.set(None) if _served.get() is not None else None

    def __exit__(self, *exc) -> None:
        if self._token is not None:
            _served.reset(self._token)


_EXTENSION_LIBRARY = torch.library.Library("fastseq_ext", "DEF")
_EXTENSION_DEFINED: set[str] = set()


def _pinnable(schema: str) -> str:
    """The custom op's schema: the backend function's, plus `str backend=""`, the backend a forward chose
    and its backward must use ("": choose now)."""
    args, returns = schema.split(") ->", 1)
    return f'{args}, str backend="") ->{returns}'


def _dispatcher(family: str, function: str, schema: str) -> Callable:
    arity = len(torch._C.parse_schema(function + schema).arguments)

    def run(*args, backend: str = ""):
        if len(args) > arity:  # the pinned backend, passed positionally
            args, backend = args[:arity], args[arity]
        device = next(a for a in args if isinstance(a, torch.Tensor)).device.type
        return implementation(family, function, device, backend or None, args)(*args)

    run.__name__ = function
    return run


def declare(family: Family) -> dict[str, Any]:
    """Register `family`; returns its custom ops `fastseq::<function>` by function name."""
    if family.name in _FAMILIES:
        raise ValueError(f"op family {family.name!r} is declared twice")
    _FAMILIES[family.name] = family
    compiled = EXTENSION in family.backends.values()
    for per_device in family.extension_functions.values():
        for function, schema in per_device.items():
            if function not in _EXTENSION_DEFINED:
                _EXTENSION_LIBRARY.define(function + schema)
                _EXTENSION_DEFINED.add(function)
    ops = {}
    for function, schema in family.functions.items():
        if compiled:
            _EXTENSION_LIBRARY.define(function + schema)
        ops[function] = torch.library.custom_op(f"fastseq::{function}", _dispatcher(family.name, function, schema),
                                                mutates_args=(), schema=_pinnable(schema))
    _OPS[family.name] = ops
    return ops


def declared() -> dict[str, Family]:
    """Every declared op family by name."""
    return dict(_FAMILIES)


def families() -> dict[str, tuple[str, ...]]:
    """Every declared op family and the backends implementing it."""
    return {name: tuple(family.backends) for name, family in _FAMILIES.items()}


def functions(family: str) -> tuple[str, ...]:
    """The functions every backend of `family` provides."""
    return tuple(_FAMILIES[family].functions)


def chosen(family: str, device_type: str, needs: tuple[str, ...] = (), autograd: bool = False,
           call: Callable[[], tuning.Call] | None = None, args: tuple | None = None, key: tuple | None = None) -> str:
    """The backend that serves `family` on `device_type` now (fastseq.backends' rules) among those that
    implement every function of `needs` (a forward that will need its backward names both), for a
    forward to pin; with `autograd`, one whose backward torch's autograd derives may serve too (the
    caller then calls it directly: `differentiated`). Given `call` (which makes the call's tuning.Call,
    asked only when there are backends to time between), and no backend forced by the user, the fastest
    of them for its shape bucket (fastseq.ops.tuning; the reference is timed only when nothing else
    serves). Given `args` (the first function's, in its schema's order), a backend the family's `refusal`
    turns down for them is left out; asked for by name, it raises saying why. While torch.compile traces:
    "" (the op chooses when the graph runs; the choice reads context variables, which Dynamo cannot trace).
    Given `key` (what the call's sizes, flags, dtype and device are, hashable: everything of the call the
    answer depends on), the answer is kept and given again for the same question for up to
    tuning.PROBE_MIN_S, until a choice changes anywhere (tuning.generation()): an op's small call pays
    microseconds for each step of the route below, and its probes still come when due."""
    if torch.compiler.is_compiling():
        return ""
    if key is None:
        return _chosen(family, device_type, needs, autograd, call, args)[0]
    question = _question(family, device_type, needs, autograd, key)
    kept = _KEPT.get(question)
    now = time.perf_counter()
    if kept is not None and now < kept[1] and kept[2] == tuning.generation():
        return kept[0]
    generation = tuning.generation()
    answer, due = _chosen(family, device_type, needs, autograd, call, args)
    if tuning.can_measure(torch.device(device_type)):  # not while a CUDA graph captures
        if len(_KEPT) >= 4096:  # shapes that never repeat: keep the table bounded
            _KEPT.clear()
        _KEPT[question] = (answer, min(now + tuning.PROBE_MIN_S, due), generation)
    return answer


def _question(family: str, device_type: str, needs: tuple[str, ...], autograd: bool, key: tuple) -> tuple:
    return (family, device_type, needs, autograd, key, backends.requested(device_type), backends.triton_interpret(),
            tuning.enabled(), torch.get_num_threads())


def kept(family: str, device_type: str, needs: tuple[str, ...], autograd: bool, key: tuple) -> str | None:
    """chosen()'s answer to this keyed question where it is kept and still holds, without choosing; else None
    (for a module's fast route: a call like one that went the whole route before)."""
    if torch.compiler.is_compiling():
        return None
    found = _KEPT.get(_question(family, device_type, needs, autograd, key))
    if found is not None and time.perf_counter() < found[1] and found[2] == tuning.generation():
        return found[0]
    return None


def _chosen(family: str, device_type: str, needs: tuple[str, ...], autograd: bool,
            call: Callable[[], tuning.Call] | None, args: tuple | None) -> tuple[str, float]:
    """chosen()'s answer, and until when it holds (perf_counter seconds): a measured choice's next probe, or
    for ever."""
    declaration = _FAMILIES[family]
    able = declaration.able(tuple(needs), device_type if autograd else None)
    order = declaration.order.get(device_type)
    label = lambda: f"{family} ({', '.join(needs)})" if needs else family  # noqa: E731
    asked = backends.requested(device_type)
    if declaration.refusal is not None and args is not None and needs:
        refused = {b: why for b in able if (why := declaration.refusal(b, needs[0], args))}
        if asked is not None and asked[0] in refused:
            raise BackendUnavailableError(f"backend {asked[0]!r} ({asked[1]}) cannot serve {label()} for these "
                                          f"inputs: {refused[asked[0]]}")
        if refused:
            able = tuple(b for b in able if b not in refused)
    if asked is not None:
        return backends.choose(label(), device_type, able, order).backend, float("inf")
    interpret = backends.triton_interpret()
    fast = () if call is None else _timed(family, able, device_type, order, interpret)
    if len(fast) > 1:  # something to time
        timed = call()
        with trials():
            measured = tuning.pick(family, fast, timed)
        if measured is not None:
            kept = tuning.kept(family, fast, timed)
            return measured, (kept[2] if kept is not None else 0.0)
    question = (family, able, device_type, order, interpret)
    found = _DEFAULT.get(question)  # what backends.choose answers unforced: the same for the same question
    if found is None:
        found = _DEFAULT[question] = backends.choose(label(), device_type, able, order).backend
    return found, float("inf")


def _timed(family: str, able: tuple[str, ...], device_type: str, order, interpret: bool) -> tuple[str, ...]:
    """The backends the chooser times: those able to serve that run here, the reference aside (computed once
    per question, Triton's interpreter switch included: every op call asks)."""
    question = (family, able, device_type, interpret)
    found = _TIMED.get(question)
    if found is None:
        found = tuple(b for b in backends.candidates(device_type, able, order) if b != "reference")
        _TIMED[question] = found
    return found


def differentiated(family: str, backend: str, device_type: str) -> bool:
    """Whether `backend` serves a gradient on `device_type` through torch's autograd (called directly)."""
    return backend in _FAMILIES[family].autograd.get(device_type, ())


def implementation(family: str, function: str, device_type: str, pinned: str | None = None,
                   args: tuple | None = None) -> Callable:
    """The function `function` of backend `pinned` (a forward's choice, which its backward keeps), or of
    the backend chosen for `family` on `device_type` (for `args`, when given: see `chosen`)."""
    declaration = _FAMILIES[family]
    backward = f"{function}_backward"  # unpinned (a direct or compiled call): a backend its backward has too
    needs = (function, backward) if backward in declaration.functions else (function,)
    return declaration.function(pinned or chosen(family, device_type, needs, args=args), function)
