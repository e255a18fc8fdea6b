"""Opening a GGUF file with llama.cpp (llama-cpp-python) the way chatloom's tests and benchmarks need it.

llama-cpp-python 0.3.36 repacks Q4/Q8 matrices into "extra buffer types" for its AMX kernels on CPUs that have AMX
(this project's 2-core Xeon), then crashes (SIGSEGV) in the first `llama_decode`. `Llama()` does not expose the switch
(`use_extra_bufts`), so `open_llama` sets it in the default model parameters for the duration of the load. Without
repacking llama.cpp runs its plain CPU kernels: the same function, slower on AMX machines than it could be.
"""

from __future__ import annotations

from pathlib import Path


def open_llama(path: str | Path, *, repack: bool = False, **kwargs):
    """`llama_cpp.Llama(path, **kwargs)`, with weight repacking off unless `repack`."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    if repack:
        return llama_cpp.Llama(str(path), **kwargs)
    defaults = low.llama_model_default_params

    def no_repack():
        params = defaults()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = no_repack
    try:
        return llama_cpp.Llama(str(path), **kwargs)
    finally:
        low.llama_model_default_params = defaults
