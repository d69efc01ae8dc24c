"""The unit tier (`pytest -m "not lab"`): no lab of namespaces; fast. A package, so that a
subject's unit and lab modules may share a name (tests/conftest.py describes both tiers)."""
