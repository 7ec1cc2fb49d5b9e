"""A simulated CUDA device for CPU-only tests: tensors that say ``cuda:0``, hold real CPU values, and refuse to mix.

Why not FakeTensorMode or the ``meta`` device: both were tried on the scorer and the backbone. Neither carries
values, and transformers reads values in every forward (``attention_mask.all()`` in the mask builder, ``.tolist()``
in Qwen2-VL's M-RoPE index), so both stop inside transformers long before a device bug of ours is reached
(FakeTensorMode: ``DataDependentOutputException`` or "PyTorch is not linked with support for cuda devices"; meta:
"Tensor.item() cannot be called on meta tensors"). Here a wrapper subclass reports ``cuda:0`` and keeps its values
in a CPU tensor, so whole forwards run and give the CPU numbers, while every aten op checks its operands' devices
with CUDA's rules (0-dim CPU tensors mix with anything; ``copy_``/``_to_copy`` cross devices; indices may live on
the CPU). Mixing a simulated-CUDA tensor with a CPU one raises as a real GPU would::

    with simulated_cuda():
        model.to("cuda")              # parameters become SimTensors
        scores = scorer.fast(q, cands)  # raises where a CPU tensor meets a cuda:0 one

Inference only: autograd is off inside (it cannot record on a device this torch build lacks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map


@dataclass
class Transfers:
    """Copies between the host and the simulated device, counted while a simulation runs."""

    to_device: int = 0  # CPU -> cuda moves (``.to``, ``.cuda``, ``torch.tensor(..., device='cuda')``)
    to_host: int = 0  # cuda -> CPU reads (``.cpu()``, ``.tolist()``, ``.item()``, ``int(t)``, ``bool(t)``...)


COUNTS = Transfers()
SIM = torch.device("cuda", 0)
CPU = torch.device("cpu")
aten = torch.ops.aten
CROSS_DEVICE = {aten.copy_.default, aten._to_copy.default}  # read one device, write another
INDEX_OPS = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


class SimTensor(torch.Tensor):
    """Reports ``cuda:0``; its values are ``elem``, a CPU tensor."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> SimTensor:
        out = torch.Tensor._make_wrapper_subclass(cls, elem.size(), strides=elem.stride(),
                                                  storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                  layout=elem.layout, device=SIM, requires_grad=False)
        out.elem = elem
        return out

    def __repr__(self) -> str:
        return f"SimTensor({self.elem!r}, device='{SIM}')"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            # Bindings that read values or take a real device guard before dispatching: do them on the values.
            if func is torch.Tensor.tolist:
                COUNTS.to_host += isinstance(args[0], SimTensor)
                return _unwrap(args[0]).tolist()
            if func is torch.Tensor.__getitem__:
                return _getitem(*args)
            if func is torch.Tensor.__setitem__:
                return _setitem(*args)
            if func in GUARDED_METHODS and isinstance(args[0], SimTensor):
                return _on_values(func, args, kwargs)
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


GUARDED_METHODS = {torch.Tensor.contiguous, torch.Tensor.new_tensor, torch.Tensor.new_ones, torch.Tensor.new_zeros,
                   torch.Tensor.new_full, torch.Tensor.new_empty, torch.Tensor.__int__, torch.Tensor.__float__,
                   torch.Tensor.__bool__, torch.Tensor.__index__, torch.Tensor.item}


def _wrap(x: Any) -> Any:
    return tree_map(lambda t: SimTensor(t) if isinstance(t, torch.Tensor) and not isinstance(t, SimTensor) else t, x)


def _unwrap(x: Any) -> Any:
    return tree_map(lambda t: t.elem if isinstance(t, SimTensor) else t, x)


def _dev(t: torch.Tensor) -> torch.device:
    return SIM if isinstance(t, SimTensor) else t.device


def _mismatch(a: torch.device, b: torch.device, what: object) -> RuntimeError:
    first, second = sorted((str(a), str(b)))
    return RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                        f"{first} and {second}! (simulated CUDA, {what})")


def _check_index(self_t: torch.Tensor, index: Any) -> None:
    for t in tree_flatten(index)[0]:
        if isinstance(t, torch.Tensor) and t.dim() > 0 and _dev(t) not in (_dev(self_t), CPU):
            raise RuntimeError(f"indices should be either on cpu or on the same device as the indexed tensor "
                               f"({_dev(self_t)}), found {_dev(t)} (simulated CUDA)")


HOST_READS = {torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__bool__, torch.Tensor.__index__,
              torch.Tensor.item}


def _on_values(func, args, kwargs):
    COUNTS.to_host += func in HOST_READS
    device = kwargs.get("device")
    out = func(*_unwrap(args), **_unwrap(kwargs))
    return out if device is not None and torch.device(device).type != "cuda" else _wrap(out)


