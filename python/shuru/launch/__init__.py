"""Bringing a sandbox up: what a start will boot (`plan`: config to machine spec, image,
parent checkpoint and disk layer, pure), the bring-up itself (`bringup`: network, ports,
mounts, machine, agent), the saved machine states a sandbox restores instead of booting
(`states`) and the fast-start steps that make and use them (`faststart`)."""
