"""`python -m tasks.pretrain --spec run_spec.json --out DIR --node-rank N`: join a multi-node run."""

from tasks.pretrain.launch import main

main()
