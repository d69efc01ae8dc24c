"""The lab tier (`pytest -m lab`): root, a real kernel, each test on a lab of namespaces of its
own (tests/conftest.py). A package, so that a subject's unit and lab modules may share a name."""
