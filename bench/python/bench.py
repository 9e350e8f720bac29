"""The Python half of bench/run: runs one scenario on the reference (flatmachines==1.0.0)
with the same YAML files as the Rust binary, and prints
{"elapsed_s": ..., "steps": ..., "output": ...} as one JSON line.

    python bench.py <scenario> <workdir> <n>

Scenarios as in bench/src/main.rs; the agent scenarios (agent-first, agent-calls,
agent-foreach) run flatagents 1.0.0 through LiteLLM against $OPENAI_BASE_URL, the bench's
loopback server. "cpu_s" is time.process_time() over the run. The reference has no SQLite checkpoint store: for
loop-sqlite it runs its local file backend (what `backend: sqlite` is measured against, at
equal durability: both survive a process crash), for loop-sqlite-full its local file
backend with fsync (both survive power loss). The time covers the run only (building the
machine included), not interpreter start-up and imports.
"""

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import logging

logging.disable(logging.WARNING)

from flatmachines import FlatMachine, MachineHooks  # noqa: E402
from flatmachines.agents import AgentResult  # noqa: E402
from flatmachines.persistence import LocalFileBackend  # noqa: E402

HERE = Path(__file__).resolve().parent
MACHINES = HERE.parent / "machines"


class TickHooks(MachineHooks):
    """The loop's action (the Rust `with_tick` does the same): i += 1,
    acc = (acc * 31 + i) mod 1_000_003."""

    def on_action(self, action_name, context):
        if action_name == "tick":
            i = context["i"] + 1
            context["i"] = i
            context["acc"] = (context["acc"] * 31 + i) % 1_000_003
        return context


class EchoExecutor:
    """The agent of templates20.yml: echoes its input."""

    async def execute(self, input_data, context=None):
        return AgentResult(output=dict(input_data))


class FsyncLocalFileBackend(LocalFileBackend):
    """The reference's LocalFileBackend with the fsyncs ours does with fsync on: the
    temporary file before the rename, the directory after it."""

    async def save(self, key, value):
        self._validate_key(key)
        path = self.base_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        temp_path = path.parent / f".{path.name}.tmp"
        with open(temp_path, "wb") as f:
            f.write(value)
            f.flush()
            os.fsync(f.fileno())
        temp_path.replace(path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def machine(scenario, workdir):
    checkpoints = str(Path(workdir) / ".checkpoints")
    if scenario.startswith("loop-"):
        kind = scenario[len("loop-"):]
        files = {
            "off": "loop_off.yml",
            "memory": "loop_memory.yml",
            "local": "loop_local.yml",
            "local-fsync": "loop_local.yml",
            "sqlite": "loop_sqlite.yml",
            "sqlite-full": "loop_sqlite.yml",
        }
        if kind not in files:
            raise SystemExit(f"unknown scenario {scenario}")
        persistence = None
        if kind in ("local", "sqlite"):
            persistence = LocalFileBackend(checkpoints)
        elif kind in ("local-fsync", "sqlite-full"):
            persistence = FsyncLocalFileBackend(checkpoints)
        return FlatMachine(
            config_file=str(MACHINES / files[kind]),
            hooks=TickHooks(),
            persistence=persistence,
        )
    if scenario == "templates20":
        m = FlatMachine(config_file=str(MACHINES / "templates20.yml"))
        m._agents["echo"] = EchoExecutor()
        return m
    if scenario == "foreach":
        return FlatMachine(config_file=str(MACHINES / "foreach.yml"))
    if scenario == "parallel":
        return FlatMachine(config_file=str(MACHINES / "parallel.yml"))
    if scenario in ("agent-first", "agent-calls"):
        return FlatMachine(config_file=str(MACHINES / "agent_loop.yml"))
    if scenario == "agent-foreach":
        return FlatMachine(config_file=str(MACHINES / "agent_foreach.yml"))
    raise SystemExit(f"unknown scenario {scenario}")


async def main():
    scenario, workdir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # The reference's file lock and default paths are relative to the working directory.
    os.chdir(workdir)
    foreach = scenario in ("foreach", "agent-foreach")
    data = {"numbers": list(range(n))} if foreach else {"n": n}
    cpu_before = time.process_time()
    started = time.perf_counter()
    m = machine(scenario, workdir)
    output = await m.execute(input=data, max_steps=10_000_000)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    print(json.dumps({"elapsed_s": elapsed, "cpu_s": cpu, "steps": None, "output": output}))


if __name__ == "__main__":
    asyncio.run(main())
