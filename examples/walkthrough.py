"""The seed walkthrough: run a command, write a server script, read it back, spawn it,
stream its output, talk to its stdin, watch a directory, kill it, stop.

    python examples/walkthrough.py
"""

import asyncio

from shuru import AsyncSandbox

SERVER = """#!/bin/sh
echo "server: ready"
while read line; do
  echo "$line" > /app/last-message
  echo "server: got $line"
done
"""


async def main() -> None:
    async with await AsyncSandbox.start(cpus=1, memory=1024) as sb:
        release = await sb.exec("cat /etc/os-release")
        print(release.stdout.splitlines()[0])

        await sb.files.write("/app/server.sh", SERVER, mode=0o755)
        print("wrote", len(await sb.files.read("/app/server.sh")), "bytes to /app/server.sh")

        changes = []
        watch = await sb.watch("/app", lambda event: changes.append(event))

        server = await sb.spawn(["/app/server.sh"])
        replied = asyncio.Event()
        async for chunk in server:
            print(chunk.text, end="")
            if "ready" in chunk.text:
                await server.write("hello\n")
            if "got hello" in chunk.text:
                replied.set()
                break
        await replied.wait()
        print("last message:", (await sb.files.read_text("/app/last-message")).strip())

        await server.kill()
        print("server exit code:", await server.wait())
        await watch.stop()
        print("watch saw:", sorted({(e.kind, e.path) for e in changes}))


if __name__ == "__main__":
    asyncio.run(main())
