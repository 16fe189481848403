# The two commands of the README: `make run` starts the dashboard on the London faces,
# `make test` runs the whole test suite. Both set up .venv first.
.PHONY: setup run test bench

setup:
	bash scripts/setup_env.sh

run: setup
	.venv/bin/fer-studio prepare --dataset london
	.venv/bin/streamlit run streamlit_app.py

test: setup
	-bash scripts/install_browser.sh
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python bench/bench_prepare.py
	.venv/bin/python bench/bench_training.py
	.venv/bin/python bench/bench_explain.py
