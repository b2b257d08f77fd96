"""The guest image: the data dir's image store (`store`), building an image with mmdebstrap
(`build`) and the initramfs writer it uses (`cpio`)."""
