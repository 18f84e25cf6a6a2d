"""Join a multi-node run from another node (see tasks/pretrain/join.py):

python -m tasks.pretrain --spec run_spec.json --out DIR --node-rank N
python -m tasks.pretrain join --artifacts-root DIR --rdzv-id ID --node-rank N [--timeout S]
"""

from tasks.pretrain.join import main

main()
