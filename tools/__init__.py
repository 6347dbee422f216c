"""Tools that run beside Tunseal, not in it: the demo (``python -m tools.demo``) and the
network-namespace primitives it shares with the test labs (tests/netlab.py) and the benchmarks
(bench/_netns.py). Nothing in core/, helper/ or gui/ imports from here."""
