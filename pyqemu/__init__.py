"""pyqemu: build, drive and measure QEMU with live dirty-bitmap migration."""
