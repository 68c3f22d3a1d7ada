"""Running QEMU: one launcher (:class:`vm.VM`, over qemu.machine), the
migration helpers, the writer guest, and network namespaces."""