def _getitem(self_t: torch.Tensor, index: Any) -> torch.Tensor:
    _check_index(self_t, index)
    value = _unwrap(self_t)[_unwrap(index)]
    return SimTensor(value) if isinstance(self_t, SimTensor) else value


def _setitem(self_t: torch.Tensor, index: Any, value: Any) -> None:
    _check_index(self_t, index)
    if isinstance(value, torch.Tensor) and value.dim() > 0 and _dev(value) != _dev(self_t):
        raise _mismatch(_dev(self_t), _dev(value), "index_put_ through __setitem__")
    _unwrap(self_t)[_unwrap(index)] = _unwrap(value)


def _common_device(func, args, kwargs) -> torch.device | None:
    """The device an op runs on under CUDA's rules; raises on a mix."""
    if func in CROSS_DEVICE:
        return _dev(args[0])
    if func in INDEX_OPS:
        _check_index(args[0], args[1])
        tensors = [args[0], *(a for a in args[2:] if isinstance(a, torch.Tensor))]
    else:
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    common = None
    for t in tensors:
        d = _dev(t)
        if t.dim() == 0 and d == CPU:
            continue  # a CPU scalar joins a kernel on any device
        if common is None:
            common = d
        elif d != common:
            raise _mismatch(common, d, func)
    if common is None and any(isinstance(t, SimTensor) for t in tensors):
        return SIM
    return common


_WRITES: dict[Any, int | str | None] = {}


def _written_argument(func) -> int | str | None:
    """For in-place and out= ops, which argument (position or name) the op returns; None otherwise."""
    if func not in _WRITES:
        schema, found = func._schema, None
        if len(schema.returns) == 1 and schema.returns[0].alias_info is not None:
            target = set(schema.returns[0].alias_info.before_set)
            for i, arg in enumerate(schema.arguments):
                if arg.alias_info is not None and arg.alias_info.is_write and set(arg.alias_info.before_set) == target:
                    found = i if not arg.kwarg_only else arg.name
        _WRITES[func] = found
    return _WRITES[func]


def _run(func, args, kwargs):
    wrap = _common_device(func, args, kwargs) == SIM
    if func is aten._local_scalar_dense.default or (func is aten._to_copy.default and isinstance(args[0], SimTensor)
                                                    and torch.device(kwargs.get("device") or SIM).type == "cpu"):
        COUNTS.to_host += isinstance(args[0], SimTensor)
    device = kwargs.get("device")
    if device is not None:  # factories and _to_copy: the target device decides
        wrap = torch.device(device).type == "cuda"
        if wrap:
            kwargs = {**kwargs, "device": CPU}
    out = func(*_unwrap(args), **_unwrap(kwargs))
    written = _written_argument(func)
    if written is not None:  # the very tensor written into, not a new wrapper
        return args[written] if isinstance(written, int) and written < len(args) else kwargs.get(written, out)
    return _wrap(out) if wrap else out


class _Dispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


class _Moves(TorchFunctionMode):
    """CPU -> cuda moves and ``torch.tensor(..., device='cuda')``: bindings that would take a real CUDA device guard."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.to, torch.Tensor.cuda) and not isinstance(args[0], SimTensor):
            return _to_sim(func, args, kwargs)
        device = kwargs.get("device")
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and device is not None and torch.device(device).type == "cuda":
            COUNTS.to_device += 1
            return SimTensor(func(*_unwrap(args), **{**kwargs, "device": CPU}))
        return func(*args, **kwargs)


def _to_sim(func, args, kwargs):
    tensor = args[0]
    if func is torch.Tensor.cuda:
        device, dtype = SIM, None
    else:
        device, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **{k: v for k, v in kwargs.items() if k != "copy"})
    if device is None or device.type != "cuda":
        return func(*args, **kwargs)
    COUNTS.to_device += 1
    return SimTensor(tensor.to(dtype) if dtype is not None and dtype != tensor.dtype else tensor.clone())


@contextlib.contextmanager
def simulated_cuda() -> Iterator[Transfers]:
    """Inside: ``device="cuda"`` and ``.to("cuda")`` make SimTensors; an op mixing one with a CPU tensor raises.

    Yields the host <-> device copy counts of this simulation."""
    global COUNTS
    COUNTS = Transfers()
    tls = torch.cuda._tls
    had = hasattr(tls, "is_initializing")
    tls.is_initializing = True  # skip the real CUDA initialisation, so factories reach the dispatch mode
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # Module.to makes Parameters of SimTensors
    try:
        with torch.no_grad(), _Moves(), _Dispatch():
            yield COUNTS
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
        if not had:
            del tls.is_initializing


def on_cpu(x: Any) -> Any:
    """``x`` with every SimTensor replaced by its CPU values (for comparing results outside the simulation)."""
    return _unwrap(x)
