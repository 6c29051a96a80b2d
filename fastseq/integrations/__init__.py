"""Ways into code people already have: `transformers` (Hugging Face models on fastseq's attention)."""
