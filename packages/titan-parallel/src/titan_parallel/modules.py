"""Finding submodules by name: `*` patterns, the repeated blocks of a model, in-place replacement.

Names are matched after dropping the segments that torch's wrappers add (`_checkpoint_wrapped_module`
from activation checkpointing, `_orig_mod` from torch.compile, `_fsdp_wrapped_module`), so a plan
written for the plain model still applies after those wrappers, and the wrapper (the outermost
module at that name) is what is returned.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from torch import nn

from titan_parallel.errors import ParallelConfigError, closest

WRAPPER_SEGMENTS = frozenset({"_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module"})

# What `units=` accepts: None (find the repeated blocks), one pattern, or names/patterns/modules.
Units = str | Sequence[str | nn.Module] | None


def clean_name(fqn: str) -> str:
    """`fqn` without wrapper segments: 'layers.0._checkpoint_wrapped_module.attn' -> 'layers.0.attn'."""
    return ".".join(p for p in fqn.split(".") if p and p not in WRAPPER_SEGMENTS)


def named_modules_clean(model: nn.Module) -> dict[str, nn.Module]:
    """Clean name -> outermost module with that name, in definition order ('' is the root)."""
    out: dict[str, nn.Module] = {}
    for fqn, module in model.named_modules(remove_duplicate=False):
        out.setdefault(clean_name(fqn), module)
    return out


def pattern_matches(pattern: str, name: str) -> bool:
    """Segment-wise match: `*` stands for one whole or partial dotted segment ('layers.*.attn')."""
    if pattern == name:
        return True
    p_parts, n_parts = pattern.split("."), name.split(".")
    return len(p_parts) == len(n_parts) and all(
        fnmatch.fnmatchcase(n, p) for p, n in zip(p_parts, n_parts)
    )


def match_modules(model: nn.Module, pattern: str, *, arg: str) -> list[tuple[str, nn.Module]]:
    """(clean name, module) for every module matching `pattern`; an error names a pattern that
    matches nothing, with the closest module name."""
    modules = named_modules_clean(model)
    found = [(n, m) for n, m in modules.items() if pattern_matches(pattern, n)]
    if not found:
        names = [n for n in modules if n]
        if "*" in pattern:  # suggest patterns: 'layers.0.attn' and 'layers.1.attn' -> 'layers.*.attn'
            names = list(dict.fromkeys(".".join("*" if s.isdigit() else s for s in n.split(".")) for n in names))
        raise ParallelConfigError(
            f"{arg}: {pattern!r} matches no submodule of {type(model).__name__}{closest(pattern, names)}; "
            "names are dotted module paths such as 'layers.0.attention', with '*' for one segment"
        )
    return found


def find_repeated_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children of the largest ModuleList/ModuleDict whose children all share one class
    (ignoring AC/compile wrappers): a transformer's layers. Largest = most parameters."""
    best: tuple[int, int, str, list[tuple[str, nn.Module]]] | None = None
    for name, container in named_modules_clean(model).items():
        if not isinstance(container, (nn.ModuleList, nn.ModuleDict)) or len(container) == 0:
            continue
        children = list(container.named_children())
        if len({type(_unwrap(m)) for _, m in children}) != 1:
            continue
        size = sum(p.numel() for p in container.parameters())
        key = (size, len(children))
        if best is None or key > best[:2]:
            prefix = f"{name}." if name else ""
            best = (*key, name, [(prefix + n, m) for n, m in children])
    if best is None:
        raise ParallelConfigError(
            f"units=None: {type(model).__name__} has no nn.ModuleList/nn.ModuleDict of repeated "
            "blocks to use as units; pass units= explicitly (e.g. ['blocks.*'])"
        )
    return best[3]


def resolve_units(model: nn.Module, units: Units, *, arg: str = "units") -> list[tuple[str, nn.Module]]:
    """Units as (clean name, module): found automatically for None, else each pattern or module.
    A name of a ModuleList/ModuleDict ("layers") stands for its children."""
    if units is None:
        return find_repeated_blocks(model)
    if isinstance(units, str):
        units = [units]
    clean = named_modules_clean(model)
    # Modules given before AC/compile wrapped them still name their place: return the wrapper.
    by_id = {id(m): clean_name(n) for n, m in model.named_modules(remove_duplicate=False)}
    out: dict[str, nn.Module] = {}
    for unit in units:
        if isinstance(unit, nn.Module):
            if id(unit) not in by_id:
                raise ParallelConfigError(f"{arg}: a {type(unit).__name__} given is not a submodule of the model")
            out.setdefault(by_id[id(unit)], clean[by_id[id(unit)]])
        elif isinstance(unit, str):
            for name, module in match_modules(model, unit, arg=arg):
                if isinstance(_unwrap(module), (nn.ModuleList, nn.ModuleDict)):
                    # A container is never called: it stands for its children ("layers").
                    prefix = f"{name}." if name else ""
                    for child, sub in _unwrap(module).named_children():
                        out.setdefault(prefix + child, sub)
                else:
                    out.setdefault(name, module)
        else:
            raise ParallelConfigError(f"{arg}: entries must be module names or modules, got {unit!r}")
    return list(out.items())


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` at clean name `name` (which must not be the root), inside any wrapper parents."""
    parent_name, _, child = name.rpartition(".")
    parent = named_modules_clean(model)[parent_name]
    parent = _unwrap(parent)
    parent.register_module(child, new)


def _unwrap(module: nn.Module) -> nn.Module:
    for attr in ("_checkpoint_wrapped_module", "_orig_mod"):
        inner = getattr(module, "_modules", {}).get(attr)
        if inner is not None:
            return _unwrap(inner)
    return module


def describe(names: Iterable[str], limit: int = 6) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more
