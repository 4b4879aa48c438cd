"""Local, Docker-free stack: the tiny random-weight model and the embedded Triton launcher."""
