"""debunkbot: verified debunk notices to every outlet of Chongqing's 5+41+N matrix, with a delivery log."""

import sys

# httpx's package imports its command-line client (httpx._main) whenever click, rich and pygments are installed,
# as typer installs them here. Nothing here runs that client, and importing it cost every process about 30 ms of
# its start (pygments' lexer table alone 20 ms). A None in sys.modules makes that import fail, and httpx then
# defines a stub `main` in its place (httpx/__init__.py, "except ImportError").
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
