"""An agent loop: a model proposes tool calls, the sandbox runs them, results go back.

The "model" here is a scripted stand-in so the example runs offline and deterministically;
swap `ScriptedModel` for a real LLM client that returns the same shape of tool calls.

    python examples/agent_loop.py
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shuru import Sandbox


@dataclass
class ToolCall:
    name: str  # "exec" or "write_file"
    args: dict


@dataclass
class ScriptedModel:
    """Replays a fixed plan, looking at each observation like a model would."""

    plan: list = field(default_factory=lambda: [
        ToolCall("write_file", {"path": "/work/fib.py", "content":
                                "a, b = 0, 1\nfor _ in range(10):\n    a, b = b, a + b\nprint(a)\n"}),
        ToolCall("exec", {"command": "python3 /work/fib.py"}),
        ToolCall("exec", {"command": "ls /work && wc -c /work/fib.py"}),
    ])
    transcript: list = field(default_factory=list)

    def next_call(self, observation: str | None) -> ToolCall | None:
        if observation is not None:
            self.transcript.append(observation)
        return self.plan.pop(0) if self.plan else None


def run_tool(sandbox: Sandbox, call: ToolCall) -> str:
    if call.name == "exec":
        result = sandbox.exec(call.args["command"], timeout=60)
        return f"exit={result.exit_code}\n{result.stdout}{result.stderr}"
    if call.name == "write_file":
        size = sandbox.files.write(call.args["path"], call.args["content"])
        return f"wrote {size} bytes to {call.args['path']}"
    return f"unknown tool {call.name}"


def main() -> list[str]:
    model = ScriptedModel()
    with Sandbox.start(cpus=1, memory=1024) as sandbox:
        observation = None
        while (call := model.next_call(observation)) is not None:
            observation = run_tool(sandbox, call)
            print(f"> {call.name} {call.args}\n{observation}")
        model.transcript.append(observation)
    return model.transcript


if __name__ == "__main__":
    main()
