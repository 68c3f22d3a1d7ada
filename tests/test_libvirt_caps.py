"""The libvirt hosts keep libvirtd's QEMU capabilities cache between runs
(pyqemu/machine/libvirt/hosts.py): one store per libvirtd binary, copied
into a fresh host and back, each file replaced whole (an entry libvirtd
itself left cut short, libvirt rejects and probes again)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqemu.machine.libvirt import hosts


def test_one_store_per_libvirtd_binary(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    monkeypatch.setenv("PYQEMU_CACHE", str(tmp_path / "cache"))
    ours = tmp_path / "build" / "libvirtd"
    ours.parent.mkdir()
    ours.write_bytes(b"one build")
    first = hosts.caps_store(str(ours))
    assert first.parent == tmp_path / "cache" / "libvirt-caps"
    assert hosts.caps_store(str(ours)) == first
    assert hosts.caps_store("libvirtd") != first
    # a rebuilt libvirtd is another binary: its entries would be stale
    ours.write_bytes(b"another build")
    assert hosts.caps_store(str(ours)) != first


def test_copy_takes_new_and_changed_entries_only(tmp_path: Path) -> None:
    src, dst = tmp_path / "host", tmp_path / "store"
    src.mkdir()
    (src / "a.xml").write_text("<a/>")
    (src / "b.xml").write_text("<b/>")
    (src / "a.xml.tmp").write_text("other")      # not an entry
    hosts._copy_new(src, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["a.xml", "b.xml"]
    assert (dst / "a.xml").stat().st_mode & 0o777 == 0o600
    kept = (dst / "a.xml").stat().st_mtime_ns
    (src / "b.xml").write_text("<b probed='again'/>")
    hosts._copy_new(src, dst)
    assert (dst / "a.xml").stat().st_mtime_ns == kept
    assert (dst / "b.xml").read_text() == "<b probed='again'/>"
    # no temporary file is left behind, and a missing source is nothing
    assert sorted(p.name for p in dst.iterdir()) == ["a.xml", "b.xml"]
    hosts._copy_new(tmp_path / "none", dst)
