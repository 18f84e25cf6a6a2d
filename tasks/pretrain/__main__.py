"""Join a multi-node run from another node:

python -m tasks.pretrain --spec run_spec.json --out DIR --node-rank N
python -m tasks.pretrain join --artifacts-root DIR --rdzv-id ID --node-rank N [--timeout S]
"""

from tasks.pretrain.launch import main

main()
