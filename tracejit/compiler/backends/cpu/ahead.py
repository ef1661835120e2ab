"""What a CPU program's first run will compile, found before it runs, so that the compile can be split over
processes (compiler/background.compile_ahead, behind CpuBackend.compile_work).

A generated kernel compiles on its first call, for the Numba types of the arguments it gets then, and those
depend on the arrays the steps before it produced. So the program is run once beforehand -- a dry run -- on
the call's inputs (the ones the program updates in place copied), with every generated step whose kernel is
not compiled yet replaced by its nodes on the reference backend: the step's arguments are built as its first
call would build them and their types kept, the values come from NumPy. Library steps (window kernels, BLAS)
and kernels already compiled run as they are. The result is one piece of work per generated function: compile
it for the types seen, with a cost guess (its source length: Numba's front end, most of a compile, is linear in
it) so that the processes get about equal shares.
"""

from __future__ import annotations

import numpy as np

from ..reference import ref_step
from . import tiering
from .blas.calls import ensure_sgemm
from .program import KernelStep, SegmentStep


def work(program, inputs) -> list:
    """[(cost, compile)] for the generated functions `program`'s first run on `inputs` would compile, or []
    when fewer than two would (nothing to share out). `compile()` compiles one function for every argument
    type tuple the dry run saw; it raises what Numba raises."""
    steps = program._generated()
    # kernels not compiled in this process run on the reference backend in the dry run (a step whose source
    # repeats an earlier step's shares its function: a compile in the dry run would be a serial compile); the
    # work is the functions whose source this program wrote (one found in the kernel cache is taken to be in
    # Numba's disk cache too: the run loads it)
    pending = {id(s) for s in steps if not getattr(s.fn, "signatures", None)}
    fresh = [s for s in steps if id(s) in pending and not s.hit]
    new = {id(s.fn) for s in fresh}
    if len(new) < 2 or tiering.unusable(program, fresh) is not None:
        return []  # (nothing to share out, or kernels a forked process could not leave in the disk cache)
    ensure_sgemm()  # (segments calling the own GEMM need its symbol; a forked child inherits it)
    found: dict[int, tuple] = {}  # id(fn) -> (fn, [argument types], source length)
    env = list(program._unshared(inputs)) + [None] * (program.n_slots - len(inputs))
    free = program._arenas
    arena = free.pop() if free else program.arena.allocate()
    try:
        for k, (step, ins, outs, _) in enumerate(program.plan):
            args = [env[i] for i in ins]
            if id(step) in pending:
                # the values from NumPy, in arrays like the ones the kernel's call returns: the next steps' argument
                # types (layout, writeable) are then the ones the real run gives them
                if isinstance(step, KernelStep):
                    call, arrays, _ = step.arguments(args, arena[k])
                    results = [arrays[i] for i in step.out_order]
                    for into, value in zip(results, ref_step(step.node)(list(args))):
                        np.copyto(into, value, casting="unsafe")
                else:
                    assert isinstance(step, SegmentStep)
                    call = step._args(args)
                    results = [r if isinstance(r, np.ndarray) and r.flags.c_contiguous and r.flags.writeable
                               and r.flags.aligned else np.array(r, order="C") for r in step.reference()(*args)]
                if id(step.fn) in new:
                    types = tuple(step.fn.typeof_pyval(a) for a in call)
                    fn, seen, cost = found.get(id(step.fn), (step.fn, [], len(step.source)))
                    if types not in seen:
                        seen.append(types)
                    found[id(step.fn)] = (fn, seen, cost)
                del call
            else:
                results = step(args, arena[k]) if getattr(step, "writes_into", False) else step(args)
            for o, r in zip(outs, results):
                env[o] = r
    except Exception:  # noqa: BLE001 -- the dry run failed (the real run raises it): share out what was found
        pass
    finally:
        free.append(arena)
    return [(cost, _compiler(fn, seen)) for fn, seen, cost in found.values()]


def _compiler(fn, signatures):
    def compile_it():
        for types in signatures:
            fn.compile(types)
    return compile_it
