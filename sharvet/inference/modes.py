"""How a benchmark's decode step runs on a GPU (see ``measure.BenchSettings.compile_mode``).

Its own module so that the CLI's arguments and the measurement read one list without importing each other.
"""

#: the step compiled without torch.compile's CUDA graphs, then recorded as a CUDA graph of its own per step
CAPTURE_MODE = "cuda-graph"
#: every mode, the default first (each replays CUDA graphs)
COMPILE_MODES = (CAPTURE_MODE, "reduce-overhead", "max-autotune")
