"""Stage 5 (notebook 05): generation with the Alpaca prompt, the watermark, the content filter and the
GGUF export for llama.cpp and Ollama."""
