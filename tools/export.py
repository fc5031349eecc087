"""Export a checkpoint with its post-processing (see axial_deeplab/export/cli.py)."""

from axial_deeplab.export.cli import main

if __name__ == "__main__":
    main()
