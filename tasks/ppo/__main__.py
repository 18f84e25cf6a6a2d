"""`python -m tasks.ppo SPEC.json`: one torchrun rank of the ppo stage (see tasks/ppo/stage.py:launch)."""

from tasks.ppo.stage import main

main()
