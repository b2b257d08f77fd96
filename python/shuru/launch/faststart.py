"""Fast start: a running VM with a connected agent, restored from saved state when possible.

Owns the decision between restoring and booting, and the fallbacks:

* A saved state for the disk layer (image or checkpoint) and the machine's options exists:
  restore a clone of it, send the host's entropy and wall clock (`resume`), handshake.
* None exists, it is stale, or it fails to load: warn once, boot a template VM (RAM in a
  file), wait until its agent is up and idle, park it, save it, and restore from that.
  Concurrent first starts save one state: the others wait on its lock, then restore.
* Saving or restoring the new state fails too: warn, and boot an ordinary VM. A saved
  state is a cache; it never makes a start fail. Only a real boot failure does.

`cold=True`, a backend without fast start (as its `probe` says: the helper's process
driver), or custom boot files (no disk layer to key a
state by) boot directly. An unsafe runtime directory fails the start before any of this.

`prepare` saves a layer's state ahead of time: `checkpoint()` calls it, so the sandboxes
started from a fresh checkpoint restore from the first one on, instead of all waiting on a
cold boot.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from dataclasses import dataclass
from typing import Callable

from ..backends import rundir as runtime
from . import states
from .. import agent_client as agent
from ..backends.base import Backend, Machine, MachineSpec
from ..channel import Channel
from ..errors import BootError, SandboxDiedError, ShuruError, ShuruWarning
from ..process import run_to_completion

BOOT_TIMEOUT = float(os.environ.get("SHURU_BOOT_TIMEOUT", "90"))
# A restored agent answers within a fraction of a second; one that does not within this is
# a state that did not load properly, and the start falls back to a cold boot.
RESUME_TIMEOUT = float(os.environ.get("SHURU_RESUME_TIMEOUT", "30"))


async def connect_agent(machine, *, timeout: float = BOOT_TIMEOUT,
                        resume: bool = False) -> Channel:
    """Handshake with the machine's agent (after a restore, `resume` it first), or raise
    BootError with the console tail."""
    reader, writer = machine.agent
    channel = Channel(reader, writer, describe_death=machine.console_tail)
    hello = asyncio.ensure_future(channel.handshake(resume=agent.resume() if resume else None))
    try:
        done, _ = await asyncio.wait({hello, machine.exited}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if hello not in done:
            if machine.exited in done:
                await machine.console_drained()
                raise BootError("the VM stopped before its agent came up",
                                console_tail=machine.console_tail())
            raise BootError(f"the VM's agent did not come up within {timeout:.0f} s",
                            console_tail=machine.console_tail())
        try:
            hello.result()
        except SandboxDiedError as e:
            raise BootError("the VM's agent went away during start-up",
                            console_tail=machine.console_tail()) from e
    except BaseException:
        hello.cancel()
        await channel.close()
        raise
    return channel


async def cold_start(backend: Backend, spec: MachineSpec,
                     on_console) -> tuple[Machine, Channel]:
    machine = await backend.start(spec, on_console=on_console)
    try:
        return machine, await connect_agent(machine)
    except BaseException:
        await machine.stop()
        raise


async def restore(backend: Backend, spec: MachineSpec, state: states.SavedState,
                  on_console) -> tuple[Machine, Channel]:
    machine = await backend.restore(spec, state.path, cmdline=state.cmdline,
                                    on_console=on_console)
    try:
        return machine, await connect_agent(machine, timeout=RESUME_TIMEOUT, resume=True)
    except BaseException:
        await machine.stop()
        raise


async def save(backend: Backend, spec: MachineSpec, layer: states.Layer, ident: dict,
               on_console) -> states.SavedState:
    """Boot a template VM, let its agent come up and go idle, and save it as the state for
    `ident`. A failure to boot is a BootError like any cold boot's."""
    work = states.new_workdir(layer)
    try:
        machine = await backend.start_template(spec, work, on_console=on_console)
        try:
            channel = await connect_agent(machine)
            # One command first, so what every exec touches (the agent's spawn path, the
            # shell) is already in the saved memory instead of being paged in by each clone.
            await run_to_completion(channel.open_stream(), ["/bin/sh", "-c", "true"],
                                    stdin=None, timeout=60, cwd="/")
            await channel.park()
            await machine.save_state(work)
            await channel.close()
        finally:
            await machine.stop()
        return states.publish(work, layer, ident, cmdline=machine.cmdline,
                              guest=dict(channel.guest_hello), files=backend.state_files)
    except BaseException:
        states.discard(work)
        raise


