"""End-to-end: real frontend processes in front of the session's real tritonserver (fixtures: tests/conftest.py)."""
