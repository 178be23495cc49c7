"""Stage 5 (notebook 05): generation with the Alpaca prompt and its decoding settings, the watermark, the content
filter, the playground widget and the GGUF export for llama.cpp and Ollama."""
