"""Stage 1-2 (notebooks 01 and 02): self-instruct generation through a teacher, its parser and filters,
the local teacher server, ROUGE-L deduplication and the diversity analysis of the kept data.

    python -m alpaca_helpers.self_instruct --num_instructions 20 --output_dir runs/self_instruct
"""
