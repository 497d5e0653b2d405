"""Random programs for `chaos.Counters` and the model of what running them must produce.

Everything here is a pure function of the seed: the same seed gives the same programs,
the same expected outcomes and the same expected counters.

Keys: every program (root or nested) runs on a key of its own, `p<seed>-<i>` for the
i-th root and `<parent>.c<step>` / `<parent>.s<step>` for a program called or sent by
step `step` of its parent, so exclusive handlers that call each other never wait on one
another. Resolve and Fail run on `<program>.r<step>` / `<program>.f<step>`. Counters are
`ctr-<n>`, shared by every program: only `Add` (a leaf) holds them.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Literal

from chaos import chaos_pb2 as pb

from services.chaos.service import outcome_digest, side_effect_value

MAX_DEPTH = 3
MAX_ROOT_STEPS = 6
MAX_NESTED_STEPS = 4
# Status codes the Fail handler raises (none that the broker itself uses for kills).
FAIL_CODES = (3, 5, 6, 9, 11)  # INVALID_ARGUMENT NOT_FOUND ALREADY_EXISTS FAILED_PRECONDITION
#                                OUT_OF_RANGE

ProgramKind = Literal["root", "call", "send"]


@dataclasses.dataclass(frozen=True)
class ProgramInfo:
    """One program of the run: a root, or nested in `parent` by a call or a send."""

    key: str
    kind: ProgramKind
    parent: str
    depth: int
    expected: pb.Outcome


@dataclasses.dataclass
class Model:
    """The generated programs and everything running them must leave behind."""

    seed: int
    counter_keys: list[str]
    roots: list[pb.Program]
    # Every program by key: roots, called and sent ones.
    programs: dict[str, ProgramInfo] = dataclasses.field(default_factory=dict)
    # Counter key -> its final value, and how many Add invocations reach it.
    counters: Counter[str] = dataclasses.field(default_factory=Counter)
    adds: Counter[str] = dataclasses.field(default_factory=Counter)
    # Resolve keys; Fail keys with the code their invocation fails with.
    resolvers: set[str] = dataclasses.field(default_factory=set)
    fails: dict[str, int] = dataclasses.field(default_factory=dict)
    steps: Counter[str] = dataclasses.field(default_factory=Counter)

    @property
    def expected_invocations(self) -> int:
        """Every invocation the run must create: one per program, Add, Resolve and Fail."""
        return len(self.programs) + sum(self.adds.values()) + len(self.resolvers) + len(self.fails)

    def idempotency_key(self, root_key: str) -> str:
        """The idempotency key the runner submits the root program on `root_key` with."""
        return f"chaos-{self.seed}-{root_key}"

    def describe(self) -> str:
        """One line: how many programs of each kind, and steps of each kind."""
        kinds = Counter(info.kind for info in self.programs.values())
        steps = ", ".join(f"{name} {count}" for name, count in sorted(self.steps.items()))
        return (
            f"{len(self.programs)} programs ({kinds['root']} root, {kinds['call']} called, "
            f"{kinds['send']} sent) · {sum(self.steps.values())} steps ({steps})"
        )


class _Generator:
    def __init__(self, seed: int, counters: int) -> None:
        self.rng = random.Random(seed)
        self.counter_keys = [f"ctr-{n}" for n in range(counters)]

    def program(self, key: str, depth: int) -> pb.Program:
        program = pb.Program(key=key)
        max_steps = MAX_ROOT_STEPS if depth == 0 else MAX_NESTED_STEPS
        for index in range(self.rng.randint(1, max_steps)):
            program.steps.append(self.step(key, index, depth))
        return program

    def step(self, key: str, index: int, depth: int) -> pb.Step:
        kinds = ["increment", "sleep", "side_effect", "awakeable", "terminal_recovered"]
        weights = [35, 10, 15, 8, 8]
        if depth < MAX_DEPTH:
            kinds += ["call", "send"]
            weights += [12, 12]
        kind = self.rng.choices(kinds, weights)[0]
        rng = self.rng
        if kind == "increment":
            amount = rng.randint(1, 1000)
            return pb.Step(increment=pb.Increment(key=rng.choice(self.counter_keys), amount=amount))
        if kind == "call":
            return pb.Step(call=self.program(f"{key}.c{index}", depth + 1))
        if kind == "send":
            delay = rng.choice([0, 0, rng.randint(20, 500)])
            nested = self.program(f"{key}.s{index}", depth + 1)
            return pb.Step(send=pb.SendStep(program=nested, delay_millis=delay))
        if kind == "sleep":
            return pb.Step(sleep=pb.SleepStep(millis=rng.randint(10, 300)))
        if kind == "side_effect":
            mode = rng.choice(
                [pb.SideEffectStep.OK, pb.SideEffectStep.TRANSIENT, pb.SideEffectStep.SLOW]
            )
            slow = rng.randint(50, 400) if mode == pb.SideEffectStep.SLOW else 0
            return pb.Step(side_effect=pb.SideEffectStep(mode=mode, slow_millis=slow))
        if kind == "awakeable":
            value = f"woken {key}/{index} {rng.randrange(10**6)}"
            return pb.Step(awakeable=pb.AwakeableStep(resolver_key=f"{key}.r{index}", value=value))
        code = rng.choice(FAIL_CODES)
        message = f"planned failure {key}/{index}"
        return pb.Step(
            terminal_recovered=pb.TerminalStep(key=f"{key}.f{index}", message=message, code=code)
        )


def generate(seed: int, programs: int, counters: int) -> Model:
    """`programs` random root programs over `counters` counter keys, and their model."""
    generator = _Generator(seed, counters)
    model = Model(seed=seed, counter_keys=generator.counter_keys, roots=[])
    for index in range(programs):
        root = generator.program(f"p{seed}-{index}", depth=0)
        model.roots.append(root)
        _expect(model, root, kind="root", parent="", depth=0)
    return model


def _expect(
    model: Model, program: pb.Program, kind: ProgramKind, parent: str, depth: int
) -> pb.Outcome:
    """Records `program` (and what it nests) in the model; returns its expected outcome."""
    trace: list[str] = []
    for index, step in enumerate(program.steps):
        step_kind = str(step.WhichOneof("kind"))
        model.steps[step_kind] += 1
        if step_kind == "increment":
            model.counters[step.increment.key] += step.increment.amount
            model.adds[step.increment.key] += 1
            trace.append(f"inc {step.increment.key} {step.increment.amount:+d}")
        elif step_kind == "call":
            nested = _expect(model, step.call, "call", program.key, depth + 1)
            trace.append(f"call {nested.key} {nested.digest}")
        elif step_kind == "send":
            _expect(model, step.send.program, "send", program.key, depth + 1)
            trace.append(f"send {step.send.program.key} {step.send.delay_millis}ms")
        elif step_kind == "sleep":
            trace.append(f"sleep {step.sleep.millis}ms")
        elif step_kind == "side_effect":
            mode = pb.SideEffectStep.Mode.Name(step.side_effect.mode)
            trace.append(f"run {mode} {side_effect_value(program.key, index)}")
        elif step_kind == "awakeable":
            model.resolvers.add(step.awakeable.resolver_key)
            trace.append(f"awakeable {step.awakeable.value}")
        elif step_kind == "terminal_recovered":
            model.fails[step.terminal_recovered.key] = step.terminal_recovered.code
            trace.append(f"recovered {step.terminal_recovered.code} message")
        else:
            raise AssertionError(f"step {index} of {program.key} has no kind")
    outcome = pb.Outcome(key=program.key, trace=trace, digest=outcome_digest(program.key, trace))
    model.programs[program.key] = ProgramInfo(program.key, kind, parent, depth, outcome)
    return outcome
