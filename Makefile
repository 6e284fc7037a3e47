# The two commands a newcomer needs (see README.md); both set up .venv/ first when needed.
.PHONY: setup demo test lint clean

setup:
	@./scripts/setup.sh

demo: setup
	@./scripts/demo.sh

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check .

clean:
	rm -rf build install log .venv internvla_ros/msg internvla_ros/*.so
