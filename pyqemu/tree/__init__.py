"""The QEMU source trees: the pinned Debian tarball (or a developer's
checkout) as a git base commit, and the series applied on top.

Data flow: :mod:`debsrc` fetches the tarball, :mod:`tarball` verifies and
unpacks it, :mod:`stock` makes the stock tree (base commit plus build
fixups), :mod:`series` applies ``patches/qemu/`` for the patched tree;
:mod:`git` is the toolkit they share.
"""
