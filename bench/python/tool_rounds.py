"""The Python half of bench/tool_rounds: runs bench/machines/tool_rounds.yml (a tool_loop
state) on the reference that implements tool loops (flatmachines==4.2.1 +
flatagents[litellm]==4.2.1) against the OpenAI-compatible server at $OPENAI_BASE_URL (the
Rust `flatmachine-bench serve-llm`), and prints {"elapsed_s": ..., "output": ...} as one JSON
line.

    python tool_rounds.py

The `step` tool does what the Rust side's handler does: n + 1. The time covers building the
machine and running it, not interpreter start-up and imports.
"""

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

logging.disable(logging.WARNING)

import litellm  # noqa: E402

# litellm prints its provider list on stdout when it cannot price a model (the loopback
# server's `bench-model`); keep stdout for the result line.
litellm.suppress_debug_info = True

from flatmachines import FlatMachine  # noqa: E402
from flatagents.tool_loop import Tool  # noqa: E402
from flatagents.tools import SimpleToolProvider, ToolResult  # noqa: E402

HERE = Path(__file__).resolve().parent
MACHINES = HERE.parent / "machines"


async def step(tool_call_id, arguments):
    return ToolResult(content=str(int(arguments.get("n", 0)) + 1))


TOOL = Tool(
    name="step",
    description="Adds one to n",
    parameters={
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
    },
    execute=step,
)


async def main():
    started = time.perf_counter()
    machine = FlatMachine(
        config_file=str(MACHINES / "tool_rounds.yml"),
        tool_provider=SimpleToolProvider([TOOL]),
    )
    output = await machine.execute(input={"start": 0})
    elapsed = time.perf_counter() - started
    print(json.dumps({"elapsed_s": elapsed, "output": output}))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
