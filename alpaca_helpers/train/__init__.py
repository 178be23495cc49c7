"""Stage 3-4 (notebooks 03 and 04): tokenization with the prompt mask, the training recipe (config,
batches, FSDP, LoRA, tracking), the memory and time plan, and the launch from a notebook.

    python -m alpaca_helpers.train --config configs/cpu_default.yaml
    accelerate launch -m alpaca_helpers.train --config configs/alpaca_7b.yaml
"""
