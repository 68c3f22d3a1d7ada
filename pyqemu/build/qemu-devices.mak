# Devices of the x86_64 system emulator this project builds (configure
# --without-default-devices --with-devices-x86_64=pyqemu).  pyqemu copies
# this file into the QEMU tree as configs/devices/x86_64-softmmu/pyqemu.mak.
#
# Only what the project's guests, libvirt domains and upstream's bitmap
# iotests use: most of a default build's objects are devices nobody here
# runs, and leaving them out roughly halves a cold build.

# Boards: -machine pc (i440fx, also pc-i440fx-7.2 for the QEMU 7.2 peer)
# and -machine q35 (the Linux guest, libvirt).
CONFIG_I440FX=y
CONFIG_Q35=y
CONFIG_ISAPC=n
CONFIG_MICROVM=n
CONFIG_NITRO_ENCLAVE=n

# Disks: IDE on pc, AHCI on q35 (selected by the board), virtio-blk on an
# iothread for the Linux guest, virtio-scsi/scsi-hd for iotests 256/257/281.
CONFIG_IDE_PIIX=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_BLK=y
CONFIG_VIRTIO_SCSI=y
CONFIG_PCIE_PORT=y

# What the boards create by default, so that a pc guest of QEMU 7.2 (which
# has them) migrates into this build: their vmstate sections must exist.
CONFIG_HPET=y
CONFIG_FDC_ISA=y
CONFIG_PARALLEL=y
CONFIG_VMPORT=y
CONFIG_VMMOUSE=y

# libvirt's default memory balloon.
CONFIG_VIRTIO_BALLOON=y

# The boards' ACPI selects ACPI_CXL, whose table builder (hw/acpi/cxl.c)
# calls into hw/cxl; without CXL, 10.2 fails to link
# (cxl_fmws_get_all_sorted has no stub).  CXL depends on PXB, and
# hw/cxl in turn calls into the CXL memory device.
CONFIG_PXB=y
CONFIG_CXL=y
CONFIG_CXL_MEM_DEVICE=y
