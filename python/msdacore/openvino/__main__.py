"""python -m msdacore.openvino: builds the OpenVINO extension for the installed OpenVINO
(once; cached) and prints its path."""

import sys

from . import extension_path

if __name__ == "__main__":
    print(extension_path())
    sys.exit(0)
