"""Building QEMU: the meson project per flavour (:mod:`driver`), the
steps its custom targets run (:mod:`steps`), and the Debian packages the
build needs (:mod:`deps`).  ``qemu-versions.toml`` pins the source,
``qemu-devices.mak`` lists the devices QEMU is configured with."""
