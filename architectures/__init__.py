"""Model definitions only, built by name from a registry."""

from architectures import cvunet, mediapipe_selfie, u2net, unet_classic  # noqa: F401  (importing registers the variants)
from architectures.registry import config_to_dict, create_model, list_models, model_config, model_entry, register_model

__all__ = ["config_to_dict", "create_model", "list_models", "model_config", "model_entry", "register_model"]
