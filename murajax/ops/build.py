"""`python -m murajax.ops.build [--strict]`: compiles murajax's oneDNN convolution extension.

`make install` runs it. Where it cannot build (no C++ compiler, no oneDNN wheels, not x86-64
Linux) it prints why and exits 0, and murajax uses XLA's convolution; `--strict` exits 1.
"""

import sys

from murajax.ops import onednn


def main(argv: list[str]) -> int:
    """Builds the extension and checks that it loads and runs; returns the exit status."""
    strict = "--strict" in argv[1:]
    try:
        path = onednn.build()
    except onednn.BuildError as e:
        print(f"murajax: oneDNN convolutions not built ({e}); XLA's convolution will be used")
        return 1 if strict else 0
    problem = onednn.onednn_status()
    if problem:
        print(f"murajax: built {path}, but it does not run ({problem}); XLA's will be used")
        return 1 if strict else 0
    print(f"murajax: built {path} (oneDNN convolutions for CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
