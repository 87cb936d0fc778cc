"""The pass infrastructure: Pass, PassResult, the registry and the PassManager.

A pass is a dataclass whose fields are its parameters (no ``**kwargs``). It edits the model in place
and returns ``PassResult(model, modified)``; ``modified`` is part of the contract and the
``CheckModifiedFlag`` instrument holds passes to it. The PassManager runs a list of passes, verifies
the IR after each (``verify="each"``), and turns any failure into a :class:`PassError` naming the
failing pass and the ones that ran before it.

Passes declare the facts they ``needs`` and ``provides`` (``qcompiler.ir.plan.FACTS``: the quantization
plan, activation ranges, Q/DQ, kept reference models). A PassManager refuses, when it is built, a
pipeline where a pass comes before the pass that provides what it needs, and, before the first pass
runs, one where nothing provides it: a :class:`PipelineOrderError` (a user error) naming the pass,
what is missing and the passes that provide it. Timing, IR dumps and the correctness checks are
instruments (TVM's PassInstrument), not code inside passes.

The pass library lives in ``qcompiler.passes`` (the top-level ``passes/`` folder). This module is
its infrastructure; DESIGN.md calls it ``qcompiler/passes.py``, but that name would collide with the
``qcompiler.passes`` package, so it is ``qcompiler.pass_manager``, re-exported from ``qcompiler``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from .errors import PassError, PipelineConfigError, PipelineOrderError, UserError
from .ir import Model, verify as verify_model
from .ir.plan import FACTS, facts_of

ENTRY_POINT_GROUP = "qcompiler.passes"


@dataclass
class PassResult:
    """What a pass returns: the (same) model and whether the pass changed it."""

    model: Model
    modified: bool


@dataclass
class Pass:
    """Base class of every pass. Subclass as a ``@dataclass`` and implement :meth:`call`.

    Class attributes:
        name: the registry key (kebab-case), set by :func:`register_pass`.
        preserves_semantics: the pass leaves the float outputs unchanged (checked by CheckNumerics).
        idempotent: running the pass twice changes nothing the second time (checked by CheckIdempotent).
        needs: facts (``qcompiler.ir.plan.FACTS``) the model must have when the pass runs.
        provides: facts the model has after the pass.
        invalidates: facts the model may have before the pass and no longer has after it.
    """

    name: ClassVar[str] = ""
    preserves_semantics: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    invalidates: ClassVar[tuple[str, ...]] = ()

    def requires(self, model: Model) -> None:
        """Raise a UserError (bad parameters, missing data) or PreconditionError when the pass cannot run
        on ``model``; the facts in ``needs`` are checked before this."""

    def call(self, model: Model) -> PassResult:
        raise NotImplementedError

    def ensures(self, model: Model) -> None:
        """Raise PostconditionError when the pass left ``model`` in a state it does not promise."""

    def __call__(self, model: Model) -> PassResult:
        have = facts_of(model)
        missing = [fact for fact in self.needs if fact not in have]
        if missing:
            raise order_error(self, missing[0], "the model does not have it when the pass runs")
        self.requires(model)
        result = self.call(model)
        if not isinstance(result, PassResult) or result.model is not model:
            raise PassError(f"pass {self.display_name()} must return PassResult with the model it was given")
        self.ensures(model)
        return result

    @classmethod
    def display_name(cls) -> str:
        return cls.name or cls.__name__

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring (shown by ``qcompiler passes``)."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


P = TypeVar("P", bound=type[Pass])


def order_error(pass_: Pass, fact: str, why: str) -> PipelineOrderError:
    """The user error for ``pass_`` missing ``fact``, naming the registered passes that provide it.

    A pass that starts a new plan as well (``assign-dynamic`` and ``weight-rtn`` provide ranges by needing
    none) is named only when no other pass provides the fact: a pipeline missing its calibration is told
    to calibrate, not to switch to another scheme."""
    providers = [name for name in default_registry.names() if fact in default_registry.get(name).provides]
    if fact != "plan":
        providers = [n for n in providers if "plan" not in default_registry.get(n).provides] or providers
    hint = f"; run {' or '.join(providers)} before it" if providers else ""
    return PipelineOrderError(f"pipeline order: {pass_.display_name()} needs {FACTS[fact][0]} ({fact}), "
                              f"but {why}{hint}")


def check_order(passes: Sequence[Pass], available: Iterable[str] | None = None) -> None:
    """Refuse a pipeline in which a pass needs a fact before a pass provides it.

    With ``available`` (the facts of the model it will run on), every need must be met by the model
    or by an earlier pass; without it, only needs that a *later* pass provides are errors (the model,
    not yet known, may have the rest).
    """
    have = set(available or ())
    for position, pass_ in enumerate(passes):
        for fact in pass_.needs:
            if fact in have:
                continue
            later = [p.display_name() for p in passes[position + 1:] if fact in p.provides]
            if later:
                raise order_error(pass_, fact, f"{later[0]} provides it only after it")
            if available is not None:
                raise order_error(pass_, fact, "no pass before it provides it and the model has none")
        have.difference_update(pass_.invalidates)
        have.update(pass_.provides)


class PassRegistry:
    """Maps pass names to pass classes. Registering a name twice is an error."""

    def __init__(self) -> None:
        self._passes: dict[str, type[Pass]] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[P], P]:
        """Class decorator: ``@register_pass("my-pass")``. Also makes the class a dataclass."""

        def decorate(cls: P) -> P:
            if name in self._passes and self._passes[name] is not cls:
                existing = self._passes[name]
                raise PipelineConfigError(
                    f"pass name {name!r} is already registered by {existing.__module__}.{existing.__qualname__}"
                )
            if not dataclasses.is_dataclass(cls) or "__dataclass_fields__" not in cls.__dict__:
                cls = dataclass(cls)
            cls.name = name
            self._passes[name] = cls
            return cls

        return decorate

    def get(self, name: str) -> type[Pass]:
        self.load_entry_points()
        try:
            return self._passes[name]
        except KeyError:
            known = ", ".join(sorted(self._passes))
            raise PipelineConfigError(f"unknown pass {name!r}; registered passes: {known}") from None

    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._passes)

    def load_entry_points(self) -> None:
        """Import the modules advertised under the ``qcompiler.passes`` entry-point group."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        import qcompiler.passes  # noqa: F401  (the built-in library registers itself)

        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry.load()
            except Exception as exc:
                raise UserError(f"cannot load pass plugin {entry.name!r} ({entry.value}): {exc}") from exc


