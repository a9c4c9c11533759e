# Benchmarks are run by hand (never in CI): each writes benchmarks/results/<name>.json; BENCHMARKS.md quotes them.
PY := .venv/bin/python

.PHONY: bench bench-speed bench-tradeoff demo test

bench: bench-speed bench-tradeoff

bench-speed:
	cd benchmarks && for b in extraction inference storage solve memory; do ../$(PY) $$b.py || exit 1; done

bench-tradeoff:
	cd benchmarks && ../$(PY) tradeoff.py --trials 16 --seed 0

demo:
	.venv/bin/steer2edit demo --output outputs/demo

test:
	$(PY) -m pytest -q