def _warn(message: str) -> None:
    warnings.warn(message, ShuruWarning, stacklevel=3)


async def start(backend: Backend, spec: MachineSpec, layer: states.Layer | None, *, cold: bool,
                on_console: Callable[[bytes], None] | None = None) -> tuple[Machine, Channel]:
    """A running machine and its connected channel, restored when possible (see above)."""
    # A runtime root that is not private fails here, before any warning about states.
    runtime.private_dir(runtime.runtime_root())
    if cold or layer is None or not (await backend.probe()).fast_start:
        return await cold_start(backend, spec, on_console)
    ident = _identity(backend, spec, layer)
    first = await _try_existing(backend, spec, layer, ident, on_console)
    if not isinstance(first, Miss):
        return first
    async with states.building(layer, ident):
        # Someone else may have saved it while we waited for the lock.
        again = await _try_existing(backend, spec, layer, ident, on_console)
        if not isinstance(again, Miss):
            return again
        _warn(f"{first.reason} for {layer.describe()}; booting cold and saving one "
              "(later starts restore it)")
        state = await save(backend, spec, layer, ident, on_console)
    try:
        return await restore(backend, spec, state, on_console)
    except ShuruError as e:
        states.discard(state.path)
        _warn(f"the machine state just saved for {layer.describe()} did not restore "
              f"({e.message.splitlines()[0]}); booting cold")
        return await cold_start(backend, spec, on_console)


@dataclass(frozen=True)
class Miss:
    """No restore from an existing saved state, and why (for the warning before a save)."""

    reason: str


async def _try_existing(backend: Backend, spec: MachineSpec, layer: states.Layer, ident: dict,
                        on_console) -> tuple[Machine, Channel] | Miss:
    """Restore from the layer's state: the (machine, channel) pair, or a `Miss` saying why
    not (a state that is stale or fails to load is discarded)."""
    try:
        state = states.find(layer, ident)
    except states.StaleStateError as e:
        states.discard(layer.states_dir / states.key(ident))
        return Miss(e.message)
    if state is None:
        return Miss("no saved machine state yet")
    try:
        return await restore(backend, spec, state, on_console)
    except ShuruError as e:
        states.discard(state.path)
        return Miss(f"the saved machine state failed to load ({e.message.splitlines()[0]})")


def _identity(backend: Backend, spec: MachineSpec, layer: states.Layer) -> dict:
    return states.identity(layer, cpus=spec.cpus, memory=spec.memory,
                              disk_size=spec.disk_size, verbose_console=spec.verbose_console,
                              machine=backend.machine_identity(spec))


async def prepare(backend: Backend, spec: MachineSpec, layer: states.Layer,
                  on_console: Callable[[bytes], None] | None = None) -> states.SavedState | None:
    """Make sure `layer` has a usable state for `spec`, booting and saving one if it has
    none, so that the next start restores. The state is a cache: a failure to make it is a
    warning (the next start boots and tries again), never an error; a backend without
    fast start makes none."""
    try:
        if not (await backend.probe()).fast_start:
            return None
        ident = _identity(backend, spec, layer)
        async with states.building(layer, ident):
            try:
                found = states.find(layer, ident)
            except states.StaleStateError:
                states.discard(layer.states_dir / states.key(ident))
                found = None
            return found or await save(backend, spec, layer, ident, on_console)
    except ShuruError as e:
        _warn(f"could not save a machine state for {layer.describe()} "
              f"({e.message.splitlines()[0]}); its first start will boot and save one")
        return None
