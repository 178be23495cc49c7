"""Stage 8 (notebook 08): red teaming and safety tuning: the risk categories, automatic red teaming through a
teacher (on self-instruct's machinery) and its scoring, and the safety training set of refusals.

    python -m alpaca_helpers.safety --num_instructions 20 --output_dir runs/redteam
"""
