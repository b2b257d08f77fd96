"""The guest image recipe: which Debian packages the rootfs holds, which kernel modules the
initramfs loads, and the initramfs's /init. `shuru.build` turns it into an image."""
