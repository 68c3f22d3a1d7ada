"""Download QEMU's orig tarball from Debian with ``apt-get source``.

``apt-get source`` needs a ``deb-src`` entry for the suite that carries the
QEMU we pin (10.2.x, in sid and trixie-backports), but a Debian 12 machine
only has ``deb`` entries for bookworm.  The archive's address must not be
written into this repository, so the entry is *derived at run time* from
the machine's own apt sources: the mirror that serves the machine's own
release is asked for the other suite's sources.

Nothing under /etc/apt is modified: apt runs with a private source list
and a private lists directory inside the project cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CommandError, PyqemuError
from ..log import info
from ..util.proc import run


class SourceError(PyqemuError):
    """The QEMU source could not be obtained."""


@dataclass(frozen=True)
class AptEntry:
    """One ``deb`` line (or deb822 stanza) of the machine's apt sources."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None


def _os_codename() -> str:
    text = Path("/etc/os-release").read_text()
    m = re.search(r'^VERSION_CODENAME="?([a-z]+)"?$', text, re.M)
    if not m:
        raise SourceError("cannot tell the Debian release from /etc/os-release")
    return m.group(1)


def _parse_one_line(text: str) -> list[AptEntry]:
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        signed_by = None
        m = re.match(r"deb\s+\[([^\]]*)\]\s+(.*)", line)
        if m:
            opts, rest = m.groups()
            for opt in opts.split():
                if opt.startswith("signed-by="):
                    signed_by = opt.split("=", 1)[1]
        else:
            rest = line[4:]
        parts = rest.split()
        if len(parts) >= 3:
            entries.append(AptEntry(parts[0], (parts[1],), tuple(parts[2:]),
                                    signed_by))
    return entries


def _parse_deb822(text: str) -> list[AptEntry]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            entries.append(AptEntry(uri, tuple(fields.get("suites", "").split()),
                                    tuple(fields.get("components", "").split()),
                                    fields.get("signed-by")))
    return entries


def machine_entries(etc: Path = Path("/etc/apt")) -> list[AptEntry]:
    """Every enabled ``deb`` entry of the machine's apt configuration."""
    entries: list[AptEntry] = []
    main = etc / "sources.list"
    if main.exists():
        entries += _parse_one_line(main.read_text())
    parts = etc / "sources.list.d"
    if parts.is_dir():
        for f in sorted(parts.iterdir()):
            if f.suffix == ".list":
                entries += _parse_one_line(f.read_text())
            elif f.suffix == ".sources":
                entries += _parse_deb822(f.read_text())
    return entries


def derive_deb_src(suite: str, etc: Path = Path("/etc/apt")) -> list[str]:
    """Candidate ``deb-src`` lines for *suite*, best first.

    The mirrors that serve the machine's own release (its codename, main
    component) are the Debian archive; security and third-party
    repositories are not, and are skipped.
    """
    codename = _os_codename()
    lines: list[str] = []
    for e in machine_entries(etc):
        if codename not in e.suites or "main" not in e.components:
            continue
        opt = f"[signed-by={e.signed_by}] " if e.signed_by and \
            not e.signed_by.lstrip().startswith("-----") else ""
        line = f"deb-src {opt}{e.uri} {suite} main"
        if line not in lines:
            lines.append(line)
    if not lines:
        raise SourceError(
            f"no apt source for the machine's release '{codename}' with a "
            "'main' component: cannot derive a deb-src entry for QEMU")
    return lines


@dataclass(frozen=True)
class Offer:
    """What the archive offers: a source version and its orig tarball."""

    version: str
    orig_name: str
    orig_sha256: str


class PrivateApt:
    """apt-get/apt-cache with a private source list, lists and state."""

    def __init__(self, root: Path, package: str, suite: str) -> None:
        self.root = root
        self.package = package
        self.suite = suite

    def _opts(self) -> list[str]:
        return [
            "-o", f"Dir::Etc::SourceList={self.root / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={self.root / 'sources.list.d'}",
            "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", "APT::Sandbox::User=root",
        ]

    def update(self) -> None:
        """Find a derived deb-src line whose index lists the package."""
        (self.root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "sources.list.d").mkdir(exist_ok=True)
        errors = []
        for line in derive_deb_src(self.suite):
            (self.root / "sources.list").write_text(line + "\n")
            info(f"apt: reading {self.suite} source index")
            try:
                run(["apt-get", *self._opts(), "update", "-qq"])
            except CommandError as e:
                errors.append(str(e))
                continue
            if self._showsrc():
                return
            errors.append(f"{line}: {self.package} not listed")
        raise SourceError(f"no derived deb-src entry serves {self.package}/"
                          f"{self.suite}: " + "; ".join(errors))

    def _showsrc(self) -> str:
        res = run(["apt-cache", *self._opts(), "showsrc", self.package],
                  check=False)
        return res.stdout if res.returncode == 0 else ""

    def offers(self) -> list[Offer]:
        """Every version of the package the index lists, with its orig."""
        found: list[Offer] = []
        for stanza in self._showsrc().split("\n\n"):
            m = re.search(r"^Version: (\S+)$", stanza, re.M)
            sums = re.search(r"^Checksums-Sha256:\n((?: .*\n?)+)", stanza, re.M)
            if not m or not sums:
                continue
            for row in sums.group(1).splitlines():
                sha, _size, name = row.split()
                if name.endswith((".orig.tar.xz", ".orig.tar.gz")):
                    found.append(Offer(m.group(1), name, sha))
        return found

    def offer(self, version: str) -> Offer:
        """The index entry of exactly *version* (SourceError if unlisted).

        Never "the newest": indexes list versions whose files are gone
        from the archive, and the series is tested against one version.
        """
        for o in self.offers():
            if o.version == version:
                return o
        listed = ", ".join(sorted({o.version for o in self.offers()})) or "none"
        raise SourceError(f"the {self.suite} index does not list {self.package} "
                          f"{version} (it lists: {listed})")

    def download(self, dest: Path, offer: Offer) -> Path:
        """``apt-get source --download-only`` into *dest*; returns the orig."""
        dest.mkdir(parents=True, exist_ok=True)
        info(f"apt: downloading {self.package} {offer.version} source")
        run(["apt-get", *self._opts(), "source", "--download-only", "-qq",
             f"{self.package}={offer.version}"], cwd=dest)
        path = dest / offer.orig_name
        if not path.exists():
            raise SourceError(f"apt-get source {self.package}={offer.version} "
                              f"did not download {offer.orig_name}")
        return path
