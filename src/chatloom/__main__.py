"""`python -m chatloom ...` (and `torchrun -m chatloom train sft ...`): the same Typer app as the `chatloom` command."""

from .cli import main

main()
