"""cof_export: a Hugging Face checkpoint becomes a cof-edge bundle (imports torch)."""
