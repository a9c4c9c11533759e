# Benchmarks are run by hand (never in CI): each writes benchmarks/results/<name>.json; BENCHMARKS.md quotes them.
PY := .venv/bin/python

.PHONY: bench bench-speed bench-frontier bench-engines demo test

bench: bench-speed bench-frontier bench-engines

bench-speed:
	cd benchmarks && for b in extraction inference large_edit moe_edit storage solve memory generation; do ../$(PY) $$b.py || exit 1; done

bench-frontier:
	$(PY) benchmarks/frontier.py --tasks refusal truthful concise --budgets 0.01 0.02 0.05

bench-engines:  # needs `bash scripts/bootstrap-llama-cpp` and `bash scripts/bootstrap-vllm`
	$(PY) benchmarks/engines.py --engine llama.cpp
	.venv-vllm/bin/python benchmarks/engines.py --engine vllm

demo:
	.venv/bin/steer2edit demo --output outputs/demo

test:
	$(PY) -m pytest -q
