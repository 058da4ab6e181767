"""Python fuzz targets for mediafork's parsers (the C data plane has its own in csrc/fuzz/).

:mod:`fuzz.targets` defines one target per parser: a function of raw bytes that either
returns (the parser accepted the input, or refused it with its documented error class) or
raises (a bug). The same targets run three ways:

* bounded under hypothesis in ``tests/badinput`` (part of ``scripts/test``);
* longer under atheris, coverage-guided, with ``python -m fuzz.run`` (``scripts/fuzz``);
* longer under hypothesis when atheris is not installed (``python -m fuzz.run --hypothesis``).
"""
