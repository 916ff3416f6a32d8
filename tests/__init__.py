import pytest

# tests/contract.py is imported by the test modules of each backend, not collected itself:
# ask pytest to rewrite its asserts too, so its failures show the values compared.
pytest.register_assert_rewrite("tests.contract")
