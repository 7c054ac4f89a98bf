"""What a model family is: its Hugging Face names, the transforms llama.cpp's base converter
applies to its weights, and the checks of a base's hyperparameters (:mod:`.base_check`)."""
