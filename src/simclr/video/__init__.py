"""Video clips: decoding with PyAV (an optional dependency: `pip install simclr[video]`) and
Moving-MNIST-style clips rendered from real digits for tests and benchmarks."""
