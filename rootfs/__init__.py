"""The guest image recipe: the Debian packages of the root filesystem (`packages.txt`), the
kernel modules the initramfs loads (`modules.txt`) and the initramfs's `/init`.

This package owns *what* goes into the image; `shuru.image.build` owns *how* it is built and
`shuru.image.store` where the result lives.
"""
