"""Which accelerator the VMs run on (pyqemu/machine/accel.py): KVM only
where /dev/kvm opens, answers KVM API version 12 and the CPU has
hardware virtualization; TCG otherwise, and whenever a caller asks for
it.  A VM runs on the accelerator it records, and both ends of a
migration, or a guest's next hop, on the same one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyqemu.machine import accel
from pyqemu.machine.vm import VM, Pair


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    """A /proc/cpuinfo with two CPUs of these flags."""
    path = tmp_path / f"cpuinfo-{len(list(tmp_path.iterdir()))}"
    cpu = (f"processor\t: {{}}\nvendor_id\t: GenuineIntel\n"
           f"flags\t\t: fpu pae {flags} sse2\nbogomips\t: 4000.00\n\n")
    path.write_text(cpu.format(0) + cpu.format(1))
    return path


@pytest.fixture
def kvm_device(tmp_path: Path) -> Path:
    """/dev/kvm, where it answers (whatever the CPU: a software KVM
    answers too); the tests that need one are skipped elsewhere."""
    found = accel.probe(accel.DEVICE, cpuinfo(tmp_path, "vmx"))
    if found.accel != accel.KVM:
        pytest.skip(f"no KVM device to talk to here: {found.why}")
    return accel.DEVICE


def test_cpu_flags_are_read_from_the_flags_line(tmp_path):
    flags = accel.cpu_flags(cpuinfo(tmp_path, "vmx ept"))
    assert {"vmx", "ept", "fpu", "sse2"} <= flags
    assert "GenuineIntel" not in flags and "4000.00" not in flags
    assert accel.cpu_flags(tmp_path / "missing") == set()


def test_no_device_is_tcg(tmp_path):
    got = accel.probe(tmp_path / "kvm", cpuinfo(tmp_path, "vmx"))
    assert got.accel == accel.TCG, got
    assert "No such file or directory" in got.why, got


@pytest.mark.parametrize("device", ["/dev/null", "file"])
def test_a_device_that_is_not_kvm_is_tcg(tmp_path, device):
    """A device that is something else, or the read-only empty file the
    libvirt hosts bind over /dev/kvm: the ioctl (or the open) fails."""
    path = Path(device)
    if device == "file":
        path = tmp_path / "kvm"
        path.write_bytes(b"")
        os.chmod(path, 0o444)
    got = accel.probe(path, cpuinfo(tmp_path, "vmx"))
    assert got.accel == accel.TCG, got
    assert "KVM_GET_API_VERSION" in got.why or "Permission" in got.why, got


def test_kvm_needs_hardware_virtualization(tmp_path, kvm_device):
    """Without vmx or svm, a /dev/kvm that answers is a software KVM
    (PVM, say), which emulates our guests far slower than TCG."""
    for flags in ("vmx", "svm"):
        got = accel.probe(kvm_device, cpuinfo(tmp_path, flags))
        assert got.accel == accel.KVM, (flags, got)
        assert got.label == "KVM" and flags in got.why, got
    got = accel.probe(kvm_device, cpuinfo(tmp_path, "hypervisor"))
    assert got.accel == accel.TCG, got
    assert "no vmx or svm" in got.why, got


def test_tcg_on_request_and_the_labels():
    assert accel.choose(tcg=True) == accel.TCG
    assert accel.choose() == accel.detect().accel
    assert accel.detect() is accel.detect()     # probed once
    assert (accel.label(accel.KVM), accel.label(accel.TCG)) == ("KVM", "TCG")
    assert accel.label() == accel.label(accel.detect().accel)
    assert str(accel.detect()).startswith(accel.label() + " (")
    with pytest.raises(ValueError, match="unknown accelerator 'hvf'"):
        accel.label("hvf")


def test_vms_take_the_hosts_choice_unless_told(layout, workdir):
    vm = VM(layout, "a", [], "patched", workdir, machine="none")
    assert vm.accel == accel.choose()
    assert f"none,accel={vm.accel}" in vm.machine.args
    forced = VM(layout, "b", [], "patched", workdir, machine="none",
                accel=accel.TCG)
    assert "none,accel=tcg" in forced.machine.args
    # the next hop of a guest, and the two ends of a pair, match
    assert forced.successor("c").accel == accel.TCG
    pair = Pair(layout, [], workdir, machine="none", accel=accel.TCG)
    assert (pair.src.accel, pair.dst.accel) == (accel.TCG, accel.TCG)
    with pytest.raises(ValueError, match="unknown accelerator"):
        VM(layout, "d", [], "patched", workdir, accel="hvf")


@pytest.mark.parametrize("which", [accel.TCG, accel.KVM])
def test_a_vm_runs_on_the_accelerator_it_records(layout, workdir, which,
                                                 request):
    if which == accel.KVM:
        request.getfixturevalue("kvm_device")
    with VM(layout, "vm", [], "patched", workdir, machine="none",
            accel=which) as vm:
        assert vm.cmd("query-kvm")["enabled"] is (which == accel.KVM)
