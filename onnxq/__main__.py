import os
import sys

# `python -m onnxq` puts the working directory first on sys.path, so a stray tabulate.py (or any dependency's
# name) there would be imported in place of the real library. onnxq looks there only for a MODULE:FACTORY the
# user names, and then last (see onnxq.usercode), as the `onnxq` console script does.
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from onnxq.cli import main  # noqa: E402

raise SystemExit(main())
