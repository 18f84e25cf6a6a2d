"""`python -m tasks.ppo SPEC.json`: one torchrun rank of the ppo stage (see tasks/ppo/stage.py:launch)."""

from tasks.common.launch import rank_dies_with_agent

rank_dies_with_agent()  # before the heavy imports: a killed pipeline takes its ranks down with it

from tasks.ppo.stage import main  # noqa: E402

main()
