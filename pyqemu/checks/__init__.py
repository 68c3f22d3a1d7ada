"""Checks that judge the builds: fault scenarios, the stream fuzzer,
QEMU's own tests, the series' form, and the pytest suite (``./run test``)."""