default_registry = PassRegistry()
register_pass = default_registry.register


def load_plugin(module: str) -> None:
    """Import a module that registers passes (``--plugin``); a clear error when it cannot be found."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise UserError(f"plugin module {module!r} not found (is it installed or on PYTHONPATH?)") from exc
        raise


# -- running passes ------------------------------------------------------------------------------


@dataclass
class PassRecord:
    """What happened when one pass ran."""

    name: str
    config: str
    seconds: float
    modified: bool


@dataclass
class PipelineResult:
    model: Model
    modified: bool
    records: list[PassRecord] = field(default_factory=list)


class Instrument:
    """A hook around every pass the PassManager runs (timing, dumps, checks).

    ``before`` may return False to skip the pass.
    """

    def before(self, pass_: Pass, model: Model) -> bool | None:
        return None

    def after(self, pass_: Pass, model: Model, record: PassRecord) -> None:
        pass


class PassManager:
    """Runs passes in order, verifying the IR and calling instruments around each.

    Args:
        passes: the pipeline, in order.
        instruments: hooks called before and after every pass.
        verify: "each" (after every pass), "end" (once) or "off".
    """

    def __init__(self, passes: Sequence[Pass], *, instruments: Iterable[Instrument] = (),
                 verify: str = "each"):
        if verify not in ("each", "end", "off"):
            raise PipelineConfigError(f"verify must be 'each', 'end' or 'off', not {verify!r}")
        self.passes = list(passes)
        self.instruments = list(instruments)
        self.verify = verify
        check_order(self.passes)

    def __repr__(self) -> str:
        return f"PassManager([{', '.join(map(repr, self.passes))}], verify={self.verify!r})"

    def __call__(self, model: Model) -> PipelineResult:
        check_order(self.passes, facts_of(model))
        result = PipelineResult(model, False)
        done: list[str] = []
        for pass_ in self.passes:
            if any(inst.before(pass_, model) is False for inst in self.instruments):
                continue
            start = time.perf_counter()
            try:
                outcome = pass_(model)
                if self.verify == "each":
                    verify_model(model)
            except UserError:
                raise
            except Exception as exc:
                before = ", ".join(done) or "none"
                raise PassError(
                    f"pass {pass_.display_name()!r} failed (passes before it: {before}): {exc}"
                ) from exc
            record = PassRecord(pass_.display_name(), repr(pass_), time.perf_counter() - start,
                                outcome.modified)
            result.records.append(record)
            result.modified |= outcome.modified
            done.append(pass_.display_name())
            for inst in self.instruments:
                inst.after(pass_, model, record)
        if self.verify == "end":
            try:
                verify_model(model)
            except Exception as exc:
                raise PassError(f"IR verification after the pipeline ({', '.join(done) or 'no passes'}) failed: "
                                f"{exc}") from exc
        return result
